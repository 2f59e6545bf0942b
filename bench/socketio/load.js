// Load generator for the Socket.IO peer of the presence fan-out benchmark.
//
// N clients connect (user ids u0..u<N-1>); client i watches u(i+1)..u(i+K) mod N,
// so every user has exactly K watchers. For `duration` seconds random clients
// emit `status` at a steady total rate R; every `presence` delivery records its
// latency (sender and receivers live in this process, so one monotonic clock).
//
// Prints exactly one JSON line on stdout; diagnostics go to stderr.
//
// Usage: node load.js [--clients N] [--watch K] [--rate R] [--duration S]
//                     [--url http://127.0.0.1:PORT] [--server-pid P]
// Without --url, spawns `node server.js --port 0` and measures that child.

import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";

const CONNECT_TIMEOUT_MS = 60_000; // whole connect + watch phase
const DRAIN_TIMEOUT_MS = 5_000; // wait for outstanding deliveries at the end
const BATCH = 200; // clients connected concurrently
const TICK_MS = 5; // scheduler tick for status changes

let child = null; // spawned server, if any
const sockets = []; // client i is sockets[i]

// ---- arguments ----------------------------------------------------------
const { values: a } = parseArgs({
  options: {
    clients: { type: "string", default: "1000" },
    watch: { type: "string", default: "5" },
    rate: { type: "string", default: "200" },
    duration: { type: "string", default: "20" },
    "server-pid": { type: "string" },
    url: { type: "string" },
  },
});
const N = Number(a.clients);
const K = Number(a.watch);
const R = Number(a.rate);
const S = Number(a.duration);
let serverPid = a["server-pid"] !== undefined ? Number(a["server-pid"]) : null;
let url = a.url ?? null;

if (!(Number.isInteger(N) && N > 0)) fail(`invalid --clients ${a.clients}`);
if (!(Number.isInteger(K) && K >= 0 && K < N)) fail(`--watch must be an integer in [0, clients)`);
if (!(R > 0)) fail(`invalid --rate ${a.rate}`);
if (!(S > 0)) fail(`invalid --duration ${a.duration}`);
if (serverPid !== null && !(Number.isInteger(serverPid) && serverPid > 0)) fail(`invalid --server-pid`);

const version = JSON.parse(
  readFileSync(new URL("./node_modules/socket.io/package.json", import.meta.url), "utf8"),
).version;

function log(msg) {
  process.stderr.write(`load: ${msg}\n`);
}

function fail(msg) {
  process.stderr.write(`load: error: ${msg}\n`);
  for (const s of sockets) s.disconnect();
  if (child) child.kill("SIGTERM");
  process.exit(1);
}

