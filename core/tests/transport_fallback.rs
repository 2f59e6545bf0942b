//! Choosing between WebSocket and the HTTP binding (protocol section 11.7), on virtual time.

mod support;

use std::time::Duration;

use presently_core::protocol::ServerMessage;
use presently_core::{ConnectionState, Transport, TransportPolicy};
use support::{Harness, config};

use Transport::{Sse, WebSocket};

/// Fails the attempt under way before `welcome`, with the transport open (`closed_after_open`) or not.
fn fail_attempt(h: &mut Harness, closed_after_open: bool) {
    if closed_after_open {
        h.open_transport();
    }
    h.client.handle_transport_closed("refused", h.now);
    h.drain();
}

/// Waits until the next attempt starts.
fn wait_for_attempt(h: &mut Harness) {
    let opens = h.opens;
    let retry_at = match h.client.state() {
        ConnectionState::Reconnecting { retry_at, .. } => *retry_at,
        other => panic!("not reconnecting: {other:?}"),
    };
    h.advance(retry_at.as_millis() - h.now.as_millis());
    assert_eq!(h.opens, opens + 1);
}

/// Lets `ms` pass with a healthy link: the server answers every ping at once.
fn keep_alive(h: &mut Harness, ms: u64) {
    for _ in 0..ms / 1_000 {
        h.advance(1_000);
        h.receive(ServerMessage::Pong {
            reference: None,
            server_time_ms: None,
        });
    }
}

/// A client that fell back to the HTTP binding and is connected on it, watching bob.
fn connected_over_sse() -> Harness {
    let mut h = Harness::new();
    h.client.subscribe(["bob"], h.now).unwrap();
    h.client.connect(h.now);
    h.drain();
    fail_attempt(&mut h, false);
    wait_for_attempt(&mut h);
    fail_attempt(&mut h, true);
    wait_for_attempt(&mut h);
    assert_eq!(h.opened, [WebSocket, WebSocket, Sse]);
    h.open_transport();
    h.welcome();
    h.sent.clear();
    h.events.clear();
    h
}

#[test]
fn two_websocket_failures_before_welcome_fall_back_to_the_http_binding_at_once() {
    let mut h = Harness::new();
    h.client.connect(h.now);
    h.drain();
    assert_eq!(
        h.client.state(),
        &ConnectionState::Connecting {
            attempt: 1,
            transport: WebSocket
        }
    );
    fail_attempt(&mut h, false);
    wait_for_attempt(&mut h);
    // Closed after the transport opened but before welcome counts too (a proxy that accepts, then drops).
    fail_attempt(&mut h, true);
    match h.client.state() {
        ConnectionState::Reconnecting { delay, .. } => assert_eq!(*delay, Duration::ZERO),
        other => panic!("{other:?}"),
    }
    let before = h.now;
    wait_for_attempt(&mut h);
    assert_eq!(h.now, before, "the fallback attempt starts at once");
    assert_eq!(h.opened, [WebSocket, WebSocket, Sse]);
    assert_eq!(
        h.client.state(),
        &ConnectionState::Connecting {
            attempt: 3,
            transport: Sse
        }
    );
    h.sent.clear();
    h.open_transport();
    assert_eq!(h.sent_types(), ["hello"]);
    h.welcome();
    assert_eq!(
        h.client.state(),
        &ConnectionState::Connected {
            session_id: "s1".into(),
            transport: Sse
        }
    );
    assert_eq!(h.client.session().unwrap().transport, Sse);
    assert_eq!(h.client.transport(), Sse);
}

#[test]
fn a_drop_after_welcome_does_not_count_toward_the_fallback() {
    let mut h = Harness::connected();
    for _ in 0..5 {
        h.client.handle_transport_closed("network", h.now);
        h.drain();
        h.reconnect();
    }
    assert!(h.opened.iter().all(|t| *t == WebSocket), "{:?}", h.opened);
}

#[test]
fn on_the_http_binding_the_client_moves_back_to_websocket_later_without_a_new_session() {
    let mut h = connected_over_sse();
    let start = h.now.as_millis();
    // Heartbeats run on the HTTP binding as usual (no server pings there): answer them.
    let mut waited = 0;
    while h.opens == 3 {
        h.advance(1_000);
        waited += 1_000;
        if h.sent_types().last().map(String::as_str) == Some("ping") {
            h.receive(ServerMessage::Pong {
                reference: None,
                server_time_ms: None,
            });
        }
        assert!(waited <= 60_000, "no WebSocket try within 60 s");
    }
    let elapsed = h.now.as_millis() - start;
    assert!(
        (30_000..=61_000).contains(&elapsed),
        "tried after {elapsed} ms"
    );
    assert_eq!(h.opened.last(), Some(&WebSocket));
    h.sent.clear();
    h.open_transport();
    let hello = &h.sent[0];
    assert_eq!(hello["type"], "hello");
    assert_eq!(
        hello["resume"]["session_id"], "s1",
        "the session moves with a resume"
    );
    h.welcome_with(true, None);
    assert_eq!(
        h.client.state(),
        &ConnectionState::Connected {
            session_id: "s1".into(),
            transport: WebSocket
        }
    );
    assert!(
        !h.sent_types().contains(&"subscribe".to_owned()),
        "the resumed session kept its watch list: {:?}",
        h.sent_types()
    );
    // Back on WebSocket for good: no more moves.
    let opens = h.opens;
    keep_alive(&mut h, 3_600_000);
    assert_eq!(h.opens, opens);
}

