//! Fault injection: clients reach the reference server through a TCP fault proxy (tests/support/fault_proxy.rs)
//! that delays, drops, resets and black-holes their connections, stops reading on either side, or reads slowly.
//! After every scenario nothing is lost: each user's record on the server holds the status the user last set,
//! and each watcher's roster equals the server's truth, record for record (content; versions are stamps).

mod support;

use std::time::Duration;

use presently::{Availability, Client, Presence, Status};
use presently_server::{RunningServer, ServerConfig};
use support::fault_proxy::FaultProxy;
use support::*;
use tokio::time::Instant;

/// The test server's configuration, with a short resume grace so that sessions abandoned by a fault end within
/// the test.
fn config() -> ServerConfig {
    let mut config = server_config("127.0.0.1:0".parse().unwrap());
    config.resume_grace = Duration::from_secs(2);
    config
}

async fn server_with(config: ServerConfig) -> RunningServer {
    presently_server::start(config)
        .await
        .expect("server starts")
}

/// A connected client for `user` through `proxy`.
async fn through(proxy: &FaultProxy, server: &RunningServer, user: &str) -> Client {
    let client = client_for(&proxy.ws_url(), &token(server, user), user);
    client.connect().await.expect("connects through the proxy");
    client
}

/// What the server holds for `users`, read by a client of its own (queries of at most 1,000 users).
async fn truth(server: &RunningServer, users: &[String]) -> Vec<Presence> {
    let auditor = connected_client(server, "auditor").await;
    let mut records = Vec::with_capacity(users.len());
    for chunk in users.chunks(1_000) {
        records.extend(auditor.query(chunk).await.expect("query answered"));
    }
    auditor.close().await;
    records
}

/// Waits until the server has no session waiting for a resume and exactly `sessions` sessions: every client
/// is back on one session, and what faults left behind has ended.
async fn settled(server: &RunningServer, sessions: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = server.stats();
        if stats.sessions_detached == 0 && stats.sessions_active == sessions {
            return;
        }
        assert!(Instant::now() < deadline, "server never settled: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `watcher` holds the same record as `truth` (all but the version stamp) for every user in it, or fails listing what differs.
async fn agrees(watcher: &Client, name: &str, truth: &[Presence]) {
    let mut events = watcher.events();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let differences: Vec<(Option<Presence>, &Presence)> = truth
            .iter()
            .filter_map(|t| {
                let held = watcher.presence(&t.user_id);
                // Versions are stamps of each delivery (a query's answer gets a fresh one): compare content.
                (!held.as_ref().is_some_and(|h| h.same_content(t))).then_some((held, t))
            })
            .collect();
        if differences.is_empty() {
            return;
        }
        if tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut events))
            .await
            .is_err()
        {
            panic!(
                "{name}'s roster differs from the server's for {} users; first (held, truth): {:#?}",
                differences.len(),
                differences[0]
            );
        }
    }
}

