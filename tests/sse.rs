//! End to end over the HTTP binding (protocol section 11): the main scenario with WebSocket disabled on the
//! server, a mixed room, and the move back to WebSocket without a change watchers can see.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use presently::{Availability, ConnectionState, Status, Transport, TransportPolicy};
use presently_server::RunningServer;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

fn availability(client: &presently::Client, user: &str) -> Option<Availability> {
    client.presence(user).map(|p| p.availability)
}

fn transport(client: &presently::Client) -> Option<Transport> {
    match client.state() {
        ConnectionState::Connected { transport, .. } => Some(transport),
        _ => None,
    }
}

/// A server with only the HTTP binding, as behind a proxy that blocks WebSockets.
async fn start_sse_only_server_at(addr: std::net::SocketAddr) -> RunningServer {
    let mut config = server_config(addr);
    config.websocket = false;
    presently_server::start(config)
        .await
        .expect("server starts")
}

/// A client with the default transport policy (WebSocket first, then the fallback).
async fn auto_client(server: &RunningServer, user: &str) -> presently::Client {
    let client = client_for(&server.ws_url(), &token(server, user), user);
    client.connect().await.expect("connects");
    client
}

#[tokio::test]
async fn with_websocket_blocked_clients_fall_back_and_watchers_see_every_change() {
    let server = start_sse_only_server_at("127.0.0.1:0".parse().unwrap()).await;
    let alice = auto_client(&server, "alice").await;
    assert_eq!(
        transport(&alice),
        Some(Transport::Sse),
        "{:?}",
        alice.state()
    );
    alice.subscribe(["bob"]).unwrap();
    until(&alice, "bob's snapshot", |c| {
        availability(c, "bob") == Some(Availability::Offline)
    })
    .await;

    let bob = auto_client(&server, "bob").await;
    assert_eq!(transport(&bob), Some(Transport::Sse));
    until(&alice, "bob online", |c| {
        availability(c, "bob") == Some(Availability::Online)
    })
    .await;
    bob.set_status(Status::new(Availability::Busy).with_message("Mixing"))
        .unwrap();
    until(&alice, "bob busy", |c| {
        c.presence("bob").is_some_and(|p| {
            p.availability == Availability::Busy && p.message.as_deref() == Some("Mixing")
        })
    })
    .await;
    let result = alice.query(&["bob", "dave"]).await.unwrap();
    assert_eq!(result[0].availability, Availability::Busy);
    assert_eq!(result[1].availability, Availability::Offline);

    // Quiet for several TTLs: the client's pings over POST keep both sessions.
    tokio::time::sleep(TTL * 4).await;
    assert!(is_connected(&alice) && is_connected(&bob));
    assert_eq!(server.stats().sessions_active, 2);

    bob.close().await;
    until(&alice, "bob offline", |c| {
        availability(c, "bob") == Some(Availability::Offline)
    })
    .await;
}

#[tokio::test]
async fn over_sse_a_server_restart_brings_everyone_back_with_status_and_watch_lists() {
    let server = start_sse_only_server_at(reserved_addr()).await;
    let addr = server.local_addr();
    let alice = auto_client(&server, "alice").await;
    let bob = auto_client(&server, "bob").await;
    alice
        .set_status(Status::new(Availability::Busy).with_message("Mixing"))
        .unwrap();
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice busy", |c| {
        availability(c, "alice") == Some(Availability::Busy)
    })
    .await;

    server.kill().await;
    for client in [&alice, &bob] {
        until(client, "noticing the server is gone", |c| !is_connected(c)).await;
    }
    alice
        .set_status(Status::new(Availability::Away).with_message("back soon"))
        .unwrap();
    let server = start_sse_only_server_at(addr).await;
    for client in [&alice, &bob] {
        until(client, "reconnected over SSE", |c| {
            transport(c) == Some(Transport::Sse)
        })
        .await;
    }
    until(&bob, "alice's latest status on the new server", |c| {
        c.presence("alice").is_some_and(|p| {
            p.availability == Availability::Away && p.message.as_deref() == Some("back soon")
        })
    })
    .await;
    assert_eq!(server.stats().sessions_active, 2);
}

#[tokio::test]
async fn over_sse_a_half_open_link_is_detected_and_recovered() {
    let server = start_sse_only_server_at("127.0.0.1:0".parse().unwrap()).await;
    let proxy = FreezableProxy::start(server.local_addr()).await;
    let url = format!("ws://{}/v1/ws", proxy.addr);
    let alice = presently::Client::builder(&url)
        .token(token(&server, "alice"))
        .transport(TransportPolicy::SseOnly)
        .liveness_grace(GRACE)
        .connect_timeout(Duration::from_secs(2))
        .reconnect_policy(presently::ReconnectPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            stable_after: Duration::from_secs(5),
        })
        .build()
        .unwrap();
    alice.connect().await.unwrap();
    alice
        .set_status(Status::new(Availability::Busy).with_message("in session"))
        .unwrap();
    let bob = auto_client(&server, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice busy", |c| {
        availability(c, "alice") == Some(Availability::Busy)
    })
    .await;

    let mut events = alice.events();
    let frozen_at = Instant::now();
    proxy.freeze();
    let reason = next_reconnecting_reason(&mut events).await;
    assert!(reason.contains("no frame from the server"), "{reason}");
    let detected_after = frozen_at.elapsed();
    println!(
        "half-open SSE link detected after {detected_after:?} (interval + grace = {:?})",
        HEARTBEAT + GRACE
    );
    until(&alice, "alice reconnected", is_connected).await;
    until(&bob, "alice busy again", |c| {
        c.presence("alice").is_some_and(|p| {
            p.availability == Availability::Busy && p.message.as_deref() == Some("in session")
        })
    })
    .await;
}

