//! Own status end to end: what idle detection, snooze and a DND window do is what watchers see.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use presently::{Availability, Client, ClientInfo, DndSchedule, DndWindow, StatusReason};
use support::*;

fn availability_and_message(client: &Client, user: &str) -> Option<(Availability, Option<String>)> {
    client.presence(user).map(|p| (p.availability, p.message))
}

#[tokio::test]
async fn idle_makes_watchers_see_away_and_activity_brings_back_online() {
    let server = start_server().await;
    let alice = Client::builder(server.ws_url())
        .token(token(&server, "alice"))
        .client_info(ClientInfo::new("plugin", "1", "test"))
        .idle_timeout(Some(Duration::from_millis(400)))
        .idle_warning(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    alice.connect().await.unwrap();
    let bob = connected_client(&server, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice away after the idle timeout", |c| {
        availability_and_message(c, "alice").is_some_and(|(a, _)| a == Availability::Away)
    })
    .await;
    assert_eq!(alice.status_reason(), StatusReason::Idle);
    alice.record_activity();
    until(&bob, "alice back online after activity", |c| {
        availability_and_message(c, "alice").is_some_and(|(a, _)| a == Availability::Online)
    })
    .await;
    assert_eq!(alice.status_reason(), StatusReason::Manual);
}

#[tokio::test]
async fn a_snooze_is_busy_with_its_message_until_ended() {
    let server = start_server().await;
    let alice = connected_client(&server, "alice").await;
    let bob = connected_client(&server, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    alice
        .snooze_dnd_for(Duration::from_secs(3_600), Some("On a call".into()))
        .unwrap();
    until(&bob, "alice busy on a call", |c| {
        availability_and_message(c, "alice") == Some((Availability::Busy, Some("On a call".into())))
    })
    .await;
    let state = alice.dnd_state();
    assert!(state.active && state.snoozed_until.is_some());
    alice.end_snooze();
    until(&bob, "alice online again", |c| {
        availability_and_message(c, "alice") == Some((Availability::Online, None))
    })
    .await;
}

#[tokio::test]
async fn a_scheduled_window_starts_on_time_and_watchers_see_it() {
    let server = start_server().await;
    // Alice's device clock reads 21:59:59.500 UTC now; her quiet hours start at 22:00.
    let now = SystemTime::now();
    let since_midnight = now.duration_since(UNIX_EPOCH).unwrap().as_millis() % 86_400_000;
    let target = 22 * 3_600_000 - 500;
    let skew = Duration::from_millis(((target + 86_400_000 - since_midnight) % 86_400_000) as u64);
    let schedule = DndSchedule::new(
        "UTC",
        vec![DndWindow::parse("daily", "22:00", "23:00").unwrap()],
    )
    .unwrap()
    .with_message("Quiet hours")
    .unwrap();
    let alice = Client::builder(server.ws_url())
        .token(token(&server, "alice"))
        .wall_clock(move || SystemTime::now() + skew)
        .dnd_schedule(schedule)
        .build()
        .unwrap();
    assert!(!alice.dnd_state().active);
    alice.connect().await.unwrap();
    let bob = connected_client(&server, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice busy for quiet hours", |c| {
        availability_and_message(c, "alice")
            == Some((Availability::Busy, Some("Quiet hours".into())))
    })
    .await;
    let state = alice.dnd_state();
    assert!(state.active);
    assert_eq!(alice.status_reason(), StatusReason::Dnd);
    let until_ms = state.until.unwrap();
    assert_eq!(until_ms % 86_400_000, 23 * 3_600_000, "until 23:00");
}
