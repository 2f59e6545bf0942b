//! The sans-IO client on virtual time: no sockets, no sleeps, every timer fired exactly when it is due.

mod support;

use std::time::Duration;

use presently_core::protocol::{MAX_FRAME_BYTES, ServerMessage};
use presently_core::{
    Availability, ConnectionState, ErrorCode, Event, Instant, Presence, QueryError,
    ReconnectPolicy, Status, Transport,
};
use serde_json::Value;
use support::*;

fn reconnect_delay(h: &Harness) -> Duration {
    match h.client.state() {
        ConnectionState::Reconnecting { delay, .. } => *delay,
        other => panic!("not reconnecting: {other:?}"),
    }
}

#[test]
fn first_frame_is_hello_with_credentials_and_client_info() {
    let mut h = Harness::new();
    assert_eq!(h.client.state(), &ConnectionState::Idle);
    h.client.connect(h.now);
    h.drain();
    assert_eq!(h.opens, 1);
    assert_eq!(
        h.client.state(),
        &ConnectionState::Connecting {
            attempt: 1,
            transport: Transport::WebSocket
        }
    );
    h.open_transport();
    assert_eq!(h.sent_types(), ["hello"]);
    assert_eq!(h.sent[0]["token"], "secret-token");
    assert_eq!(h.sent[0]["protocol"], 1);
    assert!(h.sent[0]["client"]["name"].is_string());
    assert!(
        h.sent[0].get("status").is_none(),
        "no status set: none sent"
    );
    h.welcome();
    assert_eq!(
        h.client.state(),
        &ConnectionState::Connected {
            session_id: "s1".into(),
            transport: Transport::WebSocket
        }
    );
    assert_eq!(
        h.client.session().unwrap().heartbeat_interval,
        Duration::from_millis(INTERVAL)
    );
}

#[test]
fn server_pings_are_the_heartbeat_and_silence_is_still_detected() {
    let mut h = Harness::connected_with_server_pings(Some(INTERVAL));
    // The server pings every interval; the transport answers with pongs, which keep the session alive.
    for _ in 0..20 {
        h.advance(INTERVAL);
        h.client.handle_inbound_activity(h.now);
    }
    assert!(
        h.sent.is_empty(),
        "no ping of its own while the server pings: {:?}",
        h.sent_types()
    );
    let fires = h.timer_fires;
    // The server goes silent: after interval + grace the client probes, and after another grace it gives up.
    h.advance(INTERVAL + GRACE);
    assert_eq!(h.sent_types(), ["ping"]);
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
    h.advance(GRACE);
    assert!(matches!(
        h.client.state(),
        ConnectionState::Reconnecting { .. }
    ));
    assert_eq!(h.timer_fires - fires, 2, "one probe, one verdict");
}

#[test]
fn a_busy_link_moves_the_timer_every_half_grace_and_silence_counts_from_the_last_frame() {
    let mut h = Harness::connected_with_server_pings(Some(INTERVAL));
    // A frame every 100 ms for three and a quarter grace periods: the timer the driver must arm moves once per
    // half grace period, not with every frame (each move is a timer update in the driver).
    let mut deadlines = Vec::new();
    for _ in 0..(3 * GRACE + GRACE / 4) / 100 {
        h.advance(100);
        h.client.handle_inbound_activity(h.now);
        h.drain();
        let due = h
            .client
            .poll_timeout()
            .expect("a liveness timer while connected");
        assert!(due > h.now, "the timer is always ahead");
        if deadlines.last() != Some(&due) {
            deadlines.push(due);
        }
    }
    assert_eq!(
        deadlines.len(),
        7,
        "armed once, then moved once per half grace period: {deadlines:?}"
    );
    // Then silence. The timer armed before the last frame fires early and is re-armed from that frame; the
    // probe goes out interval + grace after it, not before, and the verdict a grace period later.
    let last_frame = h.now;
    let fires = h.timer_fires;
    h.advance(INTERVAL + GRACE - 1);
    assert!(h.sent.is_empty(), "probed early: {:?}", h.sent_types());
    assert_eq!(h.timer_fires - fires, 1, "one early fire, which re-arms");
    h.advance(1);
    assert_eq!(h.sent_types(), ["ping"]);
    assert_eq!(h.now.as_millis(), last_frame.as_millis() + INTERVAL + GRACE);
    h.advance(GRACE - 1);
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
    h.advance(1);
    assert!(matches!(
        h.client.state(),
        ConnectionState::Reconnecting { .. }
    ));
    assert_eq!(
        h.timer_fires - fires,
        3,
        "the early fire, the probe, the verdict"
    );
}