// Resident set size of another process in bytes, from /proc/<pid>/status.
function procRss(pid) {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

// Best effort: collect garbage before an RSS reading if run with --expose-gc.
function gc() {
  if (typeof globalThis.gc === "function") globalThis.gc();
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- spawn the server unless --url was given ----------------------------
async function spawnServer() {
  const script = new URL("./server.js", import.meta.url).pathname;
  child = spawn(process.execPath, [script, "--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
  child.on("exit", (code, sig) => {
    if (child) fail(`server exited unexpectedly (code ${code}, signal ${sig})`);
  });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not print LISTENING within 10 s")), 10_000);
    createInterface({ input: child.stdout }).once("line", (line) => {
      clearTimeout(timer);
      const m = /^LISTENING (\d+)$/.exec(line.trim());
      m ? resolve(Number(m[1])) : reject(new Error(`unexpected server output: ${line}`));
    });
  });
  return { url: `http://127.0.0.1:${port}`, pid: child.pid };
}

async function stopServer() {
  if (!child) return;
  const c = child;
  child = null; // unexpected-exit handler no longer fails
  const exited = new Promise((r) => c.once("exit", r));
  c.kill("SIGTERM");
  await Promise.race([exited, sleep(3000)]);
}

// ---- main ---------------------------------------------------------------
async function main() {
  if (!url) {
    try {
      ({ url, pid: serverPid } = await spawnServer());
    } catch (e) {
      fail(e.message);
    }
    log(`spawned server pid ${serverPid} at ${url}`);
  }

  // Latency samples (µs) and delivery count.
  const latencies = [];
  let received = 0;
  const onPresence = (p) => {
    latencies.push((performance.now() - p.ts) * 1000);
    received++;
  };

  // Baselines before any client exists.
  gc();
  const serverRss0 = serverPid !== null ? procRss(serverPid) : null;
  const clientRss0 = process.memoryUsage().rss;

  // Connect one client, emit `watch`, resolve once the server acked it.
  function connectClient(i) {
    return new Promise((resolve, reject) => {
      const s = io(url, {
        transports: ["websocket"],
        auth: { user: `u${i}` },
        forceNew: true, // one WebSocket per client, never multiplexed
      });
      sockets[i] = s;
      s.on("presence", onPresence);
      s.once("connect_error", (err) => reject(new Error(`client u${i} failed to connect: ${err.message}`)));
      s.once("connect", () => {
        const ids = [];
        for (let j = 1; j <= K; j++) ids.push(`u${(i + j) % N}`);
        s.emit("watch", ids, () => resolve());
      });
    });
  }

  // Connect in batches of BATCH, the whole phase bounded by CONNECT_TIMEOUT_MS.
  const t0 = performance.now();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`connect/watch timed out after ${CONNECT_TIMEOUT_MS / 1000} s (${sockets.length}/${N} clients created)`)),
      CONNECT_TIMEOUT_MS,
    );
  });
  const connectAll = (async () => {
    for (let start = 0; start < N; start += BATCH) {
      const batch = [];
      for (let i = start; i < Math.min(start + BATCH, N); i++) batch.push(connectClient(i));
      await Promise.all(batch);
    }
  })();
  try {
    await Promise.race([connectAll, timeout]);
  } catch (e) {
    fail(e.message);
  }
  clearTimeout(timer);
  const connectS = (performance.now() - t0) / 1000;
  log(`${N} clients connected and watching in ${connectS.toFixed(2)} s`);

  // Memory after all clients are connected and watching.
  gc();
  const serverRss1 = serverPid !== null ? procRss(serverPid) : null;
  const clientRss1 = process.memoryUsage().rss;

  // Steady phase: a fixed-interval timer that catches up with the schedule
  // (changes due = elapsed × R), so timer jitter does not lower the rate.
  const total = Math.round(R * S);
  const away = new Uint8Array(N); // per-client alternating availability
  let sent = 0;
  const tStart = performance.now();
  await new Promise((resolve) => {
    const tick = setInterval(() => {
      const elapsed = (performance.now() - tStart) / 1000;
      const due = Math.min(total, Math.floor(elapsed * R));
      for (; sent < due; sent++) {
        const i = Math.floor(Math.random() * N);
        away[i] ^= 1;
        sockets[i].emit("status", { availability: away[i] ? "away" : "online", ts: performance.now() });
      }
      if (sent >= total) {
        clearInterval(tick);
        resolve();
      }
    }, TICK_MS);
  });
  log(`sent ${sent} changes in ${((performance.now() - tStart) / 1000).toFixed(2)} s`);

  // Wait (bounded) for deliveries still in flight.
  const expected = sent * K;
  const drainEnd = performance.now() + DRAIN_TIMEOUT_MS;
  while (received < expected && performance.now() < drainEnd) await sleep(10);
  if (received < expected) log(`only ${received}/${expected} deliveries after ${DRAIN_TIMEOUT_MS / 1000} s drain`);

  // Nearest-rank percentiles over the sorted samples.
  const sorted = Float64Array.from(latencies).sort();
  const pct = (p) => (sorted.length ? Math.round(sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]) : null);

  const result = {
    peer: "socket.io",
    socket_io_version: version,
    clients: N,
    watch: K,
    rate: R,
    duration_s: S,
    connect_s: Number(connectS.toFixed(3)),
    changes: sent,
    expected,
    received,
    p50_us: pct(50),
    p99_us: pct(99),
    max_us: sorted.length ? Math.round(sorted[sorted.length - 1]) : null,
    server_rss_per_connection_bytes: serverRss0 !== null ? Math.round((serverRss1 - serverRss0) / N) : null,
    client_rss_per_instance_bytes: Math.round((clientRss1 - clientRss0) / N),
  };

  // Tear down, then print the single result line.
  for (const s of sockets) s.disconnect();
  await stopServer();
  process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(0));
}

main().catch((e) => fail(e.stack ?? String(e)));
