//! `Client::set_event_listener`: events handed to a function on the client's driver, beside the streams of
//! `Client::events`.

mod support;

use futures_util::StreamExt;
use presently::{Availability, ConnectionState, Event, Status};
use support::*;
use tokio::sync::mpsc;

/// What the tests compare of an event: its kind and, for a presence change, who and what.
fn summary(event: &Event) -> String {
    match event {
        Event::StateChanged { current, .. } => format!("state {current:?}"),
        Event::PresenceChanged { current, .. } => format!(
            "{} {} {:?}",
            current.user_id, current.availability, current.message
        ),
        other => format!("{other:?}"),
    }
}

/// A listener that forwards a summary of each event to the returned receiver.
fn forwarding_listener(client: &presently::Client) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    client.set_event_listener(move |event| {
        let _ = tx.send(summary(event));
    });
    rx
}

/// Receives summaries until one contains `wanted`, returning all of them; fails after `PATIENCE`.
async fn until_heard(rx: &mut mpsc::UnboundedReceiver<String>, wanted: &str) -> Vec<String> {
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(summary)) => {
                let done = summary.contains(wanted);
                heard.push(summary);
                if done {
                    return heard;
                }
            }
            Ok(None) => panic!("the listener was dropped; heard {heard:?}"),
            Err(_) => panic!("no event with {wanted:?} within {PATIENCE:?}; heard {heard:?}"),
        }
    }
}

#[tokio::test]
async fn a_listener_hears_the_same_events_as_a_stream_in_the_same_order() {
    let server = start_server().await;
    let bob = client_for(&server.ws_url(), &token(&server, "bob"), "bob");
    let mut stream = bob.events();
    let mut listened = forwarding_listener(&bob);
    bob.connect().await.expect("connects");
    bob.subscribe(["alice"]).unwrap();
    let alice = connected_client(&server, "alice").await;
    for (availability, message) in [
        (Availability::Busy, "mixing"),
        (Availability::Away, "lunch"),
        (Availability::Online, "back"),
    ] {
        alice
            .set_status(Status::new(availability).with_message(message))
            .unwrap();
    }
    let heard = until_heard(&mut listened, "\"back\"").await;
    let mut streamed = Vec::new();
    while streamed.len() < heard.len() {
        let event = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("the stream keeps up")
            .expect("the stream stays open");
        streamed.push(summary(&event));
    }
    assert_eq!(heard, streamed, "the listener and the stream disagree");
    assert!(heard[0].starts_with("state Connecting"), "{heard:?}");
    assert!(
        heard.iter().any(|s| s.starts_with("state Connected")),
        "{heard:?}"
    );
    let changes: Vec<_> = heard.iter().filter(|s| s.starts_with("alice")).collect();
    assert_eq!(
        changes.last().map(|s| s.as_str()),
        Some("alice online Some(\"back\")"),
        "{heard:?}"
    );
    assert!(
        changes.iter().any(|s| s.contains("busy")) && changes.iter().any(|s| s.contains("away")),
        "every change in order: {heard:?}"
    );
}

