// Socket.IO peer server for the presence fan-out benchmark.
//
// Mirrors the presence server's semantics with plain Socket.IO primitives:
//   - a client connects with `auth: { user: "<id>" }`
//   - `watch` [ids...]            -> join room `w:<id>` for each id (acked)
//   - `status` {availability, ts} -> store it, emit `presence`
//                                    {user, availability, ts} to room `w:<user>`
//   - `snapshot` [ids...]         -> ack with the stored status of each id
//
// Usage: node server.js --port 0
// Prints exactly one line on stdout, `LISTENING <port>`; diagnostics go to stderr.

import http from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";

const { values: args } = parseArgs({
  options: { port: { type: "string", default: "0" } },
});
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`server: invalid --port ${args.port}`);
  process.exit(2);
}

const httpServer = http.createServer();
// WebSocket transport only (no HTTP long-polling); everything else default.
const io = new Server(httpServer, { transports: ["websocket"] });

// Last known status per user id: { availability, ts }.
const statuses = new Map();

io.on("connection", (socket) => {
  const user = String(socket.handshake.auth?.user ?? socket.id);

  socket.on("watch", (ids, ack) => {
    if (Array.isArray(ids)) socket.join(ids.map((id) => `w:${id}`));
    if (typeof ack === "function") ack({ ok: true });
  });

  socket.on("status", (msg) => {
    const availability = msg?.availability;
    const ts = msg?.ts;
    statuses.set(user, { availability, ts });
    io.to(`w:${user}`).emit("presence", { user, availability, ts });
  });

  socket.on("snapshot", (ids, ack) => {
    if (typeof ack !== "function" || !Array.isArray(ids)) return;
    ack(ids.map((id) => ({ user: id, ...(statuses.get(String(id)) ?? { availability: null, ts: null }) })));
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  process.stdout.write(`LISTENING ${httpServer.address().port}\n`);
});

// Clean shutdown: close all sockets and the HTTP server, then exit.
function shutdown() {
  io.close(() => process.exit(0));
  // Do not hang forever if some connection refuses to close.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