#[test]
fn on_an_idle_link_the_liveness_deadline_stays_half_a_grace_beyond_the_next_server_ping() {
    // The server pings on its own schedule, so its first ping may come at any time after the connection opened.
    // Whenever it comes, the deadline the driver arms lies at least half a grace period beyond the next ping: a
    // driver timer that wakes somewhat early (tokio's timer wheel wakes up to 4.1 s before a deadline between 4 s
    // and 262 s away) never wakes the idle link's thread for nothing. And no timer fires.
    for first_ping in (0..INTERVAL).step_by(250) {
        let mut h = Harness::connected_with_server_pings(Some(INTERVAL));
        let mut next_ping = h.now.as_millis() + first_ping;
        for ping in 0..10 {
            let deadline = h
                .client
                .poll_timeout()
                .expect("a liveness timer while connected")
                .as_millis();
            assert!(
                deadline >= next_ping + GRACE / 2,
                "first ping {first_ping} ms after the opening, ping {ping}: the deadline {deadline} is less than \
                 half a grace beyond the ping at {next_ping}"
            );
            h.advance(next_ping - h.now.as_millis());
            h.client.handle_inbound_activity(h.now);
            next_ping += INTERVAL;
        }
        assert_eq!(
            h.timer_fires, 0,
            "first ping {first_ping} ms after the opening"
        );
        assert!(h.sent.is_empty(), "{:?}", h.sent_types());
    }
}

#[test]
fn heartbeat_pings_every_interval_and_inbound_frames_keep_the_link_alive() {
    let mut h = Harness::connected();
    for round in 1..=20 {
        h.advance(INTERVAL);
        assert_eq!(
            h.sent_types().last().map(String::as_str),
            Some("ping"),
            "round {round}"
        );
        // The server answers every ping: any inbound frame counts as life.
        h.receive(ServerMessage::Pong {
            reference: None,
            server_time_ms: None,
        });
    }
    assert_eq!(
        h.sent.len(),
        20,
        "exactly one ping per interval, no polling"
    );
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
}

#[test]
fn sending_other_frames_defers_the_ping() {
    let mut h = Harness::connected();
    h.advance(INTERVAL - 1_000);
    h.client
        .set_status(Status::new(Availability::Away), h.now)
        .unwrap();
    // The server's traffic keeps the link alive meanwhile.
    h.client.handle_inbound_activity(h.now);
    h.advance(1_000);
    assert_eq!(
        h.sent_types(),
        ["set_status"],
        "a frame was sent less than an interval ago"
    );
    h.advance(INTERVAL - 1_000);
    assert_eq!(h.sent_types(), ["set_status", "ping"]);
}

#[test]
fn half_open_link_is_detected_after_interval_plus_grace_then_reconnects() {
    let mut h = Harness::connected();
    let last_inbound = h.now;
    // The server goes silent: pings are sent but nothing comes back.
    h.advance(INTERVAL + GRACE - 1);
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
    h.advance(1);
    match h.client.state() {
        ConnectionState::Reconnecting {
            attempt, reason, ..
        } => {
            assert_eq!(*attempt, 1);
            assert!(
                reason.contains("no frame from the server for 25000 ms"),
                "{reason}"
            );
        }
        other => panic!("expected reconnecting, got {other:?}"),
    }
    assert_eq!(
        h.now - last_inbound,
        Duration::from_millis(INTERVAL + GRACE)
    );
    assert!(!h.transport_open, "the dead transport is closed");
    h.reconnect();
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
}

#[test]
fn websocket_control_frames_count_as_life() {
    let mut h = Harness::connected();
    for _ in 0..10 {
        h.advance(INTERVAL);
        h.client.handle_inbound_activity(h.now);
    }
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
    assert_eq!(h.client.stats().other_frames, 10);
}

#[test]
fn backoff_delays_grow_within_bounds_up_to_the_cap() {
    let policy = ReconnectPolicy::default();
    for seed in 0..50 {
        let mut h = Harness::with_config(config(), seed);
        h.client.connect(h.now);
        h.drain();
        for failures in 1..=12u32 {
            h.client
                .handle_transport_closed("connection refused", h.now);
            h.drain();
            let delay = reconnect_delay(&h);
            assert!(
                delay <= policy.ceiling(failures),
                "seed {seed}, failure {failures}: {delay:?}"
            );
            match h.client.state() {
                ConnectionState::Reconnecting { attempt, .. } => assert_eq!(*attempt, failures + 1),
                other => panic!("{other:?}"),
            }
            let opens = h.opens;
            h.advance(delay.as_millis() as u64);
            assert_eq!(h.opens, opens + 1);
        }
    }
}

#[test]
fn first_retries_of_many_clients_spread_out() {
    // 1,000 clients lose the same server at the same instant. Their first retries must not bunch up: no
    // tenth of the window holds more than 15 % of them.
    let ceiling = ReconnectPolicy::default().ceiling(1).as_millis() as u64;
    let mut buckets = [0u32; 10];
    for seed in 0..1_000 {
        let mut h = Harness::with_config(config(), seed);
        h.client.connect(h.now);
        h.drain();
        h.open_transport();
        h.welcome();
        h.client.handle_transport_closed("server restarted", h.now);
        h.drain();
        let delay = reconnect_delay(&h).as_millis() as u64;
        buckets[((delay * 10) / (ceiling + 1)) as usize] += 1;
    }
    assert!(buckets.iter().all(|&n| n <= 150), "{buckets:?}");
}

