//! Several server nodes sharing presence through a real Redis: clients on different nodes watch each other
//! through the scenarios of the end-to-end suite, a node dies, Redis restarts or drops its connections.

mod support;

use std::time::Duration;

use futures_util::StreamExt;

use presently::{Activity, Availability, Presence, Privacy, Status, Visibility};
use support::cluster::*;
use support::*;
use tokio::time::Instant;

fn availability(client: &presently::Client, user: &str) -> Option<Availability> {
    client.presence(user).map(|p| p.availability)
}

fn shows(
    client: &presently::Client,
    user: &str,
    availability: Availability,
    message: &str,
) -> bool {
    client
        .presence(user)
        .is_some_and(|p| p.availability == availability && p.message.as_deref() == Some(message))
}

#[tokio::test]
async fn a_watcher_on_another_node_sees_a_user_come_online_change_status_and_go_offline() {
    let redis = Redis::start().await;
    let (node1, node2) = (start_node(&redis).await, start_node(&redis).await);
    assert_ne!(node1.node_id(), node2.node_id());
    let alice = connected_client(&node1, "alice").await;
    alice.subscribe(["bob"]).unwrap();
    until(&alice, "bob's snapshot (never seen)", |c| {
        c.presence("bob")
            .is_some_and(|p| p.same_content(&Presence::unknown("bob")))
    })
    .await;

    let bob = connected_client(&node2, "bob").await;
    until(&alice, "bob online (from node 2)", |c| {
        availability(c, "bob") == Some(Availability::Online)
    })
    .await;
    bob.set_status(
        Status::new(Availability::Busy)
            .with_message("Mixing the EP")
            .with_activity(Activity::new("in_studio", "Ableton Live 12")),
    )
    .unwrap();
    until(&alice, "bob busy in the studio", |c| {
        c.presence("bob").is_some_and(|p| {
            p.availability == Availability::Busy
                && p.message.as_deref() == Some("Mixing the EP")
                && p.activity == Some(Activity::new("in_studio", "Ableton Live 12"))
        })
    })
    .await;
    let busy_version = alice.presence("bob").unwrap().version;
    bob.set_status(Status::new(Availability::Away).with_message("lunch"))
        .unwrap();
    until(&alice, "bob away", |c| {
        shows(c, "bob", Availability::Away, "lunch")
    })
    .await;
    assert!(alice.presence("bob").unwrap().version > busy_version);

    // A query from a third node reads the same presence.
    let node3 = start_node(&redis).await;
    let carol = connected_client(&node3, "carol").await;
    let result = carol.query(&["bob", "dave"]).await.unwrap();
    assert_eq!(result[0].availability, Availability::Away);
    assert_eq!(result[0].message.as_deref(), Some("lunch"));
    assert!(result[1].same_content(&Presence::unknown("dave")));

    bob.close().await;
    until(&alice, "bob offline", |c| {
        availability(c, "bob") == Some(Availability::Offline)
    })
    .await;
    let offline = alice.presence("bob").unwrap();
    assert_eq!(offline.message, None);
    assert!(offline.last_active_at.is_some() && offline.since.is_some());
}

#[tokio::test]
async fn devices_on_different_nodes_add_up_to_one_presence() {
    let redis = Redis::start().await;
    let (node1, node2) = (start_node(&redis).await, start_node(&redis).await);
    let watcher = connected_client(&node1, "watcher").await;
    watcher.subscribe(["alice"]).unwrap();
    let plugin = connected_client(&node1, "alice").await;
    let phone = connected_client(&node2, "alice").await;
    until(&watcher, "alice online", |c| {
        availability(c, "alice") == Some(Availability::Online)
    })
    .await;

    // A choice made on one device is the user's: the other device (on the other node) hears it.
    plugin
        .set_status(Status::new(Availability::Busy).with_message("tracking vocals"))
        .unwrap();
    until(&watcher, "alice busy", |c| {
        shows(c, "alice", Availability::Busy, "tracking vocals")
    })
    .await;
    until(&phone, "the phone hears the plugin's choice", |c| {
        c.manual_status()
            .is_some_and(|s| s.message.as_deref() == Some("tracking vocals"))
    })
    .await;

    // Focus contexts of both devices show together.
    plugin.set_focus(Some("session-a".into())).unwrap();
    phone.set_focus(Some("session-b".into())).unwrap();
    until(&watcher, "both focus contexts", |c| {
        c.presence("alice")
            .is_some_and(|p| p.focus == ["session-a", "session-b"])
    })
    .await;

    // One device leaving keeps the user busy; the last one leaving takes them offline.
    plugin.close().await;
    until(&watcher, "alice still busy with one focus", |c| {
        c.presence("alice")
            .is_some_and(|p| p.availability == Availability::Busy && p.focus == ["session-b"])
    })
    .await;
    phone.close().await;
    until(&watcher, "alice offline", |c| {
        availability(c, "alice") == Some(Availability::Offline)
    })
    .await;
}

