// Compiled with `tsc --strict --noEmit` against the built package: the published types must describe the API
// exactly (a wrong call below would not compile, and nothing may be `any`).
import {
  PresenceClient,
  type Availability,
  type ConnectionState,
  type DndSchedule,
  type DndState,
  type OwnStatus,
  type Presence,
  type PresenceClientOptions,
  type PresenceError,
} from "@presently/client";

const options: PresenceClientOptions = {
  url: "wss://presence.example.com/v1/ws",
  getToken: async () => "token",
  idleTimeoutMs: 300_000,
  dnd: { timezone: "Europe/Berlin", windows: [{ days: "weekdays", start: "22:00", end: "07:00" }] },
};
const client = new PresenceClient(options);

const show = (presence: Presence): string => {
  const availability: Availability = presence.availability;
  const when: number | undefined = presence.lastActiveAt;
  return `${presence.userId} ${availability} ${presence.message ?? ""} ${presence.activity?.kind ?? ""} ${when ?? ""}`;
};
const stop: () => void = client.onPresence((p) => console.log(show(p)));
client.onOwnStatus((s: OwnStatus) => console.log(s.reason));
client.onStateChange((s: ConnectionState) => {
  if (s.state === "reconnecting") console.log(s.retryInMs, s.reason);
  if (s.state === "connected") console.log(s.sessionId);
});
client.onError((e: PresenceError) => console.log(e.code, e.fatal));
client.onIdleWarning((ms: number) => console.log(ms));
const detach: () => void = client.attachActivityListeners();
client.subscribe(["bob"]);
client.setStatus({ availability: "busy", message: "In a call", activity: { kind: "in_call" } });
const schedule: DndSchedule = { timezone: "UTC", windows: [{ days: "daily", start: "23:00", end: "06:00" }] };
client.setDndSchedule(schedule);
const dnd: DndState = client.dndState();
console.log(dnd.active, dnd.nextStart);
async function main(): Promise<void> {
  await client.connect();
  const records: Presence[] = await client.query(["dave"]);
  console.log(records.length);
  await client.close();
}
void main();
stop();
detach();

// @ts-expect-error: "offline" is not something to set.
client.setStatus({ availability: "offline" });
// @ts-expect-error: listeners get a Presence, not a string.
client.onPresence((p: string) => p);