#[test]
fn failure_count_resets_after_a_stable_connection() {
    let policy = ReconnectPolicy {
        base_delay: Duration::from_millis(1_000),
        max_delay: Duration::from_secs(60),
        stable_after: Duration::from_secs(30),
    };
    let mut flapping_delays = Vec::new();
    for seed in 0..50 {
        let mut c = config();
        c.reconnect = policy.clone();
        let mut h = Harness::with_config(c, seed);
        h.client.connect(h.now);
        h.drain();
        // Five quick failures push the ceiling up.
        for _ in 0..5 {
            h.client.handle_transport_closed("refused", h.now);
            h.drain();
            let delay = reconnect_delay(&h);
            h.advance(delay.as_millis() as u64);
        }
        // A connection that stays up only 5 s does not reset the count: the sixth failure's ceiling is 32 s.
        h.open_transport();
        h.welcome();
        h.advance(5_000);
        h.client.handle_transport_closed("dropped", h.now);
        h.drain();
        let delay = reconnect_delay(&h);
        assert!(delay <= policy.ceiling(6));
        flapping_delays.push(delay);
        // Up for 30 s: stable. The next drop starts from the base delay again.
        h.reconnect();
        for _ in 0..2 {
            h.advance(INTERVAL);
            h.client.handle_inbound_activity(h.now);
        }
        h.client.handle_transport_closed("dropped", h.now);
        h.drain();
        assert!(reconnect_delay(&h) <= policy.base_delay, "seed {seed}");
    }
    let above_base = flapping_delays
        .iter()
        .filter(|d| **d > policy.base_delay)
        .count();
    assert!(
        above_base > 40,
        "{above_base} of 50 flapping delays above the base delay"
    );
}

#[test]
fn unstable_connections_keep_growing_the_backoff() {
    // Sample many seeds: after six flapping connections, delays exceed the base delay most of the time.
    let mut over = 0;
    for seed in 0..100 {
        let mut h = Harness::with_config(config(), seed);
        h.client.connect(h.now);
        h.drain();
        for _ in 0..6 {
            h.open_transport();
            h.welcome();
            h.advance(1_000);
            h.client.handle_transport_closed("dropped", h.now);
            h.drain();
            if reconnect_delay(&h) > ReconnectPolicy::default().base_delay {
                over += 1;
            }
            let delay = reconnect_delay(&h);
            h.advance(delay.as_millis() as u64);
        }
    }
    assert!(over > 400, "{over} of 600 delays were above the base delay");
}

#[test]
fn status_set_while_disconnected_is_sent_exactly_once_in_the_next_hello() {
    let mut h = Harness::connected();
    h.client.handle_transport_closed("network down", h.now);
    h.drain();
    h.sent.clear();
    // Several changes while offline: only the last one matters.
    h.client
        .set_status(Status::new(Availability::Busy), h.now)
        .unwrap();
    h.client
        .set_status(Status::new(Availability::Away).with_message("lunch"), h.now)
        .unwrap();
    h.client
        .set_status(
            Status::new(Availability::Busy).with_message("Mixing"),
            h.now,
        )
        .unwrap();
    assert!(h.sent.is_empty(), "nothing is sent while disconnected");
    h.reconnect();
    h.advance(1_000);
    let with_status: Vec<&Value> = h
        .sent
        .iter()
        .filter(|f| f["type"] == "set_status" || f.get("status").is_some())
        .collect();
    assert_eq!(with_status.len(), 1, "sent once: {:?}", h.sent);
    assert_eq!(with_status[0]["type"], "hello");
    assert_eq!(with_status[0]["status"]["availability"], "busy");
    assert_eq!(with_status[0]["status"]["message"], "Mixing");

    // And on every later reconnect, the hello carries it again (the server may have lost it).
    h.client.handle_transport_closed("again", h.now);
    h.drain();
    h.sent.clear();
    h.reconnect();
    assert_eq!(h.sent[0]["status"]["message"], "Mixing");
    assert_eq!(h.sent_types(), ["hello"]);
}

#[test]
fn status_set_during_the_handshake_is_sent_after_welcome() {
    let mut h = Harness::new();
    h.client.connect(h.now);
    h.drain();
    h.open_transport();
    h.client
        .set_status(Status::new(Availability::Away), h.now)
        .unwrap();
    h.drain();
    assert_eq!(h.sent_types(), ["hello"]);
    h.welcome();
    assert_eq!(h.sent_types(), ["hello", "set_status"]);
    assert_eq!(h.sent[1]["availability"], "away");
}

#[test]
fn status_while_connected_is_sent_at_once_and_duplicates_are_coalesced() {
    let mut h = Harness::connected();
    let busy = Status::new(Availability::Busy).with_message("Mixing");
    h.client.set_status(busy.clone(), h.now).unwrap();
    h.client.set_status(busy, h.now).unwrap();
    h.drain();
    assert_eq!(h.sent_types(), ["set_status"]);
}

