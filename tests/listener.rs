//! `Client::set_event_listener`: events handed to a function on the client's driver, beside the streams of
//! `Client::events`.

mod support;

use std::sync::{Arc, Mutex};

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
    let heard = Arc::new(Mutex::new(Vec::new()));
    let calls = heard.clone();
    bob.set_event_listener(move |event| {
        let summary = summary(event);
        calls.lock().unwrap().push(summary.clone());
        if summary.contains("panic") {
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
    until(&bob, "alice's second change, after the panic", |c| {
        c.presence("alice")
            .is_some_and(|p| p.message.as_deref() == Some("after the panic"))
    })
    .await;
    // The driver hands an event to the listener before it puts it in the streams, so the listener has been
    // called for the event `until` saw.
    let heard = heard.lock().unwrap().clone();
    let panicked = heard.iter().position(|s| s.contains("panic now"));
    let after = heard.iter().position(|s| s.contains("after the panic"));
    assert!(
        matches!((panicked, after), (Some(p), Some(a)) if p < a),
        "{heard:?}"
    );
    assert!(matches!(bob.state(), ConnectionState::Connected { .. }));
    bob.remove_event_listener();
}
