// A live presence list with the npm package: ?server=ws://…/v1/ws&token=…&watch=bob,carol
import { PresenceClient } from "./pkg/index.js";

const params = new URLSearchParams(location.search);
const client = new PresenceClient({
  url: params.get("server") ?? "ws://127.0.0.1:7420/v1/ws",
  token: params.get("token") ?? "",
  appName: "browser-example",
  platform: "browser",
  // "auto" (the default), "websocket" or "sse".
  transport: params.get("transport") ?? undefined,
  // Seconds matter in tests: how long a silent link may last before the client reconnects.
  livenessGraceMs: Number(params.get("grace")) || undefined,
});
const watch = (params.get("watch") ?? "").split(",").filter(Boolean);
const roster = document.querySelector("#roster");

function row(userId) {
  let item = document.getElementById(`user-${userId}`);
  if (!item) {
    item = document.createElement("li");
    item.id = `user-${userId}`;
    roster.append(item);
  }
  return item;
}

for (const userId of watch) row(userId).textContent = `${userId}: …`;
client.onPresence((presence) => {
  const item = row(presence.userId);
  const activity = presence.activity ? ` (${presence.activity.detail ?? presence.activity.kind})` : "";
  item.textContent = `${presence.userId}: ${presence.availability}${presence.message ? ` — ${presence.message}` : ""}${activity}`;
  item.dataset.availability = presence.availability;
});
client.onStateChange((state) => {
  document.querySelector("#state").textContent = state.state;
});
const showMe = (status) => {
  document.querySelector("#me").textContent = `${status.availability} (${status.reason})`;
};
showMe(client.ownStatus());
client.onOwnStatus(showMe);
client.attachActivityListeners();
client.subscribe(watch);
client.connect().catch((error) => {
  document.querySelector("#state").textContent = `${error.code}: ${error.message}`;
});
// For people poking around in the console (and for the end-to-end test).
window.presently = client;