#[test]
fn invalid_status_is_rejected_locally_and_changes_nothing() {
    let mut h = Harness::connected();
    let err = h
        .client
        .set_status(
            Status::new(Availability::Busy).with_message("x".repeat(201)),
            h.now,
        )
        .unwrap_err();
    assert!(err.to_string().contains("200"));
    assert!(
        h.client
            .set_status(Status::new(Availability::Offline), h.now)
            .is_err()
    );
    h.drain();
    assert!(h.sent.is_empty());
    assert_eq!(h.client.manual_status(), None);
}

#[test]
fn subscriptions_are_restored_after_reconnect_and_the_roster_reconciled() {
    let mut h = Harness::connected();
    h.client.subscribe(["bob", "carol"], h.now).unwrap();
    h.drain();
    assert_eq!(h.sent_types(), ["subscribe"]);
    h.receive(ServerMessage::Snapshot {
        users: vec![
            record("bob", Availability::Online, 10),
            record("carol", Availability::Busy, 20),
        ],
    });
    assert_eq!(
        h.presence_events(),
        [
            ("bob".into(), None, Availability::Online),
            ("carol".into(), None, Availability::Busy)
        ]
    );
    h.events.clear();

    // The server restarts. While down, the application adds a user.
    h.client.handle_transport_closed("server restarted", h.now);
    h.drain();
    h.client.subscribe(["dave"], h.now).unwrap();
    h.sent.clear();
    h.reconnect();
    assert_eq!(h.sent_types(), ["hello", "subscribe"]);
    let users: Vec<&str> = h.sent[1]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(users, ["bob", "carol", "dave"]);
    // The records are kept (as last known) while reconnecting.
    assert_eq!(h.client.roster().count(), 2);

    // The new server's snapshot has new versions (a restart), bob unchanged, carol now away, dave new.
    h.events.clear();
    h.receive(ServerMessage::Snapshot {
        users: vec![
            record("bob", Availability::Online, 5),
            record("carol", Availability::Away, 6),
            record("dave", Availability::Offline, 0),
        ],
    });
    assert_eq!(
        h.presence_events(),
        [
            ("carol".into(), Some(Availability::Busy), Availability::Away),
            ("dave".into(), None, Availability::Offline)
        ],
        "only real changes are reported"
    );
    assert_eq!(
        h.client.presence("bob").unwrap().version,
        5,
        "the new version is adopted"
    );
    // Updates on the new session follow the new versions.
    h.receive(ServerMessage::Presence {
        user: record("bob", Availability::Away, 7),
    });
    assert_eq!(
        h.client.presence("bob").unwrap().availability,
        Availability::Away
    );
}

#[test]
fn stale_and_duplicate_versions_are_dropped() {
    let mut h = Harness::connected();
    h.client.subscribe(["bob"], h.now).unwrap();
    h.receive(ServerMessage::Snapshot {
        users: vec![record("bob", Availability::Online, 5)],
    });
    h.events.clear();
    h.receive(ServerMessage::Presence {
        user: record("bob", Availability::Away, 4),
    });
    h.receive(ServerMessage::Presence {
        user: record("bob", Availability::Busy, 5),
    });
    assert!(h.presence_events().is_empty());
    assert_eq!(h.client.stats().stale_updates, 2);
    assert_eq!(
        h.client.presence("bob").unwrap().availability,
        Availability::Online
    );
    h.receive(ServerMessage::Presence {
        user: record("bob", Availability::Busy, 6),
    });
    assert_eq!(
        h.presence_events(),
        [("bob".into(), Some(Availability::Online), Availability::Busy)]
    );
}

#[test]
fn malformed_oversized_and_unknown_frames_are_ignored_and_counted() {
    let mut h = Harness::connected();
    h.client.subscribe(["bob"], h.now).unwrap();
    h.receive(ServerMessage::Snapshot {
        users: vec![record("bob", Availability::Online, 5)],
    });
    h.events.clear();
    h.sent.clear();
    let state = h.client.state().clone();
    let roster: Vec<Presence> = h.client.roster().cloned().collect();

    h.receive_text("this is not json");
    h.receive_text("{\"type\":\"presence\",\"user\":42}");
    h.receive_text("{\"no_type\":true}");
    h.receive_text("[1,2,3]");
    h.receive_text("");
    let huge = format!(
        "{{\"type\":\"presence\",\"user\":{{\"user_id\":\"bob\",\"availability\":\"busy\",\"version\":99,\"pad\":\"{}\"}}}}",
        "x".repeat(MAX_FRAME_BYTES)
    );
    h.receive_text(&huge);
    h.receive_text("{\"type\":\"typing_indicator\",\"user\":\"bob\"}");
    h.receive_text("{\"type\":\"welcome_v2\"}");

    let stats = h.client.stats();
    assert_eq!(stats.malformed_frames, 5);
    assert_eq!(stats.oversized_frames, 1);
    assert_eq!(stats.unknown_frames, 2);
    assert_eq!(h.client.state(), &state);
    assert_eq!(h.client.roster().cloned().collect::<Vec<_>>(), roster);
    assert!(h.events.is_empty(), "no events: {:?}", h.events);
    assert!(h.sent.is_empty());
    // And the client still works.
    h.receive(ServerMessage::Presence {
        user: record("bob", Availability::Away, 6),
    });
    assert_eq!(h.presence_events().len(), 1);
}

