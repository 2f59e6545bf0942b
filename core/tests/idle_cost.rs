//! What a connected, idle client costs in an hour (the battery question of mobile apps), counted on virtual
//! time: how often its thread wakes up and how many frames cross the network. Deterministic, so the counts are
//! exact; `cargo test -p presently-core --test idle_cost -- --nocapture` prints them (README, BENCHMARKS.md).

mod support;

use presently_core::protocol::ServerMessage;
use presently_core::{ClientConfig, Instant};
use support::{Harness, INTERVAL};

/// One hour, in milliseconds.
const HOUR: u64 = 3_600_000;
/// Round-trip time of the simulated network, in milliseconds.
const RTT: u64 = 40;

#[derive(Debug, Default, PartialEq, Eq)]
struct Cost {
    /// Timers of the client that fired.
    timer_wakeups: u64,
    /// Frames that arrived (each wakes the client's thread): WebSocket pings of the server and pongs.
    inbound_frames: u64,
    /// Text frames the client sent.
    outbound_frames: u64,
}

/// Runs a connected client with default settings, idle for `duration_ms`, against a server that sends a
/// WebSocket ping every `server_ping_ms` (if any) and answers every client ping after `RTT`.
fn idle_for(duration_ms: u64, server_ping_ms: Option<u64>) -> Cost {
    let mut h = Harness::with_config(ClientConfig::new("token"), 7);
    h.server_ping_ms = server_ping_ms;
    h.client.connect(h.now);
    h.drain();
    h.open_transport();
    h.welcome();
    h.sent.clear();
    let start = h.now.as_millis();
    let end = start + duration_ms;
    let mut cost = Cost::default();
    let mut next_server_ping = server_ping_ms.map(|every| start + every / 2);
    let mut pong_due: Vec<u64> = Vec::new();
    loop {
        let timer = h.client.poll_timeout().map(Instant::as_millis);
        let pong = pong_due.iter().copied().min();
        let next = [timer, pong, next_server_ping]
            .into_iter()
            .flatten()
            .min()
            .filter(|&t| t <= end);
        let Some(at) = next else { break };
        h.now = Instant::from_millis(at.max(h.now.as_millis()));
        if pong == Some(at) {
            pong_due.retain(|&t| t != at);
            cost.inbound_frames += 1;
            h.receive(ServerMessage::Pong {
                reference: None,
                server_time_ms: None,
            });
        } else if next_server_ping == Some(at) {
            cost.inbound_frames += 1;
            h.client.handle_inbound_activity(h.now);
            h.drain();
            next_server_ping = server_ping_ms.map(|every| at + every);
        } else {
            cost.timer_wakeups += 1;
            h.client.handle_timeout(h.now);
            h.drain();
        }
        for frame in h.sent.drain(..) {
            cost.outbound_frames += 1;
            if frame["type"] == "ping" {
                pong_due.push(h.now.as_millis() + RTT);
            }
        }
    }
    cost
}

#[test]
fn an_idle_connected_client_wakes_once_per_heartbeat() {
    // The reference server pings every heartbeat interval (15 s) and the client answers at the WebSocket layer.
    let with_server_pings = idle_for(HOUR, Some(INTERVAL));
    // A server that does not ping: the client's own pings keep the session alive.
    let without = idle_for(HOUR, None);
    println!("an idle connected client, one hour, heartbeat interval {INTERVAL} ms:");
    println!("  server pings every {INTERVAL} ms: {with_server_pings:?}");
    println!("  server does not ping:      {without:?}");
    let per_hour = HOUR / INTERVAL; // 240
    // With server pings, the client sends nothing of its own: its WebSocket pongs keep the session alive, and the
    // pings it receives prove the link is up. One wakeup per heartbeat, plus going away once (idle timeout).
    assert_eq!(
        with_server_pings,
        Cost {
            timer_wakeups: 1,
            inbound_frames: per_hour,
            outbound_frames: 1,
        }
    );
    // Without server pings: a frame per heartbeat (pings, and once the away update instead of a ping) and a pong
    // for each ping.
    assert_eq!(
        without,
        Cost {
            timer_wakeups: per_hour,
            inbound_frames: per_hour - 1,
            outbound_frames: per_hour,
        }
    );
}