#[tokio::test]
async fn a_listener_may_call_its_client_and_is_let_go_when_removed() {
    let server = start_server().await;
    let bob = client_for(&server.ws_url(), &token(&server, "bob"), "bob");
    // On connecting, the listener itself subscribes to Alice and sets Bob's status: the driver calls it with
    // the client's lock released.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = bob.clone();
    bob.set_event_listener(move |event| {
        if let Event::StateChanged {
            current: ConnectionState::Connected { .. },
            ..
        } = event
        {
            handle
                .subscribe(["alice"])
                .expect("subscribes from the listener");
            handle
                .set_status(Status::new(Availability::Busy).with_message("from the listener"))
                .expect("sets a status from the listener");
        }
        let _ = tx.send(summary(event));
    });
    bob.connect().await.expect("connects");
    let alice = connected_client(&server, "alice").await;
    alice.subscribe(["bob"]).unwrap();
    until(&alice, "bob busy, from his listener", |c| {
        c.presence("bob")
            .is_some_and(|p| p.message.as_deref() == Some("from the listener"))
    })
    .await;
    alice
        .set_status(Status::new(Availability::Away).with_message("tea"))
        .unwrap();
    until_heard(&mut rx, "alice away Some(\"tea\")").await;

    // Removed, the listener is dropped (with the client clone it held) and hears nothing more.
    bob.remove_event_listener();
    alice
        .set_status(Status::new(Availability::Online).with_message("nudge"))
        .unwrap();
    until(&bob, "alice's next change reached bob", |c| {
        c.presence("alice")
            .is_some_and(|p| p.message.as_deref() == Some("nudge"))
    })
    .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(summary)) => assert!(
                !summary.contains("nudge"),
                "a removed listener heard {summary}"
            ),
            Ok(None) => break,
            Err(_) => panic!("the removed listener was never dropped"),
        }
    }
}

#[tokio::test]
async fn a_listener_that_panics_keeps_being_called_and_the_connection_stays_up() {
    let server = start_server().await;
    let bob = connected_client(&server, "bob").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    bob.set_event_listener(move |event| {
        let summary = summary(event);
        let _ = tx.send(summary.clone());
        if summary.contains("panic now") {
            panic!("the app's listener fails on {summary}");
        }
    });
    bob.subscribe(["alice"]).unwrap();
    let alice = connected_client(&server, "alice").await;
    alice
        .set_status(Status::new(Availability::Busy).with_message("panic now"))
        .unwrap();
    alice
        .set_status(Status::new(Availability::Away).with_message("after the panic"))
        .unwrap();
    let heard = until_heard(&mut rx, "after the panic").await;
    assert!(
        heard.iter().any(|s| s.contains("panic now")),
        "the listener heard the change it panicked on, then the next: {heard:?}"
    );
    assert!(matches!(bob.state(), ConnectionState::Connected { .. }));
    bob.remove_event_listener();
}

/// Reports its own drop.
struct DropSignal(std::sync::mpsc::Sender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// What a listener may hold: its own client (dropped first) and a signal that it was dropped.
struct Held {
    client: presently::Client,
    _signal: DropSignal,
}

// Several worker threads: a driver that deadlocked dropping the listener must not stall the test's own waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_removes_itself_while_holding_the_last_client_lets_it_close() {
    let server = start_server().await;
    let alice = connected_client(&server, "alice").await;
    alice.subscribe(["bob"]).unwrap();
    let bob = connected_client(&server, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice known to bob", |c| {
        c.presence("alice").is_some()
    })
    .await;
    until(&alice, "bob online", |c| {
        c.presence("bob")
            .is_some_and(|p| p.availability == Availability::Online)
    })
    .await;
    let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
    let held = Held {
        client: bob.clone(),
        _signal: DropSignal(dropped_tx),
    };
    bob.set_event_listener(move |event| {
        // The whole of `held` (a closure captures only the paths it uses).
        let held = &held;
        if summary(event).contains("remove me") {
            held.client.remove_event_listener();
        }
    });
    // From here the listener holds bob's only handle. Once it removes itself, the driver lets go of it (with
    // the core's lock released: the handle's drop takes the lock), which closes the connection.
    drop(bob);
    alice
        .set_status(Status::new(Availability::Busy).with_message("remove me"))
        .unwrap();
    let signalled = tokio::task::spawn_blocking(move || dropped_rx.recv_timeout(PATIENCE))
        .await
        .expect("the wait runs");
    if signalled.is_err() {
        // A driver stuck dropping the listener would keep this runtime from ever shutting down: end the test
        // binary rather than hang.
        eprintln!("the listener, and the client it held, were never dropped: is the driver stuck?");
        std::process::exit(101);
    }
    until(&alice, "bob offline once his last handle is gone", |c| {
        c.presence("bob")
            .is_some_and(|p| p.availability == Availability::Offline)
    })
    .await;
}