#[test]
fn fatal_error_fails_the_client_and_it_never_retries_by_itself() {
    let mut h = Harness::new();
    h.client.connect(h.now);
    h.drain();
    h.open_transport();
    h.receive(ServerMessage::Error {
        code: ErrorCode::InvalidToken,
        message: "bad signature".into(),
        fatal: true,
        reference: None,
        retry_after_ms: None,
    });
    assert_eq!(
        h.client.state(),
        &ConnectionState::Failed {
            code: ErrorCode::InvalidToken,
            message: "bad signature".into()
        }
    );
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::ServerError { fatal: true, .. }))
    );
    let opens = h.opens;
    h.advance(3_600_000);
    assert_eq!(h.opens, opens, "no retry storm");
    assert_eq!(h.client.poll_timeout(), None);
    h.client.reconnect_now(h.now);
    h.drain();
    assert_eq!(h.opens, opens, "hints do not revive a failed client");
    // Reconfigured by the application: connecting again is allowed.
    h.client.set_token("fresh-token");
    h.client.connect(h.now);
    h.drain();
    assert_eq!(h.opens, opens + 1);
    h.open_transport();
    assert_eq!(h.sent.last().unwrap()["token"], "fresh-token");
}

#[test]
fn known_fatal_codes_are_fatal_even_without_the_flag_and_unknown_codes_are_not() {
    let mut h = Harness::connected();
    h.receive(ServerMessage::Error {
        code: ErrorCode::Other("brand_new".into()),
        message: "?".into(),
        fatal: false,
        reference: None,
        retry_after_ms: None,
    });
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
    h.receive(ServerMessage::Error {
        code: ErrorCode::TokenExpired,
        message: "expired".into(),
        fatal: false,
        reference: None,
        retry_after_ms: None,
    });
    assert!(matches!(h.client.state(), ConnectionState::Failed { .. }));
}

#[test]
fn spurious_timeouts_are_no_ops() {
    let mut h = Harness::connected();
    h.client.subscribe(["bob"], h.now).unwrap();
    h.drain();
    h.sent.clear();
    let state = h.client.state().clone();
    let due = h.client.poll_timeout().unwrap();
    for ms in [0, 1, 500, due.as_millis() - 1] {
        h.client.handle_timeout(Instant::from_millis(ms));
        h.client.handle_timeout(Instant::from_millis(ms));
    }
    h.drain();
    assert!(h.sent.is_empty());
    assert!(h.events.is_empty());
    assert_eq!(h.client.state(), &state);
    assert_eq!(h.client.poll_timeout(), Some(due));
    // While waiting to reconnect, an early timeout does not start the attempt.
    h.client.handle_transport_closed("drop", h.now);
    h.drain();
    let retry_at = h.client.poll_timeout().unwrap();
    let opens = h.opens;
    if retry_at > h.now {
        h.client.handle_timeout(h.now);
        h.drain();
        assert_eq!(h.opens, opens);
    }
}

#[test]
fn goaway_delay_is_honoured_plus_jitter() {
    for seed in 0..30 {
        let mut h = Harness::with_config(config(), seed);
        h.client.connect(h.now);
        h.drain();
        h.open_transport();
        h.welcome();
        let at = h.now;
        h.receive(ServerMessage::Goaway {
            reconnect_after_ms: 5_000,
            reason: Some("restarting".into()),
        });
        assert!(!h.transport_open);
        let ConnectionState::Reconnecting {
            retry_at, reason, ..
        } = h.client.state().clone()
        else {
            panic!("not reconnecting");
        };
        assert!(reason.contains("restarting"));
        let wait = retry_at - at;
        assert!(wait >= Duration::from_millis(5_000), "{wait:?}");
        // Plus the first backoff delay: up to the policy's base (2 s by default).
        assert!(wait <= Duration::from_millis(7_000), "{wait:?}");
        let opens = h.opens;
        h.advance(4_999);
        assert_eq!(h.opens, opens, "not before reconnect_after_ms");
    }
}

#[test]
fn reconnect_now_skips_the_wait_and_probes_a_live_link() {
    let mut h = Harness::connected();
    // Push the backoff far out.
    for _ in 0..8 {
        h.client.handle_transport_closed("refused", h.now);
        h.drain();
        let d = reconnect_delay(&h);
        h.advance(d.as_millis() as u64);
    }
    h.client.handle_transport_closed("refused", h.now);
    h.drain();
    let opens = h.opens;
    h.client.reconnect_now(h.now);
    h.drain();
    assert_eq!(
        h.opens,
        opens + 1,
        "the network-change hint retries at once"
    );
    h.open_transport();
    h.welcome();

    // While connected, the hint sends a probe; silence for probe_timeout means the link is dead.
    h.sent.clear();
    h.client.reconnect_now(h.now);
    h.drain();
    assert_eq!(h.sent_types(), ["ping"]);
    h.advance(4_999);
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
    h.advance(1);
    assert!(matches!(
        h.client.state(),
        ConnectionState::Reconnecting { .. }
    ));

    // A probe that is answered leaves the link alone.
    h.reconnect();
    h.client.reconnect_now(h.now);
    h.advance(100);
    h.receive(ServerMessage::Pong {
        reference: None,
        server_time_ms: None,
    });
    h.advance(10_000);
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
}