#[test]
fn a_failed_move_back_returns_to_the_http_binding_at_once_and_waits_longer() {
    let mut h = connected_over_sse();
    let first_try = h.client.poll_timeout().unwrap();
    // Keep the link alive until the try.
    while h.opens == 3 {
        h.advance(5_000);
        h.receive(ServerMessage::Pong {
            reference: None,
            server_time_ms: None,
        });
    }
    assert!(h.now >= first_try);
    let tried_at = h.now;
    fail_attempt(&mut h, false);
    wait_for_attempt(&mut h);
    assert_eq!(h.now, tried_at, "back to the HTTP binding at once");
    assert_eq!(h.opened[3..], [WebSocket, Sse]);
    h.sent.clear();
    h.open_transport();
    assert_eq!(h.sent[0]["resume"]["session_id"], "s1");
    h.welcome_with(true, None);
    let connected_at = h.now.as_millis();
    while h.opens == 5 {
        h.advance(5_000);
        h.receive(ServerMessage::Pong {
            reference: None,
            server_time_ms: None,
        });
    }
    let waited = h.now.as_millis() - connected_at;
    assert!(
        (60_000..=125_000).contains(&waited),
        "the second try waits between 60 and 120 s, waited {waited} ms"
    );
}

#[test]
fn failing_on_both_transports_goes_back_to_websocket() {
    let mut h = Harness::new();
    h.client.connect(h.now);
    h.drain();
    for _ in 0..5 {
        fail_attempt(&mut h, false);
        wait_for_attempt(&mut h);
    }
    assert_eq!(
        h.opened,
        [WebSocket, WebSocket, Sse, Sse, WebSocket, WebSocket]
    );
}

#[test]
fn a_network_change_while_waiting_tries_websocket_first() {
    let mut h = Harness::new();
    h.client.connect(h.now);
    h.drain();
    fail_attempt(&mut h, false);
    wait_for_attempt(&mut h);
    fail_attempt(&mut h, false);
    wait_for_attempt(&mut h);
    fail_attempt(&mut h, false);
    assert_eq!(h.opened, [WebSocket, WebSocket, Sse]);
    h.client.reconnect_now(h.now);
    h.drain();
    assert_eq!(h.opened.last(), Some(&WebSocket));
    // Still blocked: back to HTTP at once.
    fail_attempt(&mut h, false);
    let before = h.now;
    wait_for_attempt(&mut h);
    assert_eq!(h.now, before);
    assert_eq!(h.opened.last(), Some(&Sse));
}

#[test]
fn forced_transports_never_switch() {
    for (policy, transport) in [
        (TransportPolicy::WebSocketOnly, WebSocket),
        (TransportPolicy::SseOnly, Sse),
    ] {
        let mut c = config();
        c.transport = policy;
        let mut h = Harness::with_config(c, 3);
        h.client.connect(h.now);
        h.drain();
        for _ in 0..6 {
            fail_attempt(&mut h, true);
            wait_for_attempt(&mut h);
        }
        assert!(h.opened.iter().all(|t| *t == transport), "{:?}", h.opened);
        h.open_transport();
        h.welcome();
        assert_eq!(h.client.transport(), transport);
        // Connected over SSE by choice: no move to WebSocket ever.
        let opens = h.opens;
        keep_alive(&mut h, 3_600_000);
        assert_eq!(h.opens, opens);
    }
}

#[test]
fn without_a_resume_grace_the_move_waits_for_the_next_reconnect() {
    let mut h = Harness::new();
    h.client.connect(h.now);
    h.drain();
    fail_attempt(&mut h, false);
    wait_for_attempt(&mut h);
    fail_attempt(&mut h, false);
    wait_for_attempt(&mut h);
    h.open_transport();
    h.sessions += 1;
    h.receive(ServerMessage::Welcome {
        protocol: 1,
        session_id: "s1".into(),
        user_id: "alice".into(),
        heartbeat_interval_ms: support::INTERVAL,
        session_ttl_ms: 45_000,
        max_frame_bytes: 65_536,
        server: presently_core::ServerInfo {
            name: "test".into(),
            version: "0".into(),
        },
        resume_grace_ms: 0,
        ping_interval_ms: None,
        resumed: false,
        choice: None,
        features: Vec::new(),
    });
    let opens = h.opens;
    keep_alive(&mut h, 3_600_000);
    assert_eq!(h.opens, opens, "no move that watchers would see");
    assert_eq!(h.client.transport(), Sse);
    h.client.handle_transport_closed("network", h.now);
    h.drain();
    wait_for_attempt(&mut h);
    assert_eq!(
        h.opened.last(),
        Some(&WebSocket),
        "the next reconnect tries WebSocket"
    );
}

#[test]
fn a_server_that_cannot_be_reached_is_not_a_blocked_websocket() {
    // A server restart: every attempt is refused for a while. That is no reason to leave WebSocket.
    let mut h = Harness::connected();
    h.client.handle_transport_closed("connection reset", h.now);
    h.drain();
    for _ in 0..6 {
        wait_for_attempt(&mut h);
        h.client
            .handle_transport_unreachable("connection refused", h.now);
        h.drain();
        assert!(matches!(
            h.client.state(),
            ConnectionState::Reconnecting { .. }
        ));
    }
    assert!(h.opened.iter().all(|t| *t == WebSocket), "{:?}", h.opened);
    // Once the server is back the client is on WebSocket, and a refusal in between does not reset the count of
    // real failures: two handshakes refused by a proxy still switch.
    wait_for_attempt(&mut h);
    fail_attempt(&mut h, true);
    wait_for_attempt(&mut h);
    h.client
        .handle_transport_unreachable("connection refused", h.now);
    h.drain();
    wait_for_attempt(&mut h);
    fail_attempt(&mut h, true);
    wait_for_attempt(&mut h);
    assert_eq!(h.opened.last(), Some(&Sse), "{:?}", h.opened);
}
