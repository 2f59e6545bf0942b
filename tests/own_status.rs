//! Own status end to end: what idle detection, snooze and a DND window do is what watchers see.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use presently::{
    Availability, Client, ClientInfo, DndSchedule, DndWindow, Event, Status, StatusReason,
};
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

/// The own-status changes the stream holds now or within `for_ms` milliseconds: (availability, message, reason).
async fn own_changes(
    events: &mut presently::EventStream,
    for_ms: u64,
) -> Vec<(Availability, Option<String>, StatusReason)> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(for_ms);
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
        if let Event::OwnStatusChanged { effective, reason } = event {
            seen.push((effective.availability, effective.message, reason));
        }
    }
    seen
}

#[tokio::test]
async fn a_dnd_window_is_judged_on_the_wall_clock_of_the_call_not_of_the_drivers_last_wake_up() {
    // Alice's device clock first reads 01:30 UTC, inside her quiet hours (22:00–07:00); then it is set to
    // 21:59:59 (a device that slept, a user correcting the clock) just before she turns the schedule on.
    let server = start_server().await;
    let skew_ms = Arc::new(AtomicI64::new(0));
    let to_time_of_day = |target_ms: i64| {
        let since_midnight = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            % 86_400_000;
        target_ms - since_midnight
    };
    skew_ms.store(to_time_of_day(90 * 60_000), Ordering::Relaxed);
    let clock = skew_ms.clone();
    let alice = Client::builder(server.ws_url())
        .token(token(&server, "alice"))
        .wall_clock(move || {
            let skew = clock.load(Ordering::Relaxed);
            let now = SystemTime::now();
            if skew >= 0 {
                now + Duration::from_millis(skew as u64)
            } else {
                now - Duration::from_millis(skew.unsigned_abs())
            }
        })
        .build()
        .unwrap();
    alice.connect().await.unwrap();
    let mut events = alice.events();
    // The driver has been running on the 01:30 clock.
    alice
        .set_status(Status::new(Availability::Online).with_message("mixing"))
        .unwrap();
    assert_eq!(
        own_changes(&mut events, 300).await,
        vec![(
            Availability::Online,
            Some("mixing".into()),
            StatusReason::Manual
        )]
    );

    skew_ms.store(to_time_of_day(22 * 3_600_000 - 1_000), Ordering::Relaxed);
    alice.set_dnd_schedule(Some(
        DndSchedule::new(
            "UTC",
            vec![DndWindow::parse("daily", "22:00", "07:00").unwrap()],
        )
        .unwrap()
        .with_message("Quiet hours")
        .unwrap(),
    ));
    assert!(!alice.dnd_state().active, "the window starts in a second");
    assert_eq!(
        own_changes(&mut events, 300).await,
        vec![],
        "no busy-and-back flip from judging the window on the old clock"
    );
    assert_eq!(
        own_changes(&mut events, 3_000).await.first(),
        Some(&(
            Availability::Busy,
            Some("Quiet hours".into()),
            StatusReason::Dnd
        )),
        "busy when the window starts"
    );
}

/// Alice goes idle (away) while bob watches her, then picks `status`: what bob sees of her within 200 ms (well
/// within her 300 ms idle timeout, so that going idle again is not what is seen).
async fn what_a_watcher_sees_when_an_idle_user_picks(
    status: Status,
) -> Vec<(Availability, Option<String>)> {
    let server = start_server().await;
    let alice = idle_prone_client(
        &server.ws_url(),
        &token(&server, "alice"),
        Duration::from_millis(300),
    )
    .await;
    let bob = connected_client(&server, "bob").await;
    let mut seen_by_bob = bob.events();
    bob.subscribe(["alice"]).unwrap();
    // Only her idle timeout makes her away.
    until(&bob, "bob sees alice away", |c| {
        availability_and_message(c, "alice").is_some_and(|(a, _)| a == Availability::Away)
    })
    .await;
    settle(&mut seen_by_bob, Duration::from_millis(100)).await;
    alice.set_status(status).unwrap();
    presence_changes_within(&mut seen_by_bob, Duration::from_millis(200)).await
}

#[tokio::test]
async fn a_status_chosen_while_idle_reaches_watchers_without_an_away_first() {
    // A plugin user who went idle comes back and picks a status: watchers see the new status, never "away" with
    // the new message on the way, and not "back" as an update of its own either: the reference server takes
    // the activity and the choice in one frame (`set_status_auto`).
    assert_eq!(
        what_a_watcher_sees_when_an_idle_user_picks(
            Status::new(Availability::Online).with_message("Bounce done")
        )
        .await,
        [(Availability::Online, Some("Bounce done".to_owned()))],
        "what bob saw of alice"
    );
}

#[tokio::test]
async fn an_idle_user_who_picks_away_is_never_seen_back_in_between() {
    // Idle shows away; picking away with a message must not show her online for a moment (activity first,
    // then the choice, as two updates): watchers see one change, the message.
    assert_eq!(
        what_a_watcher_sees_when_an_idle_user_picks(
            Status::new(Availability::Away).with_message("Lunch")
        )
        .await,
        [(Availability::Away, Some("Lunch".to_owned()))],
        "what bob saw of alice"
    );
}