#[test]
fn an_attempt_that_never_reaches_welcome_times_out() {
    let mut h = Harness::new();
    h.client.connect(h.now);
    h.drain();
    h.open_transport();
    h.advance(10_000);
    match h.client.state() {
        ConnectionState::Reconnecting { reason, .. } => assert!(reason.contains("connect timeout")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn queries_complete_and_fail_on_disconnect() {
    let mut h = Harness::new();
    assert_eq!(
        h.client.query(&["bob"], h.now),
        Err(QueryError::NotConnected)
    );
    let mut h = Harness::connected();
    let id = h.client.query(&["bob", "dave"], h.now).unwrap();
    h.drain();
    let reference = h.sent[0]["ref"].as_str().unwrap().to_owned();
    // The answer comes in two parts.
    h.receive(ServerMessage::QueryResult {
        reference: reference.clone(),
        users: vec![record("bob", Availability::Busy, 3)],
        more: true,
    });
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::QueryCompleted { .. })),
        "not before the last part"
    );
    h.receive(ServerMessage::QueryResult {
        reference,
        users: vec![Presence::unknown("dave")],
        more: false,
    });
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::QueryCompleted { query_id, result: Ok(users) } if *query_id == id && users.len() == 2
    )));
    let id2 = h.client.query(&["erin"], h.now).unwrap();
    h.client.handle_transport_closed("drop", h.now);
    h.drain();
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::QueryCompleted { query_id, result: Err(QueryError::Disconnected) } if *query_id == id2
    )));
    assert!(matches!(
        h.client.query(&["a\u{0}"], h.now),
        Err(QueryError::Invalid(_))
    ));
}

#[test]
fn unsubscribe_forgets_the_user_and_ignores_late_records() {
    let mut h = Harness::connected();
    h.client.subscribe(["bob"], h.now).unwrap();
    h.receive(ServerMessage::Snapshot {
        users: vec![record("bob", Availability::Online, 1)],
    });
    h.client.unsubscribe(["bob", "never-watched"], h.now);
    h.drain();
    assert_eq!(h.sent_types(), ["subscribe", "unsubscribe"]);
    assert_eq!(h.sent[1]["users"], serde_json::json!(["bob"]));
    assert_eq!(h.client.presence("bob"), None);
    h.events.clear();
    h.receive(ServerMessage::Presence {
        user: record("bob", Availability::Busy, 2),
    });
    assert!(h.events.is_empty());
    assert_eq!(h.client.presence("bob"), None);
}

#[test]
fn large_watch_lists_are_split_into_frames_within_the_limits() {
    let mut h = Harness::connected();
    let users: Vec<String> = (0..2_500)
        .map(|i| format!("user-{i:05}-{}", "x".repeat(100)))
        .collect();
    h.client.subscribe(users.clone(), h.now).unwrap();
    h.client.poll_transmit().map(|_| ()).unwrap();
    // Re-run through a reconnect to check the frames the driver sees.
    h.drain();
    h.client.handle_transport_closed("drop", h.now);
    h.drain();
    h.sent.clear();
    h.reconnect();
    let mut total = 0;
    for frame in &h.sent[1..] {
        assert_eq!(frame["type"], "subscribe");
        let n = frame["users"].as_array().unwrap().len();
        assert!(n <= 1_000);
        assert!(frame.to_string().len() <= MAX_FRAME_BYTES);
        total += n;
    }
    assert_eq!(total, 2_500);
    assert!(
        h.client
            .subscribe(["x"; 1].iter().map(|s| s.to_string()), h.now)
            .is_ok()
    );
    let too_many: Vec<String> = (0..8_000).map(|i| format!("more-{i}")).collect();
    assert!(h.client.subscribe(too_many, h.now).is_err());
}

#[test]
fn close_sends_bye_and_stops() {
    let mut h = Harness::connected();
    h.client.close(h.now);
    h.drain();
    assert_eq!(h.sent_types(), ["bye"]);
    assert_eq!(h.client.state(), &ConnectionState::Closed);
    let opens = h.opens;
    h.advance(600_000);
    assert_eq!(h.opens, opens);
    // Events report the transition.
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::StateChanged {
            current: ConnectionState::Closed,
            ..
        }
    )));
}

#[test]
fn frames_outside_a_connection_are_ignored() {
    let mut h = Harness::new();
    h.client.handle_frame("{\"type\":\"pong\"}", h.now);
    h.client.handle_transport_open(h.now);
    h.client.handle_transport_closed("x", h.now);
    h.client.handle_timeout(h.now);
    h.drain();
    assert_eq!(h.client.state(), &ConnectionState::Idle);
    assert!(h.sent.is_empty());
    assert_eq!(h.opens, 0);
}

/// Waits out the reconnect delay and opens the transport (the hello is then in `h.sent`).
fn reopen(h: &mut Harness) {
    let retry_at = h.client.poll_timeout().unwrap();
    h.advance(retry_at.as_millis() - h.now.as_millis());
    h.open_transport();
}