/// Connected clients (straight to the server) for `users`, each busy with `message`.
async fn busy_clients<'a>(
    server: &RunningServer,
    users: impl Iterator<Item = &'a String>,
    message: &str,
) -> Vec<Client> {
    let mut clients = Vec::new();
    for user in users {
        let client = connected_client(server, user).await;
        client
            .set_status(Status::new(Availability::Busy).with_message(message))
            .unwrap();
        clients.push(client);
    }
    clients
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_links_lose_nothing() {
    let server = server_with(config()).await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    let users = names("flap", 5);
    let mut clients = Vec::new();
    for user in &users {
        let client = through(&proxy, &server, user).await;
        client
            .subscribe(users.iter().filter(|u| *u != user).cloned())
            .unwrap();
        clients.push(client);
    }
    let mut last = Vec::new();
    for round in 0..12 {
        last.clear();
        for (i, client) in clients.iter().enumerate() {
            let availability =
                [Availability::Online, Availability::Busy, Availability::Away][(round + i) % 3];
            let status = Status::new(availability).with_message(format!("round {round}"));
            client.set_status(status.clone()).unwrap();
            last.push(status);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        match round % 4 {
            0 => proxy.reset_connections(),
            1 => proxy.drop_connections(),
            2 => {
                // Longer than interval + grace: the clients must find the dead link themselves.
                proxy.update(|f| f.black_hole = true);
                tokio::time::sleep(Duration::from_millis(700)).await;
                proxy.heal();
            }
            _ => {
                proxy.update(|f| f.delay = Duration::from_millis(120));
                tokio::time::sleep(Duration::from_millis(300)).await;
                proxy.heal();
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    proxy.heal();
    for client in &clients {
        until(client, "reconnected after the flapping", is_connected).await;
    }
    settled(&server, users.len() as u64).await;
    let truth = truth(&server, &users).await;
    for (record, status) in truth.iter().zip(&last) {
        assert_eq!(
            (record.availability, record.message.as_deref()),
            (status.availability, status.message.as_deref()),
            "the server lost {}'s last status",
            record.user_id
        );
    }
    for (client, user) in clients.iter().zip(&users) {
        let others: Vec<Presence> = truth
            .iter()
            .filter(|t| &t.user_id != user)
            .cloned()
            .collect();
        agrees(client, user, &others).await;
    }
    println!(
        "flapping: {} connections through the proxy for {} clients, {:?}",
        proxy.connections(),
        users.len(),
        server.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_loses_nothing() {
    let server = server_with(config()).await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    let alice = through(&proxy, &server, "alice").await;
    let bob = connected_client(&server, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice online", |c| {
        c.presence("alice")
            .is_some_and(|p| p.availability == Availability::Online)
    })
    .await;

    // The server stops reading alice's bytes for longer than its session TTL; alice changes her status then.
    proxy.update(|f| f.server_stops_reading = true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    alice
        .set_status(Status::new(Availability::Busy).with_message("during the stall"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    proxy.heal();

    until(&alice, "alice connected again", is_connected).await;
    until(&bob, "alice's change from the stall", |c| {
        c.presence("alice")
            .is_some_and(|p| p.message.as_deref() == Some("during the stall"))
    })
    .await;
    settled(&server, 2).await;
    let truth = truth(&server, &["alice".to_owned()]).await;
    assert_eq!(truth[0].availability, Availability::Busy);
    agrees(&bob, "bob", &truth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_not_buffered_and_catches_up() {
    client_stops_reading(0).await;
}

/// The same on a server whose I/O threads write changes to watchers' sockets themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_io_threads_a_client_that_stops_reading_is_cut_off_not_buffered_and_catches_up() {
    client_stops_reading(2).await;
}

async fn client_stops_reading(io_threads: usize) {
    let mut config = config();
    config.io_threads = io_threads;
    config.outbound_queue = 32;
    config.status_burst = 1_000_000;
    config.status_per_second = 1_000_000.0;
    let server = server_with(config).await;
    let users = names("busy", 20);
    let mut changers = Vec::new();
    for user in &users {
        changers.push(connected_client(&server, user).await);
    }
    // Two readers stop reading. Bob's socket stops being read at the TCP level (the proxy holds it): he cannot
    // answer the server's WebSocket pings either, so the session TTL ends him. Stuck is an app whose reader is
    // wedged while its writer keeps sending heartbeats, which keeps its session alive: only the bound on its
    // outbound queue can end it.
    let proxy = FaultProxy::start(server.local_addr()).await;
    let bob = through(&proxy, &server, "bob").await;
    bob.subscribe(users.clone()).unwrap();
    until(&bob, "every changer online", |c| {
        users.iter().all(|u| {
            c.presence(u)
                .is_some_and(|p| p.availability == Availability::Online)
        })
    })
    .await;
    let stuck = stuck_client(&server, "stuck", &users).await;
    proxy.update(|f| f.client_stops_reading = true);

    let padding = "x".repeat(180);
    let mut changes = 0;
    while server.stats().slow_consumers == 0 {
        assert!(
            changes < 100_000,
            "the server kept buffering for the stuck client"
        );
        for (i, changer) in changers.iter().enumerate() {
            let availability = if (changes + i) % 2 == 0 {
                Availability::Busy
            } else {
                Availability::Away
            };
            changer
                .set_status(
                    Status::new(availability).with_message(format!("{changes} {}", &padding)),
                )
                .unwrap();
        }
        changes += changers.len();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "the stuck client was cut off as a slow consumer after {changes} changes (queue: 32 frames)"
    );
    stuck.abort();
    for (i, changer) in changers.iter().enumerate() {
        changer
            .set_status(Status::new(Availability::Online).with_message(format!("final {i}")))
            .unwrap();
    }
    proxy.heal();
    until(
        &bob,
        "bob connected after his link stopped being read",
        is_connected,
    )
    .await;
    settled(&server, users.len() as u64 + 1).await;
    let truth = truth(&server, &users).await;
    for (i, record) in truth.iter().enumerate() {
        assert_eq!(
            record.message.as_deref(),
            Some(format!("final {i}").as_str())
        );
    }
    agrees(&bob, "bob", &truth).await;
}

/// A raw WebSocket client that says hello, watches `users`, then never reads again while it keeps sending a
/// `ping` every 100 ms (a wedged reader thread beside a healthy writer).
async fn stuck_client(
    server: &RunningServer,
    user: &str,
    users: &[String],
) -> tokio::task::JoinHandle<()> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "presently.v1".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let (mut sink, _never_read) = futures_util::StreamExt::split(ws);
    let hello = serde_json::json!({"type": "hello", "protocol": 1, "token": token(server, user),
        "client": {"name": "stuck", "version": "1", "platform": "linux"}});
    sink.send(Message::text(hello.to_string())).await.unwrap();
    let subscribe = serde_json::json!({"type": "subscribe", "users": users});
    sink.send(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _never_read = _never_read;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if sink
                .send(Message::text(r#"{"type":"ping"}"#))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscriptions_over_a_slow_link() {
    let server = server_with(config()).await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    proxy.update(|f| f.delay = Duration::from_millis(20));
    let users = names("sub", 10_000);
    let watcher = through(&proxy, &server, "watcher").await;
    watcher.subscribe(users.clone()).unwrap();
    let online = busy_clients(&server, users.iter().step_by(1_000), "in studio").await;
    until(&watcher, "10,000 records", |c| c.roster().len() == 10_000).await;
    settled(&server, online.len() as u64 + 1).await;
    agrees(&watcher, "watcher", &truth(&server, &users).await).await;

    // Changes still flow to a watcher of 10,000 users.
    online[3]
        .set_status(Status::new(Availability::Away).with_message("back soon"))
        .unwrap();
    until(&watcher, "sub3000 away", |c| {
        c.presence("sub3000")
            .is_some_and(|p| p.message.as_deref() == Some("back soon"))
    })
    .await;
    agrees(&watcher, "watcher", &truth(&server, &users).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_channel_roster_arrives_whole_through_a_slow_reader() {
    let server = server_with(config()).await;
    let members = names("member", 10_000);
    server
        .set_channel_members(
            "hall",
            members.iter().cloned().chain(["watcher".to_owned()]),
        )
        .await
        .expect("channel members set");
    let online = busy_clients(&server, members.iter().step_by(500), "on stage").await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    // About a megabyte of snapshot, read at 1 MB/s.
    proxy.update(|f| f.client_read_rate = Some(1_000_000));
    let watcher = through(&proxy, &server, "watcher").await;
    watcher.subscribe_channels(["hall"]).unwrap();
    until(&watcher, "the whole channel", |c| {
        c.roster().len() >= members.len()
    })
    .await;
    settled(&server, online.len() as u64 + 1).await;
    let truth = truth(&server, &members).await;
    agrees(&watcher, "watcher", &truth).await;
    println!("{:?}", server.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_turned_away_are_retried_until_they_are_let_through() {
    let server = server_with(config()).await;
    let proxy = FaultProxy::start(server.local_addr()).await;
    let alice = through(&proxy, &server, "alice").await;
    alice
        .set_status(Status::new(Availability::Busy).with_message("kept"))
        .unwrap();
    proxy.update(|f| f.refuse = true);
    proxy.reset_connections();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!is_connected(&alice));
    proxy.heal();
    until(
        &alice,
        "alice back once connections are let through",
        is_connected,
    )
    .await;
    settled(&server, 1).await;
    let truth = truth(&server, &["alice".to_owned()]).await;
    assert_eq!(truth[0].message.as_deref(), Some("kept"));
}
