// The package's public types, as generated from the Rust sources (no `any`).
export { PresenceClient } from "./presently.js";
export type {
  Activity,
  Availability,
  ConnectionState,
  DndSchedule,
  DndState,
  DndWindow,
  OwnStatus,
  Presence,
  PresenceClientOptions,
  PresenceError,
  StatusReason,
  StatusUpdate,
  Transport,
} from "./presently.js";