#[test]
fn a_reconnect_within_the_grace_resumes_and_only_sends_what_changed() {
    let mut h = Harness::connected();
    h.client.subscribe(["bob", "carol"], h.now).unwrap();
    h.receive(ServerMessage::Snapshot {
        users: vec![
            record("bob", Availability::Online, 50),
            record("carol", Availability::Busy, 40),
        ],
    });
    h.client.handle_transport_closed("tunnel", h.now);
    h.drain();
    // While away: stop watching carol, start watching dave.
    h.client.unsubscribe(["carol"], h.now);
    h.client.subscribe(["dave"], h.now).unwrap();
    h.sent.clear();
    h.events.clear();
    reopen(&mut h);
    assert_eq!(
        h.sent[0]["resume"],
        serde_json::json!({"session_id": "s1", "last_version": 50})
    );
    h.welcome_with(true, None);
    assert_eq!(h.sent_types(), ["hello", "unsubscribe", "subscribe"]);
    assert_eq!(h.sent[1]["users"], serde_json::json!(["carol"]));
    assert_eq!(h.sent[2]["users"], serde_json::json!(["dave"]));
    assert!(matches!(h.client.session(), Some(s) if s.resumed));
    // Same session: versions still order updates, nothing is replayed as a change.
    h.receive(ServerMessage::Snapshot { users: vec![] });
    h.receive(ServerMessage::Presence {
        user: record("bob", Availability::Away, 49),
    });
    assert_eq!(
        h.client.presence("bob").unwrap().availability,
        Availability::Online,
        "stale"
    );
    assert!(h.presence_events().is_empty());
}

#[test]
fn after_the_grace_or_a_refused_resume_the_client_starts_afresh() {
    let mut h = Harness::connected();
    h.client.subscribe(["bob"], h.now).unwrap();
    h.client.handle_transport_closed("down", h.now);
    h.drain();
    // The server refuses the resume (it restarted): everything is sent again.
    h.sent.clear();
    reopen(&mut h);
    assert!(h.sent[0].get("resume").is_some());
    h.welcome_with(false, None);
    assert_eq!(h.sent_types(), ["hello", "subscribe"]);
    // A long outage: past the grace, no resume is attempted.
    h.client.handle_transport_closed("down", h.now);
    h.drain();
    for _ in 0..6 {
        h.client.handle_transport_closed("refused", h.now);
        reopen(&mut h);
    }
    h.advance(RESUME_GRACE);
    h.client.handle_transport_closed("refused", h.now);
    h.sent.clear();
    reopen(&mut h);
    assert!(h.sent[0].get("resume").is_none(), "{:?}", h.sent[0]);
}

#[test]
fn a_timer_that_fires_late_asks_before_declaring_the_link_dead() {
    let mut h = Harness::connected();
    // A throttled background tab: the first timer runs a minute late, with nothing heard meanwhile.
    h.now = Instant::from_millis(h.now.as_millis() + 60_000);
    h.client.handle_timeout(h.now);
    h.drain();
    assert!(
        matches!(h.client.state(), ConnectionState::Connected { .. }),
        "not dead yet"
    );
    assert_eq!(h.sent_types(), ["ping"]);
    h.advance(GRACE - 1);
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
    h.receive(ServerMessage::Pong {
        reference: None,
        server_time_ms: None,
    });
    // The next timer is late again; this time the overdue ping goes unanswered for the grace: the link is dead.
    h.sent.clear();
    h.now = Instant::from_millis(h.now.as_millis() + 60_000);
    h.client.handle_timeout(h.now);
    h.drain();
    assert_eq!(h.sent_types(), ["ping"]);
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connected { .. }
    ));
    h.advance(GRACE);
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::StateChanged { current: ConnectionState::Reconnecting { reason, .. }, .. }
            if reason.contains("no frame from the server")
    )));
}

#[test]
fn rate_limited_updates_are_resent_once_with_the_latest_state() {
    let mut h = Harness::connected();
    h.client
        .set_status(Status::new(Availability::Busy), h.now)
        .unwrap();
    h.rate_limited(500);
    h.client
        .set_status(Status::new(Availability::Away).with_message("1"), h.now)
        .unwrap();
    h.client
        .set_status(Status::new(Availability::Away).with_message("2"), h.now)
        .unwrap();
    h.drain();
    assert_eq!(
        h.sent_types(),
        ["set_status"],
        "nothing more until the delay has passed"
    );
    h.advance(499);
    assert_eq!(h.sent.len(), 1);
    h.advance(1);
    let resent: Vec<&Value> = h.sent[1..]
        .iter()
        .filter(|f| f["type"] == "set_status")
        .collect();
    assert_eq!(resent.len(), 1, "the latest choice, once: {:?}", h.sent);
    assert_eq!(resent[0]["message"], "2");
    assert!(
        matches!(h.client.state(), ConnectionState::Connected { .. }),
        "not a disconnect"
    );
}