#[tokio::test]
async fn an_idle_user_picking_away_on_one_node_is_seen_once_on_another() {
    // The automatic state and the choice travel in one `set_status` and one store write: a watcher on another
    // node sees away with the message, never online in between.
    let redis = Redis::start().await;
    let (node1, node2) = (start_node(&redis).await, start_node(&redis).await);
    let watcher = connected_client(&node1, "watcher").await;
    let mut seen_by_watcher = watcher.events();
    watcher.subscribe(["alice"]).unwrap();
    let alice = idle_prone_client(
        &node2.ws_url(),
        &token(&node2, "alice"),
        Duration::from_millis(300),
    )
    .await;
    until(&watcher, "alice away (idle)", |c| {
        availability(c, "alice") == Some(Availability::Away)
    })
    .await;
    settle(&mut seen_by_watcher, Duration::from_millis(200)).await;

    alice
        .set_status(Status::new(Availability::Away).with_message("Lunch"))
        .unwrap();
    // Going idle again later changes nothing watchers see (away with the message either way).
    let seen = presence_changes_within(&mut seen_by_watcher, Duration::from_millis(800)).await;
    assert_eq!(
        seen,
        [(Availability::Away, Some("Lunch".to_owned()))],
        "what the watcher saw of alice"
    );
}

#[tokio::test]
async fn channels_contacts_and_privacy_hold_across_nodes() {
    let redis = Redis::start().await;
    let (node1, node2) = (start_node(&redis).await, start_node(&redis).await);
    node1
        .set_channel_members("studio", ["alice", "bob"])
        .await
        .expect("members set");
    let bob = connected_client(&node2, "bob").await;
    bob.subscribe_channels(["studio"]).unwrap();
    until(&bob, "the channel's members (set through node 1)", |c| {
        c.channel_members("studio") == Some(vec!["alice".into(), "bob".into()])
    })
    .await;
    let alice = connected_client(&node1, "alice").await;
    until(&bob, "alice online", |c| {
        availability(c, "alice") == Some(Availability::Online)
    })
    .await;

    // A member added through node 2's admin API reaches node 2's subscriber, with presence from node 1.
    let carol = connected_client(&node1, "carol").await;
    carol.set_status(Status::new(Availability::Busy)).unwrap();
    node2
        .set_channel_members("studio", ["alice", "bob", "carol"])
        .await
        .expect("members set");
    until(&bob, "carol joined, busy", |c| {
        c.channel_members("studio").is_some_and(|m| m.len() == 3)
            && availability(c, "carol") == Some(Availability::Busy)
    })
    .await;

    // Privacy set on node 1 hides alice from bob on node 2 until node 2's admin API makes him a contact.
    alice.set_privacy(Privacy {
        visibility: Visibility::Contacts,
        hide_last_seen: false,
    });
    until(&bob, "alice hidden", |c| {
        availability(c, "alice") == Some(Availability::Offline)
    })
    .await;
    node2
        .set_contacts("alice", ["bob"])
        .await
        .expect("contacts set");
    until(&bob, "alice visible to her contact", |c| {
        availability(c, "alice") == Some(Availability::Online)
    })
    .await;
    let _ = carol;
}

