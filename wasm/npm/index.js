// Presently for browsers: loads the WebAssembly module once, then exports the client.
import init, { PresenceClient } from "./presently.js";

await init({ module_or_path: new URL("./presently_bg.wasm", import.meta.url) });

export { PresenceClient };
