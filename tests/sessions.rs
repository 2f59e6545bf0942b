//! Sessions end to end: resume without flapping, several devices of one user, tokens that refresh themselves.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use presently::{Availability, Client, ClientInfo, ConnectionState, Event, Status};
use support::*;

fn availability(client: &Client, user: &str) -> Option<Availability> {
    client.presence(user).map(|p| p.availability)
}

#[tokio::test]
async fn a_short_drop_is_resumed_and_watchers_see_no_blip() {
    let mut config = server_config("127.0.0.1:0".parse().unwrap());
    config.resume_grace = Duration::from_secs(10);
    let server = presently_server::start(config).await.unwrap();
    let proxy = FreezableProxy::start(server.local_addr()).await;
    let alice = client_for(
        &format!("ws://{}/v1/ws", proxy.addr),
        &token(&server, "alice"),
        "alice",
    );
    alice.connect().await.unwrap();
    alice
        .set_status(Status::new(Availability::Busy).with_message("in a tunnel soon"))
        .unwrap();
    alice.subscribe(["bob"]).unwrap();
    let bob = connected_client(&server, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice busy", |c| {
        availability(c, "alice") == Some(Availability::Busy)
    })
    .await;
    let first_session = alice.session().unwrap().session_id;

    // Everything bob sees about alice from now on.
    let mut bob_events = bob.events();
    let seen = tokio::spawn(async move {
        let mut changes = Vec::new();
        while let Some(event) = bob_events.next().await {
            if let Event::PresenceChanged {
                user_id, current, ..
            } = event
                && user_id == "alice"
            {
                changes.push(current.availability);
            }
        }
        changes
    });
    // The link goes half-open; alice notices, reconnects through the proxy and resumes.
    proxy.freeze();
    until(&alice, "alice noticing the dead link", |c| !is_connected(c)).await;
    // Meanwhile bob changes: alice must learn it from the resume snapshot.
    bob.set_status(Status::new(Availability::Away)).unwrap();
    until(&alice, "alice back", is_connected).await;
    let session = alice.session().unwrap();
    assert!(session.resumed, "resumed");
    assert_eq!(session.session_id, first_session, "the same session");
    until(&alice, "bob's change while alice was away", |c| {
        availability(c, "bob") == Some(Availability::Away)
    })
    .await;
    assert_eq!(server.stats().sessions_resumed, 1);
    drop(bob);
    let changes = seen.await.unwrap();
    assert!(changes.is_empty(), "bob saw alice flap: {changes:?}");
}

#[tokio::test]
async fn three_devices_of_one_user_show_one_presence() {
    let server = start_server().await;
    let watcher = connected_client(&server, "watcher").await;
    watcher.subscribe(["bob"]).unwrap();
    let device = |name: &str, idle: Duration| {
        Client::builder(server.ws_url())
            .token(token(&server, "bob"))
            .client_info(ClientInfo::new(name, "1", "test"))
            .idle_timeout(Some(idle))
            .build()
            .unwrap()
    };
    let plugin = device("plugin", Duration::from_millis(300));
    let phone = device("phone", Duration::from_secs(300));
    let browser = device("browser", Duration::from_secs(300));
    for d in [&plugin, &phone, &browser] {
        d.connect().await.unwrap();
    }
    until(&watcher, "bob online", |c| {
        availability(c, "bob") == Some(Availability::Online)
    })
    .await;
    // The plugin goes idle; the phone and browser are active: bob stays online.
    until(&plugin, "the plugin idle", |c| {
        c.effective_status().availability == Availability::Away
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(availability(&watcher, "bob"), Some(Availability::Online));
    // Busy chosen on the phone shows everywhere, and every device adopts the choice.
    phone
        .set_status(Status::new(Availability::Busy).with_message("Meeting"))
        .unwrap();
    until(&watcher, "bob busy", |c| {
        availability(c, "bob") == Some(Availability::Busy)
    })
    .await;
    until(&browser, "the browser adopting the choice", |c| {
        c.manual_status().map(|s| s.availability) == Some(Availability::Busy)
    })
    .await;
    until(&plugin, "the plugin adopting the choice", |c| {
        c.effective_status().availability == Availability::Busy
    })
    .await;
    // Closing two devices leaves bob present through the third.
    plugin.close().await;
    phone.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(availability(&watcher, "bob"), Some(Availability::Busy));
    browser.close().await;
    until(&watcher, "bob offline", |c| {
        availability(c, "bob") == Some(Availability::Offline)
    })
    .await;
}

#[tokio::test]
async fn a_token_provider_is_asked_on_every_connect_and_expired_tokens_refresh() {
    let server = start_server_at(reserved_addr()).await;
    let addr = server.local_addr();
    let authority = presently_server::TokenAuthority::new(SECRET).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let provider = {
        let (calls, authority) = (calls.clone(), authority.clone());
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let authority = authority.clone();
            async move {
                // The first token handed out has already expired: the client must come back for a new one.
                let expires = if n == 0 {
                    SystemTime::now() - Duration::from_secs(60)
                } else {
                    SystemTime::now() + Duration::from_secs(3_600)
                };
                authority
                    .mint_until("alice", expires)
                    .map_err(|e| e.to_string())
            }
        }
    };
    let alice = Client::builder(server.ws_url())
        .token_provider(provider)
        .liveness_grace(GRACE)
        .build()
        .unwrap();
    alice.connect().await.unwrap();
    assert!(is_connected(&alice));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "expired, then refreshed once"
    );
    // Every reconnect asks again.
    server.kill().await;
    until(&alice, "noticing the restart", |c| !is_connected(c)).await;
    let _server = start_server_at(addr).await;
    until(&alice, "back with a fresh token", is_connected).await;
    assert!(calls.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn a_provider_that_keeps_handing_out_expired_tokens_fails_without_a_storm() {
    let server = start_server().await;
    let authority = presently_server::TokenAuthority::new(SECRET).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let provider = {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let token = authority.mint_until("alice", SystemTime::now() - Duration::from_secs(60));
            async move { token.map_err(|e| e.to_string()) }
        }
    };
    let alice = Client::builder(server.ws_url())
        .token_provider(provider)
        .build()
        .unwrap();
    match alice.connect().await {
        Err(presently::Error::Rejected { code, .. }) => {
            assert_eq!(code, presently::ErrorCode::TokenExpired)
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh, then stop");
    assert!(matches!(alice.state(), ConnectionState::Failed { .. }));
}

#[tokio::test]
async fn a_channel_shows_its_members_as_they_come_and_go() {
    let server = start_server().await;
    server
        .set_channel_members("studio-a", ["alice", "bob"])
        .await
        .expect("channel members set");
    let alice = connected_client(&server, "alice").await;
    alice.subscribe_channels(["studio-a"]).unwrap();
    until(&alice, "the channel's members", |c| {
        c.channel_members("studio-a") == Some(vec!["alice".into(), "bob".into()])
    })
    .await;
    let bob = connected_client(&server, "bob").await;
    until(&alice, "bob online", |c| {
        availability(c, "bob") == Some(Availability::Online)
    })
    .await;
    let _ = bob;
    server
        .set_channel_members("studio-a", ["alice", "carol"])
        .await
        .expect("channel members set");
    until(&alice, "the new membership", |c| {
        c.channel_members("studio-a") == Some(vec!["alice".into(), "carol".into()])
    })
    .await;
    assert_eq!(
        availability(&alice, "bob"),
        None,
        "bob left the channel and is no longer watched"
    );
    assert_eq!(availability(&alice, "carol"), Some(Availability::Offline));
}