#[tokio::test]
async fn a_node_that_dies_takes_its_users_offline_everywhere_within_its_ttl() {
    let redis = Redis::start().await;
    let (node1, node2) = (start_node(&redis).await, start_node(&redis).await);
    let bob = connected_client(&node2, "bob").await;
    bob.subscribe(["alice", "carol"]).unwrap();
    let alice = connected_client(&node1, "alice").await;
    // Carol has a device on each node: she must stay online.
    let carol_1 = connected_client(&node1, "carol").await;
    let carol_2 = connected_client(&node2, "carol").await;
    until(&bob, "alice and carol online", |c| {
        availability(c, "alice") == Some(Availability::Online)
            && availability(c, "carol") == Some(Availability::Online)
    })
    .await;

    let died = Instant::now();
    node1.kill().await;
    until(&bob, "alice offline after node 1 died", |c| {
        availability(c, "alice") == Some(Availability::Offline)
    })
    .await;
    let took = died.elapsed();
    println!(
        "a dead node's user went offline on the other node after {} ms (node TTL {} ms)",
        took.as_millis(),
        NODE_TTL.as_millis()
    );
    assert_eq!(
        availability(&bob, "carol"),
        Some(Availability::Online),
        "carol still has a session on node 2"
    );
    // Nobody is left behind as a ghost: once the node is reaped, nothing of it stays in Redis.
    let deadline = Instant::now() + PATIENCE;
    while redis.cli(&["HKEYS", "presently:nodes"]).lines().count() != 1 {
        assert!(Instant::now() < deadline, "the dead node stayed registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fields = redis.cli(&["HKEYS", "presently:user:alice"]);
    assert!(
        !fields.lines().any(|f| f.starts_with("node:")),
        "no contribution of the dead node is left: {fields}"
    );
    let _ = (alice, carol_1, carol_2);
}

#[tokio::test]
async fn clients_behind_a_load_balancer_survive_a_node_restart_without_losing_anything() {
    let redis = Redis::start().await;
    let node1 = start_node_at(&redis, reserved_addr()).await;
    let node2 = start_node(&redis).await;
    let node1_addr = node1.local_addr();
    let balancer = LoadBalancer::start(vec![node1_addr, node2.local_addr()]).await;
    let connect = |user: &'static str| {
        let client = client_for(&balancer.ws_url(), &token(&node2, user), user);
        async move {
            client
                .connect()
                .await
                .expect("connects through the balancer");
            client
        }
    };
    let alice = connect("alice").await;
    let bob = connect("bob").await;
    let carol = connect("carol").await;
    alice.subscribe(["bob", "carol"]).unwrap();
    bob.subscribe(["alice"]).unwrap();
    bob.set_status(Status::new(Availability::Busy).with_message("mixing"))
        .unwrap();
    carol
        .set_status(Status::new(Availability::Away).with_message("walk"))
        .unwrap();
    until(&alice, "bob busy and carol away", |c| {
        shows(c, "bob", Availability::Busy, "mixing")
            && shows(c, "carol", Availability::Away, "walk")
    })
    .await;

    // Node 1 stops (draining: goaway); its clients come back through the balancer on node 2.
    node1.shutdown().await;
    for client in [&alice, &bob, &carol] {
        until(client, "connected again", is_connected).await;
    }
    let node1 = start_node_at(&redis, node1_addr).await;
    until(&alice, "bob busy and carol away again", |c| {
        shows(c, "bob", Availability::Busy, "mixing")
            && shows(c, "carol", Availability::Away, "walk")
    })
    .await;
    until(&bob, "bob still watches alice", |c| {
        availability(c, "alice") == Some(Availability::Online)
    })
    .await;
    bob.set_status(Status::new(Availability::Online).with_message("back"))
        .unwrap();
    until(&alice, "bob's next change", |c| {
        shows(c, "bob", Availability::Online, "back")
    })
    .await;
    let _ = node1;
}

#[tokio::test]
async fn a_redis_restart_loses_no_status_subscription_or_channel() {
    let mut redis = Redis::start().await;
    let (node1, node2) = (start_node(&redis).await, start_node(&redis).await);
    node1
        .set_channel_members("studio", ["alice", "bob"])
        .await
        .expect("members set");
    let alice = connected_client(&node1, "alice").await;
    alice
        .set_status(Status::new(Availability::Busy).with_message("mixing"))
        .unwrap();
    let bob = connected_client(&node2, "bob").await;
    bob.subscribe_channels(["studio"]).unwrap();
    until(&bob, "alice busy", |c| {
        shows(c, "alice", Availability::Busy, "mixing")
    })
    .await;

    // Redis dies and comes back empty.
    redis.restart().await;
    // Nodes write back what they own; a node started afterwards reads it from Redis.
    let node3 = start_node(&redis).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let carol = connected_client(&node3, "carol").await;
        let result = carol.query(&["alice"]).await.unwrap();
        carol.close().await;
        if result[0].availability == Availability::Busy
            && result[0].message.as_deref() == Some("mixing")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice's status was not rebuilt: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        shows(&bob, "alice", Availability::Busy, "mixing"),
        "the watcher never lost alice's status"
    );
    // The channel was written back too, and changes flow again.
    let deadline = Instant::now() + PATIENCE;
    while redis
        .cli(&["SMEMBERS", "presently:channel:studio:members"])
        .lines()
        .count()
        != 2
    {
        assert!(
            Instant::now() < deadline,
            "the channel was not written back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice
        .set_status(Status::new(Availability::Away).with_message("after the restart"))
        .unwrap();
    until(&bob, "alice's next change", |c| {
        shows(c, "alice", Availability::Away, "after the restart")
    })
    .await;
    alice.close().await;
    until(&bob, "alice offline", |c| {
        availability(c, "alice") == Some(Availability::Offline)
    })
    .await;
}

#[tokio::test]
async fn changes_made_while_redis_is_away_arrive_when_it_is_back() {
    let mut redis = Redis::start().await;
    let (node1, node2) = (start_node(&redis).await, start_node(&redis).await);
    let alice = connected_client(&node1, "alice").await;
    let bob = connected_client(&node2, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice online", |c| {
        availability(c, "alice") == Some(Availability::Online)
    })
    .await;

    // The nodes' connections to Redis drop (a brief outage); the data stays.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    alice
        .set_status(Status::new(Availability::Busy).with_message("during the outage"))
        .unwrap();
    until(&bob, "the change made during the outage", |c| {
        shows(c, "alice", Availability::Busy, "during the outage")
    })
    .await;

    // Redis down for a while: the change waits and is written when it is back (empty).
    redis.kill();
    alice
        .set_status(Status::new(Availability::Away).with_message("while redis was down"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.start_again().await;
    until(&bob, "the change made while redis was down", |c| {
        shows(c, "alice", Availability::Away, "while redis was down")
    })
    .await;
    assert!(is_connected(&alice) && is_connected(&bob));
}

#[tokio::test]
async fn draining_a_node_moves_its_clients_without_an_offline_blip() {
    let redis = Redis::start().await;
    let node1 = start_node(&redis).await;
    let node2 = start_node(&redis).await;
    let balancer = LoadBalancer::start(vec![node1.local_addr(), node2.local_addr()]).await;
    // The balancer's first connection goes to node 1.
    let alice = client_for(&balancer.ws_url(), &token(&node1, "alice"), "alice");
    alice
        .connect()
        .await
        .expect("connects through the balancer");
    alice
        .set_status(Status::new(Availability::Busy).with_message("mixing"))
        .unwrap();
    let bob = connected_client(&node2, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice busy", |c| {
        shows(c, "alice", Availability::Busy, "mixing")
    })
    .await;
    let mut seen = bob.events();
    let first_session = alice.session().map(|s| s.session_id);

    node1.shutdown().await;
    until(&alice, "alice on node 2", |c| {
        is_connected(c) && c.session().map(|s| s.session_id) != first_session
    })
    .await;
    alice
        .set_status(Status::new(Availability::Away).with_message("moved"))
        .unwrap();
    until(&bob, "alice's change from node 2", |c| {
        shows(c, "alice", Availability::Away, "moved")
    })
    .await;
    // Past the drained node's TTL: its leftovers are reaped, alice stays.
    tokio::time::sleep(NODE_TTL * 2).await;
    assert!(shows(&bob, "alice", Availability::Away, "moved"));
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(10), seen.next()).await {
        if let presently::Event::PresenceChanged { current, .. } = event {
            assert_ne!(
                current.availability,
                Availability::Offline,
                "watchers saw alice offline while she moved: {current:?}"
            );
        }
    }
}

#[tokio::test]
async fn an_sse_client_on_one_node_and_websocket_clients_on_others_see_the_same_truth() {
    use presently::TransportPolicy;
    let redis = Redis::start().await;
    let nodes = [
        start_node(&redis).await,
        start_node(&redis).await,
        start_node(&redis).await,
    ];
    let mut clients = Vec::new();
    for (i, (user, policy)) in [
        ("alice", TransportPolicy::SseOnly),
        ("bob", TransportPolicy::WebSocketOnly),
        ("carol", TransportPolicy::Auto),
    ]
    .into_iter()
    .enumerate()
    {
        let client = presently::Client::builder(nodes[i].ws_url())
            .token(token(&nodes[i], user))
            .transport(policy)
            .liveness_grace(GRACE)
            .build()
            .unwrap();
        client.connect().await.unwrap();
        client.subscribe(["alice", "bob", "carol"]).unwrap();
        clients.push((user, client));
    }
    let statuses = [Availability::Busy, Availability::Away, Availability::Online];
    for ((user, client), availability) in clients.iter().zip(statuses) {
        client
            .set_status(Status::new(availability).with_message(format!("{user} here")))
            .unwrap();
    }
    for (_, watcher) in &clients {
        until(watcher, "everyone's status from three nodes", |c| {
            clients
                .iter()
                .zip(statuses)
                .all(|((user, _), availability)| {
                    shows(c, user, availability, &format!("{user} here"))
                })
        })
        .await;
    }
}

#[tokio::test]
async fn a_node_cut_off_from_redis_is_taken_for_dead_then_writes_its_sessions_again() {
    let redis = Redis::start().await;
    // Node 1 reaches Redis through a proxy that can cut it off (a partition).
    let link = support::fault_proxy::FaultProxy::start(redis.addr()).await;
    let node1 = start_node_with_url(&format!("redis://{}", link.addr)).await;
    let node2 = start_node(&redis).await;
    let alice = connected_client(&node1, "alice").await;
    alice
        .set_status(Status::new(Availability::Busy).with_message("still here"))
        .unwrap();
    let bob = connected_client(&node2, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice busy", |c| {
        shows(c, "alice", Availability::Busy, "still here")
    })
    .await;

    // Cut off, node 1 stops refreshing its liveness key: node 2 takes it for dead and ends its sessions.
    link.update(|f| f.black_hole = true);
    until(&bob, "alice offline while node 1 is cut off", |c| {
        availability(c, "alice") == Some(Availability::Offline)
    })
    .await;
    // The link comes back (its connections were lost): node 1 reconnects and writes its sessions again, so alice is
    // back as she was, though her client never noticed anything.
    link.heal();
    link.reset_connections();
    until(&bob, "alice busy again", |c| {
        shows(c, "alice", Availability::Busy, "still here")
    })
    .await;
    assert!(is_connected(&alice));
    let id = node1.node_id().expect("a node id");
    let registered = redis.cli(&["HKEYS", "presently:nodes"]);
    assert!(registered.lines().any(|n| n.trim() == id), "{registered}");
}