#[tokio::test]
async fn a_mixed_room_of_websocket_and_sse_clients_sees_the_same_truth() {
    let server = start_server().await;
    let mut clients = Vec::new();
    for (user, policy) in [
        ("alice", TransportPolicy::WebSocketOnly),
        ("bob", TransportPolicy::SseOnly),
        ("carol", TransportPolicy::Auto),
        ("dave", TransportPolicy::SseOnly),
    ] {
        let client = presently::Client::builder(server.ws_url())
            .token(token(&server, user))
            .transport(policy)
            .liveness_grace(GRACE)
            .build()
            .unwrap();
        client.connect().await.unwrap();
        client.subscribe(["alice", "bob", "carol", "dave"]).unwrap();
        clients.push((user, client));
    }
    let expected_transport = |user: &str| match user {
        "bob" | "dave" => Transport::Sse,
        _ => Transport::WebSocket,
    };
    for (user, client) in &clients {
        assert_eq!(transport(client), Some(expected_transport(user)), "{user}");
    }
    let statuses = [
        Availability::Busy,
        Availability::Away,
        Availability::Online,
        Availability::Busy,
    ];
    for ((user, client), availability) in clients.iter().zip(statuses) {
        client
            .set_status(Status::new(availability).with_message(format!("{user} here")))
            .unwrap();
    }
    for (_, watcher) in &clients {
        until(watcher, "everyone's status", |c| {
            clients.iter().zip(statuses).all(|((user, _), a)| {
                c.presence(user).is_some_and(|p| {
                    p.availability == a && p.message.as_deref() == Some(&format!("{user} here"))
                })
            })
        })
        .await;
    }
    // The same records everywhere: what one watcher holds, every other holds.
    let reference: Vec<_> = clients[0].1.roster();
    for (_, watcher) in &clients[1..] {
        let roster = watcher.roster();
        assert_eq!(roster.len(), reference.len());
        for (a, b) in reference.iter().zip(&roster) {
            assert!(a.same_content(b), "{a:?} != {b:?}");
        }
    }
}

/// A TCP proxy that refuses WebSocket upgrades while `blocking` is set (closing the connection, as a proxy
/// that does not allow them), and passes everything else.
async fn upgrade_blocking_proxy(target: std::net::SocketAddr, blocking: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let blocking = blocking.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let mut len = 0;
                // Read the request head.
                while !head[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < head.len() {
                    match inbound.read(&mut head[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                }
                let upgrade = String::from_utf8_lossy(&head[..len])
                    .to_ascii_lowercase()
                    .contains("upgrade: websocket");
                if upgrade && blocking.load(Ordering::SeqCst) {
                    let _ = inbound
                        .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                if outbound.write_all(&head[..len]).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    format!("ws://{addr}/v1/ws")
}

#[tokio::test]
async fn when_websocket_works_again_the_session_moves_back_without_watchers_seeing_it() {
    let server = start_server().await;
    let blocking = Arc::new(AtomicBool::new(true));
    let url = upgrade_blocking_proxy(server.local_addr(), blocking.clone()).await;
    let alice = presently::Client::builder(&url)
        .token(token(&server, "alice"))
        .liveness_grace(GRACE)
        .websocket_retry(Duration::from_millis(600), Duration::from_millis(600))
        .reconnect_policy(presently::ReconnectPolicy {
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            stable_after: Duration::from_secs(5),
        })
        .build()
        .unwrap();
    alice.connect().await.unwrap();
    assert_eq!(transport(&alice), Some(Transport::Sse), "fell back");
    alice
        .set_status(Status::new(Availability::Busy).with_message("Mixing"))
        .unwrap();
    let bob = connected_client(&server, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice busy", |c| {
        availability(c, "alice") == Some(Availability::Busy)
    })
    .await;
    let mut seen = bob.events();
    let session = match alice.state() {
        ConnectionState::Connected { session_id, .. } => session_id,
        other => panic!("{other:?}"),
    };

    // Still blocked: the tries fail and alice stays on SSE, on the same session.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    until(&alice, "back on SSE after a failed try", |c| {
        transport(c) == Some(Transport::Sse)
    })
    .await;

    blocking.store(false, Ordering::SeqCst);
    until(&alice, "moved to WebSocket", |c| {
        transport(c) == Some(Transport::WebSocket)
    })
    .await;
    match alice.state() {
        ConnectionState::Connected { session_id, .. } => {
            assert_eq!(session_id, session, "the same session, resumed")
        }
        other => panic!("{other:?}"),
    }
    // Bob saw nothing of it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, seen.next()).await {
        if let presently::Event::PresenceChanged { current, .. } = &event {
            assert_ne!(
                current.availability,
                Availability::Offline,
                "bob saw alice go offline: {event:?}"
            );
        }
    }
    assert_eq!(availability(&bob, "alice"), Some(Availability::Busy));
}