#[test]
fn a_choice_made_on_another_device_is_adopted_without_echo() {
    let mut h = Harness::connected();
    h.receive(ServerMessage::Choice {
        status: presently_core::Choice {
            status: Status::new(Availability::Busy).with_message("from my phone"),
            chosen_at: Some(1_000),
        },
    });
    assert_eq!(
        h.client.manual_status().map(|s| s.availability),
        Some(Availability::Busy)
    );
    assert_eq!(
        h.client.effective_status().message.as_deref(),
        Some("from my phone")
    );
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::OwnStatusChanged { .. }))
    );
    assert!(h.sent.is_empty(), "not sent back");
    // On the next connection the adopted choice travels with its original time.
    h.client.handle_transport_closed("drop", h.now);
    h.drain();
    reopen(&mut h);
    assert_eq!(h.sent.last().unwrap()["status"]["chosen_at"], 1_000);
}

#[test]
fn an_expired_token_is_refreshed_once_when_a_provider_is_configured() {
    let mut c = config();
    c.refreshable_token = true;
    let mut h = Harness::with_config(c, 1);
    h.client.connect(h.now);
    h.drain();
    h.open_transport();
    let expired = || ServerMessage::Error {
        code: ErrorCode::TokenExpired,
        message: "expired".into(),
        fatal: true,
        reference: None,
        retry_after_ms: None,
    };
    h.receive(expired());
    assert_eq!(h.opens, 2, "retried at once with a fresh token");
    assert!(matches!(
        h.client.state(),
        ConnectionState::Connecting { .. }
    ));
    h.open_transport();
    h.receive(expired());
    assert!(matches!(
        h.client.state(),
        ConnectionState::Failed {
            code: ErrorCode::TokenExpired,
            ..
        }
    ));
    assert_eq!(h.opens, 2, "no retry storm");
}

#[test]
fn channels_follow_their_members_and_survive_reconnects() {
    let mut h = Harness::connected();
    h.client.subscribe_channels(["studio"], h.now).unwrap();
    h.client.subscribe(["carol"], h.now).unwrap();
    h.drain();
    assert!(h.sent_types().contains(&"subscribe_channels".to_owned()));
    // The snapshot comes in two parts.
    h.receive(ServerMessage::ChannelSnapshot {
        channel: "studio".into(),
        members: vec![record("bob", Availability::Busy, 1)],
        more: true,
    });
    h.receive(ServerMessage::ChannelSnapshot {
        channel: "studio".into(),
        members: vec![record("carol", Availability::Online, 1)],
        more: false,
    });
    let members: Vec<&str> = h
        .client
        .channel_members("studio")
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(members, ["bob", "carol"]);
    assert_eq!(
        h.client.presence("bob").unwrap().availability,
        Availability::Busy
    );
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::ChannelMembersChanged { joined, .. } if joined.len() == 2))
    );
    // Bob leaves the channel: forgotten. Carol leaves too, but she is watched directly: kept.
    h.receive(ServerMessage::ChannelMembers {
        channel: "studio".into(),
        joined: vec![record("dave", Availability::Away, 2)],
        left: vec!["bob".into(), "carol".into()],
    });
    assert_eq!(h.client.presence("bob"), None);
    assert!(h.client.presence("carol").is_some());
    assert_eq!(
        h.client.presence("dave").unwrap().availability,
        Availability::Away
    );
    // After a reconnect that does not resume, the channel is subscribed again.
    h.client.handle_transport_closed("drop", h.now);
    h.drain();
    h.sent.clear();
    h.reconnect();
    assert!(h.sent.iter().any(
        |f| f["type"] == "subscribe_channels" && f["channels"] == serde_json::json!(["studio"])
    ));
    // Unsubscribing drops the members not watched otherwise.
    h.client.unsubscribe_channels(["studio"], h.now);
    assert_eq!(h.client.presence("dave"), None);
    assert!(h.client.presence("carol").is_some());
}

#[test]
fn a_channel_the_user_was_removed_from_is_dropped() {
    let mut h = Harness::connected();
    h.client
        .subscribe_channels(["studio", "lounge"], h.now)
        .unwrap();
    h.receive(ServerMessage::ChannelSnapshot {
        channel: "studio".into(),
        members: vec![
            record("alice", Availability::Online, 1),
            record("bob", Availability::Busy, 1),
        ],
        more: false,
    });
    // The admin removes alice (this user) from the studio.
    h.receive(ServerMessage::ChannelMembers {
        channel: "studio".into(),
        joined: vec![],
        left: vec!["alice".into()],
    });
    assert!(h.client.channel_members("studio").is_none());
    assert_eq!(
        h.client.presence("bob"),
        None,
        "no stale member left behind"
    );
    assert!(!h.client.channel_subscriptions().any(|c| c == "studio"));
    // The server refuses the lounge: the error's ref names it.
    h.receive(ServerMessage::Error {
        code: ErrorCode::NotAMember,
        message: "not a member".into(),
        fatal: false,
        reference: Some("lounge".into()),
        retry_after_ms: None,
    });
    assert_eq!(h.client.channel_subscriptions().count(), 0);
}