#[tokio::test]
async fn a_node_whose_liveness_key_vanished_while_its_link_stayed_up_writes_its_sessions_again() {
    // A node that stalls (a long pause, a frozen VM) keeps its Redis connection but misses its heartbeats: the
    // others reap it, and when it runs again its next heartbeat finds its liveness key gone. Emulated here by
    // deleting node 1's key faster than node 1 refreshes it, while both nodes and their links stay up.
    let redis = Redis::start().await;
    let (node1, node2) = (start_node(&redis).await, start_node(&redis).await);
    let alice = connected_client(&node1, "alice").await;
    alice
        .set_status(Status::new(Availability::Busy).with_message("still here"))
        .unwrap();
    let bob = connected_client(&node2, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice busy", |c| {
        shows(c, "alice", Availability::Busy, "still here")
    })
    .await;

    let id = node1.node_id().expect("a node id");
    let key = format!("presently:node:{id}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deleting = {
        let (stop, port) = (stop.clone(), redis.addr().port());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "DEL", &key])
                    .output();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    until(&bob, "alice offline once node 2 reaped node 1", |c| {
        availability(c, "alice") == Some(Availability::Offline)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    deleting.join().expect("the deleting thread ends");

    // Node 1's next heartbeat finds its key gone and writes its sessions again: alice is back as she was, though
    // her client never noticed anything, and she stays so.
    until(&bob, "alice busy again", |c| {
        shows(c, "alice", Availability::Busy, "still here")
    })
    .await;
    let steady_until = Instant::now() + 3 * NODE_TTL;
    while Instant::now() < steady_until {
        assert!(
            shows(&bob, "alice", Availability::Busy, "still here"),
            "alice stays busy once node 1 is back: {:?}",
            bob.presence("alice")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(is_connected(&alice));
    let registered = redis.cli(&["HKEYS", "presently:nodes"]);
    assert!(registered.lines().any(|n| n.trim() == id), "{registered}");
    let owned = redis.cli(&["SMEMBERS", &format!("presently:node:{id}:users")]);
    assert!(owned.lines().any(|u| u.trim() == "alice"), "{owned}");
}
