//! Your own status on virtual time: idle detection with warning and restore, app lifecycle, DND schedules and
//! snooze, the precedence between them, exact timers, and what reaches the server.

mod support;

use std::time::Duration;

use presently_core::protocol::{FEATURE_SET_STATUS_AUTO, ServerMessage};
use presently_core::{
    Activity, AutomationConfig, Availability, ClientConfig, DndSchedule, DndSource, DndWindow,
    Event, Instant, Status, StatusReason,
};
use support::*;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;

/// 2026-06-10 (a Wednesday) 12:00:00 UTC, in Unix milliseconds.
const WED_NOON_UTC: u64 = 1_781_092_800_000;

fn automation(idle_minutes: Option<u64>, warning_seconds: Option<u64>) -> ClientConfig {
    let mut c = config();
    c.automation = AutomationConfig {
        idle_timeout: idle_minutes.map(|m| Duration::from_millis(m * MINUTE)),
        idle_warning: warning_seconds.map(Duration::from_secs),
        background_away_after: Some(Duration::from_secs(60)),
    };
    c
}

/// A connected client whose wall clock reads `unix_ms` now, with a server that answers pings.
fn connected_with(config: ClientConfig, unix_ms: u64) -> Harness {
    let mut h = Harness::with_config(config, 1);
    h.client.handle_wall_clock(h.now, unix_ms);
    h.client.connect(h.now);
    h.drain();
    h.open_transport();
    h.welcome();
    h.sent.clear();
    forget(&mut h);
    h
}

/// Advances time in steps no longer than the heartbeat, answering pings, so the link stays up.
fn live(h: &mut Harness, ms: u64) {
    let mut left = ms;
    while left > 0 {
        let step = left.min(INTERVAL);
        h.advance(step);
        h.receive(ServerMessage::Pong {
            reference: None,
            server_time_ms: None,
        });
        left -= step;
    }
}

/// Drains the client and forgets what it sent and emitted so far.
fn forget(h: &mut Harness) {
    h.drain();
    h.events.clear();
    h.sent.clear();
}

fn own_changes(h: &Harness) -> Vec<(Availability, Option<String>, StatusReason)> {
    h.events
        .iter()
        .filter_map(|e| match e {
            Event::OwnStatusChanged { effective, reason } => {
                Some((effective.availability, effective.message.clone(), *reason))
            }
            _ => None,
        })
        .collect()
}

/// The `set_auto` frames sent (this session's automatic state): (state, DND message).
fn auto_frames(h: &Harness) -> Vec<(String, Option<String>)> {
    h.sent
        .iter()
        .filter(|f| f["type"] == "set_auto")
        .map(|f| {
            (
                f["state"].as_str().unwrap().to_owned(),
                f["message"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The `set_status` frames sent (the user's choice): (availability, message).
fn status_frames(h: &Harness) -> Vec<(String, Option<String>)> {
    h.sent
        .iter()
        .filter(|f| f["type"] == "set_status")
        .map(|f| {
            (
                f["availability"].as_str().unwrap().to_owned(),
                f["message"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn studio() -> Status {
    Status::new(Availability::Online)
        .with_message("Mixing")
        .with_activity(Activity::new("in_studio", "Ableton Live 12"))
}

#[test]
fn idle_goes_away_after_the_timeout_and_activity_restores_exactly_what_was_there() {
    let mut h = connected_with(automation(Some(5), None), WED_NOON_UTC);
    h.client.set_status(studio(), h.now).unwrap();
    forget(&mut h);
    live(&mut h, 5 * MINUTE - 1);
    assert!(own_changes(&h).is_empty(), "not before the timeout");
    live(&mut h, 1);
    assert_eq!(
        own_changes(&h),
        [(
            Availability::Away,
            Some("Mixing".into()),
            StatusReason::Idle
        )]
    );
    assert_eq!(
        h.client.effective_status().activity,
        Some(Activity::new("in_studio", "Ableton Live 12"))
    );
    assert_eq!(
        auto_frames(&h),
        [("idle".into(), None)],
        "the server is told once"
    );
    assert!(status_frames(&h).is_empty(), "the choice did not change");

    forget(&mut h);
    live(&mut h, 30 * MINUTE);
    assert!(
        own_changes(&h).is_empty() && h.sent_types().iter().all(|t| t == "ping"),
        "away stays away quietly"
    );
    h.client.handle_activity(h.now, h.now);
    h.drain();
    assert_eq!(
        own_changes(&h),
        [(
            Availability::Online,
            Some("Mixing".into()),
            StatusReason::Manual
        )]
    );
    assert_eq!(
        h.client.effective_status(),
        &studio(),
        "exactly what was there before"
    );
    assert_eq!(auto_frames(&h), [("active".into(), None)]);
}

#[test]
fn activity_keeps_pushing_the_idle_deadline_out() {
    let mut h = connected_with(automation(Some(5), None), WED_NOON_UTC);
    for _ in 0..20 {
        live(&mut h, 4 * MINUTE);
        h.client.handle_activity(h.now, h.now);
    }
    assert!(own_changes(&h).is_empty());
    assert_eq!(
        h.client
            .poll_timeout()
            .unwrap()
            .min(h.now + Duration::from_millis(5 * MINUTE)),
        h.client.poll_timeout().unwrap()
    );
    // Activity stamped in the past (a driver batching it) counts from when it happened.
    live(&mut h, 3 * MINUTE);
    let at = h.now;
    live(&mut h, MINUTE);
    h.client.handle_activity(at, h.now);
    live(&mut h, 4 * MINUTE - 1);
    assert!(own_changes(&h).is_empty());
    live(&mut h, 1);
    assert_eq!(own_changes(&h).len(), 1);
}

#[test]
fn a_warning_comes_before_away_and_activity_cancels_it() {
    let mut h = connected_with(automation(Some(5), Some(30)), WED_NOON_UTC);
    let start = h.now;
    live(&mut h, 5 * MINUTE - 30_000);
    let warnings: Vec<Instant> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::IdleWarning { away_at } => Some(*away_at),
            _ => None,
        })
        .collect();
    assert_eq!(
        warnings,
        [start + Duration::from_millis(5 * MINUTE)],
        "warned 30 s before, with the exact time"
    );
    assert!(h.client.wants_activity());
    h.client.handle_activity(h.now, h.now);
    h.drain();
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::IdleWarningCancelled))
    );
    assert!(!h.client.wants_activity());
    live(&mut h, 40_000);
    assert!(
        own_changes(&h).is_empty(),
        "no away after the cancelled warning: {:?}",
        h.events
    );

    // Ignored warning: away at the announced time (activity was 40 s ago).
    forget(&mut h);
    live(&mut h, 5 * MINUTE - 30_000 - 40_000);
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::IdleWarning { .. }))
    );
    assert!(own_changes(&h).is_empty());
    live(&mut h, 30_000);
    assert_eq!(
        own_changes(&h),
        [(Availability::Away, None, StatusReason::Idle)]
    );
}

#[test]
fn idle_never_turns_busy_into_away() {
    let mut h = connected_with(automation(Some(5), Some(30)), WED_NOON_UTC);
    h.client
        .set_status(
            Status::new(Availability::Busy).with_message("Recording"),
            h.now,
        )
        .unwrap();
    forget(&mut h);
    live(&mut h, 60 * MINUTE);
    assert!(own_changes(&h).is_empty());
    assert!(status_frames(&h).is_empty());
    // Switching to online while idle shows away at once (idle is still true).
    h.client
        .set_status(Status::new(Availability::Online), h.now)
        .unwrap();
    h.drain();
    assert_eq!(
        own_changes(&h),
        [(Availability::Online, None, StatusReason::Manual)],
        "choosing is activity"
    );
}

#[test]
fn explicit_away_is_not_restored_by_activity() {
    let mut h = connected_with(automation(Some(5), None), WED_NOON_UTC);
    h.client
        .set_status(Status::new(Availability::Away).with_message("brb"), h.now)
        .unwrap();
    forget(&mut h);
    live(&mut h, 10 * MINUTE);
    h.client.handle_activity(h.now, h.now);
    h.drain();
    assert!(own_changes(&h).is_empty());
    assert_eq!(h.client.effective_status().availability, Availability::Away);
    assert_eq!(h.client.status_reason(), StatusReason::Manual);
}

#[test]
fn background_policy_goes_away_and_foreground_restores_and_checks_the_link() {
    let mut h = connected_with(automation(None, None), WED_NOON_UTC);
    h.client.app_backgrounded(h.now);
    live(&mut h, 59_999);
    assert!(own_changes(&h).is_empty());
    live(&mut h, 1);
    assert_eq!(
        own_changes(&h),
        [(Availability::Away, None, StatusReason::Lifecycle)]
    );
    forget(&mut h);
    h.client.app_foregrounded(h.now);
    h.drain();
    assert_eq!(
        own_changes(&h),
        [(Availability::Online, None, StatusReason::Manual)]
    );
    assert_eq!(
        h.sent_types(),
        ["set_auto", "ping"],
        "restored, then the link is probed"
    );
    assert_eq!(auto_frames(&h), [("active".into(), None)]);
    // A short trip to the background changes nothing.
    forget(&mut h);
    h.client.app_backgrounded(h.now);
    live(&mut h, 30_000);
    h.client.app_foregrounded(h.now);
    live(&mut h, 5 * MINUTE);
    assert!(own_changes(&h).is_empty());
}

fn quiet_hours(tz: &str, days: &str, start: &str, end: &str) -> DndSchedule {
    DndSchedule::new(tz, vec![DndWindow::parse(days, start, end).unwrap()]).unwrap()
}

#[test]
fn a_scheduled_window_makes_the_status_busy_exactly_at_its_start_and_releases_it_at_its_end() {
    let mut h = connected_with(automation(None, None), WED_NOON_UTC);
    h.client.set_status(studio(), h.now).unwrap();
    // Berlin, summer: 14:00 now; window 14:30–15:00 local.
    h.client.set_dnd_schedule(
        Some(
            quiet_hours("Europe/Berlin", "wed", "14:30", "15:00")
                .with_message("Focus time")
                .unwrap(),
        ),
        h.now,
    );
    forget(&mut h);
    let state = h.client.dnd_state(h.now);
    assert!(!state.active);
    assert_eq!(state.next_start, Some(WED_NOON_UTC + 30 * MINUTE));
    live(&mut h, 30 * MINUTE - 1);
    assert!(own_changes(&h).is_empty());
    live(&mut h, 1);
    assert_eq!(
        own_changes(&h),
        [(
            Availability::Busy,
            Some("Focus time".into()),
            StatusReason::Dnd
        )]
    );
    assert_eq!(
        h.client.effective_status().activity,
        Some(Activity::new("in_studio", "Ableton Live 12"))
    );
    let state = h.client.dnd_state(h.now);
    assert_eq!(
        (state.active, state.source, state.until),
        (true, Some(DndSource::Schedule), Some(WED_NOON_UTC + HOUR))
    );
    assert_eq!(
        state.next_start,
        Some(WED_NOON_UTC + 7 * 24 * HOUR + 30 * MINUTE),
        "next Wednesday"
    );
    live(&mut h, 30 * MINUTE);
    assert_eq!(
        own_changes(&h)[1],
        (
            Availability::Online,
            Some("Mixing".into()),
            StatusReason::Manual
        )
    );
    assert_eq!(
        auto_frames(&h),
        [
            ("dnd".into(), Some("Focus time".into())),
            ("active".into(), None)
        ]
    );
    assert!(status_frames(&h).is_empty());
}

#[test]
fn timers_are_exact_a_week_of_quiet_hours_takes_two_wakeups_a_night() {
    // Not connected (no heartbeat), idle off: the only timers are the schedule's transitions.
    let mut h = Harness::with_config(automation(None, None), 1);
    h.client.handle_wall_clock(h.now, WED_NOON_UTC);
    h.client.set_dnd_schedule(
        Some(quiet_hours("America/New_York", "daily", "22:00", "07:00")),
        h.now,
    );
    h.drain();
    h.advance(7 * 24 * HOUR);
    assert_eq!(
        h.timer_fires, 14,
        "one start and one end per night, nothing else"
    );
    let changes = own_changes(&h);
    assert_eq!(changes.len(), 14);
    assert!(
        changes
            .iter()
            .step_by(2)
            .all(|c| c.0 == Availability::Busy && c.2 == StatusReason::Dnd)
    );
}

#[test]
fn a_window_starting_in_the_spring_forward_gap_fires_when_the_clocks_jump() {
    // 2026-03-08 05:00 UTC is 00:00 EST; the clocks jump from 02:00 EST to 03:00 EDT at 07:00 UTC.
    let five_utc = 1_772_946_000_000;
    let mut h = Harness::with_config(automation(None, None), 1);
    h.client.handle_wall_clock(h.now, five_utc);
    h.client.set_dnd_schedule(
        Some(quiet_hours("America/New_York", "sun", "02:30", "04:00")),
        h.now,
    );
    h.drain();
    h.advance(2 * HOUR - 1);
    assert!(own_changes(&h).is_empty());
    h.advance(1);
    assert_eq!(own_changes(&h).len(), 1, "at 07:00 UTC exactly");
    h.advance(HOUR - 1);
    assert_eq!(own_changes(&h).len(), 1);
    h.advance(1);
    assert_eq!(own_changes(&h).len(), 2, "ends at 04:00 EDT = 08:00 UTC");
}

#[test]
fn snooze_is_dnd_now_until_its_end_and_can_be_ended_early() {
    let mut h = connected_with(automation(None, None), WED_NOON_UTC);
    h.client
        .snooze_dnd(
            h.now + Duration::from_millis(30 * MINUTE),
            Some("Call".into()),
            h.now,
        )
        .unwrap();
    h.drain();
    assert_eq!(
        own_changes(&h),
        [(Availability::Busy, Some("Call".into()), StatusReason::Dnd)]
    );
    let state = h.client.dnd_state(h.now);
    assert_eq!(
        (state.source, state.until, state.snoozed_until),
        (
            Some(DndSource::Snooze),
            Some(WED_NOON_UTC + 30 * MINUTE),
            Some(WED_NOON_UTC + 30 * MINUTE)
        )
    );
    live(&mut h, 30 * MINUTE);
    assert_eq!(own_changes(&h).len(), 2);
    assert_eq!(h.client.effective_status(), &Status::default());

    forget(&mut h);
    h.client
        .snooze_dnd(h.now + Duration::from_millis(HOUR), None, h.now)
        .unwrap();
    live(&mut h, MINUTE);
    h.client.end_snooze(h.now);
    h.drain();
    assert_eq!(
        own_changes(&h),
        [
            (Availability::Busy, None, StatusReason::Dnd),
            (Availability::Online, None, StatusReason::Manual)
        ]
    );
    assert!(!h.client.dnd_state(h.now).active);
    assert!(
        h.client
            .snooze_dnd(h.now, Some("x".repeat(201)), h.now)
            .is_err()
    );
}

#[test]
fn a_snooze_ending_inside_a_window_hands_over_to_the_window() {
    let mut h = connected_with(automation(None, None), WED_NOON_UTC);
    // Window 14:30–15:00 Berlin (12:30–13:00 UTC); snooze until 12:45 UTC.
    h.client.set_dnd_schedule(
        Some(quiet_hours("Europe/Berlin", "wed", "14:30", "15:00")),
        h.now,
    );
    h.client
        .snooze_dnd(h.now + Duration::from_millis(45 * MINUTE), None, h.now)
        .unwrap();
    let state = h.client.dnd_state(h.now);
    assert_eq!(
        state.until,
        Some(WED_NOON_UTC + HOUR),
        "the window continues after the snooze"
    );
    h.drain();
    forget(&mut h);
    live(&mut h, 45 * MINUTE);
    assert!(own_changes(&h).is_empty(), "no blip at the hand-over");
    live(&mut h, 15 * MINUTE);
    assert_eq!(
        own_changes(&h),
        [(Availability::Online, None, StatusReason::Manual)]
    );
}

#[test]
fn idle_and_dnd_together_restore_in_the_right_order() {
    let mut h = connected_with(automation(Some(5), None), WED_NOON_UTC);
    h.client.set_status(studio(), h.now).unwrap();
    h.client
        .set_dnd_schedule(Some(quiet_hours("UTC", "wed", "12:10", "12:20")), h.now);
    forget(&mut h);
    live(&mut h, 20 * MINUTE + 1);
    // 12:05 idle → away; 12:10 DND → busy (beats idle); 12:20 DND ends → away again (still idle).
    assert_eq!(
        own_changes(&h),
        [
            (
                Availability::Away,
                Some("Mixing".into()),
                StatusReason::Idle
            ),
            (Availability::Busy, Some("Mixing".into()), StatusReason::Dnd),
            (
                Availability::Away,
                Some("Mixing".into()),
                StatusReason::Idle
            ),
        ]
    );
    h.client.handle_activity(h.now, h.now);
    h.drain();
    assert_eq!(
        own_changes(&h).last().unwrap(),
        &(
            Availability::Online,
            Some("Mixing".into()),
            StatusReason::Manual
        )
    );
    assert_eq!(
        auto_frames(&h),
        [
            ("idle".into(), None),
            ("dnd".into(), None),
            ("idle".into(), None),
            ("active".into(), None)
        ],
        "each change of the automatic state sent once"
    );
}

#[test]
fn changes_while_offline_reach_the_server_once_in_the_next_hello() {
    let mut h = connected_with(automation(Some(5), None), WED_NOON_UTC);
    h.client.set_status(studio(), h.now).unwrap();
    h.client.handle_transport_closed("network down", h.now);
    forget(&mut h);
    // Offline: idle away, then a snooze; the server hears none of it now.
    h.advance(5 * MINUTE);
    h.client
        .snooze_dnd(
            h.now + Duration::from_millis(HOUR),
            Some("Call".into()),
            h.now,
        )
        .unwrap();
    h.drain();
    assert!(h.sent.is_empty());
    assert_eq!(own_changes(&h).len(), 2);
    h.reconnect();
    assert_eq!(h.sent_types(), ["hello"]);
    assert_eq!(h.sent[0]["status"]["availability"], "online", "the choice");
    assert_eq!(h.sent[0]["status"]["message"], "Mixing");
    assert_eq!(
        h.sent[0]["auto"]["state"], "dnd",
        "the latest automatic state, once"
    );
    assert_eq!(h.sent[0]["auto"]["message"], "Call");
}

#[test]
fn no_status_is_announced_until_something_is_chosen_or_automated() {
    let mut h = connected_with(automation(Some(5), None), WED_NOON_UTC);
    h.client.handle_transport_closed("drop", h.now);
    h.drain();
    h.sent.clear();
    h.reconnect();
    assert!(
        h.sent[0].get("status").is_none(),
        "a second device does not override the user with a default"
    );
}

#[test]
fn a_wall_clock_jump_re_plans_the_schedule() {
    let mut h = Harness::with_config(automation(None, None), 1);
    h.client.handle_wall_clock(h.now, WED_NOON_UTC);
    h.client
        .set_dnd_schedule(Some(quiet_hours("UTC", "wed", "13:00", "14:00")), h.now);
    h.drain();
    assert_eq!(
        h.client.poll_timeout(),
        Some(h.now + Duration::from_millis(HOUR))
    );
    // Small drifts are ignored; a jump of 50 minutes (the device clock was wrong) moves the timer.
    h.advance(MINUTE);
    h.client
        .handle_wall_clock(h.now, WED_NOON_UTC + MINUTE + 300);
    assert_eq!(h.client.poll_timeout(), Some(Instant::from_millis(HOUR)));
    h.client
        .handle_wall_clock(h.now, WED_NOON_UTC + 51 * MINUTE);
    assert_eq!(
        h.client.poll_timeout(),
        Some(h.now + Duration::from_millis(9 * MINUTE))
    );
    h.advance(9 * MINUTE);
    assert_eq!(own_changes(&h).len(), 1);
}

#[test]
fn spurious_timeouts_change_nothing() {
    let mut h = connected_with(automation(Some(5), Some(30)), WED_NOON_UTC);
    h.client
        .set_dnd_schedule(Some(quiet_hours("UTC", "wed", "13:00", "14:00")), h.now);
    h.drain();
    let due = h.client.poll_timeout().unwrap();
    for ms in [0, 1, due.as_millis() / 2, due.as_millis() - 1] {
        h.client.handle_timeout(Instant::from_millis(ms));
    }
    h.drain();
    assert!(h.events.is_empty());
    assert_eq!(h.client.poll_timeout(), Some(due));
}

#[test]
fn settings_can_change_at_run_time() {
    let mut h = connected_with(automation(None, None), WED_NOON_UTC);
    live(&mut h, 10 * MINUTE);
    // Turning idle detection on with 5 minutes, after 10 quiet minutes: away at once.
    h.client.set_automation(
        AutomationConfig {
            idle_timeout: Some(Duration::from_millis(5 * MINUTE)),
            ..AutomationConfig::default()
        },
        h.now,
    );
    h.drain();
    assert_eq!(
        own_changes(&h),
        [(Availability::Away, None, StatusReason::Idle)]
    );
    h.client.set_automation(
        AutomationConfig {
            idle_timeout: None,
            ..AutomationConfig::default()
        },
        h.now,
    );
    h.drain();
    assert_eq!(own_changes(&h).last().unwrap().0, Availability::Online);
}

#[test]
fn invisible_beats_every_automation() {
    let mut h = connected_with(automation(Some(5), None), WED_NOON_UTC);
    h.client
        .set_status(Status::new(Availability::Invisible), h.now)
        .unwrap();
    h.client
        .snooze_dnd(h.now + Duration::from_millis(HOUR), None, h.now)
        .unwrap();
    forget(&mut h);
    live(&mut h, 10 * MINUTE);
    assert!(
        own_changes(&h).is_empty(),
        "neither idle nor DND shows through"
    );
    assert_eq!(
        h.client.effective_status().availability,
        Availability::Invisible
    );
}

#[test]
fn a_message_with_an_expiry_clears_itself_exactly_then() {
    let mut h = connected_with(automation(None, None), WED_NOON_UTC);
    h.client
        .set_status(
            Status::new(Availability::Busy)
                .with_message_until("back at 12:30", WED_NOON_UTC + 30 * MINUTE),
            h.now,
        )
        .unwrap();
    forget(&mut h);
    live(&mut h, 30 * MINUTE - 1);
    assert!(own_changes(&h).is_empty());
    live(&mut h, 1);
    assert_eq!(
        own_changes(&h),
        [(Availability::Busy, None, StatusReason::Manual)]
    );
    assert!(
        h.sent_types().iter().all(|t| t == "ping"),
        "the server clears it too; nothing is sent"
    );
}

#[test]
fn focus_and_privacy_survive_reconnects() {
    let mut h = connected_with(automation(None, None), WED_NOON_UTC);
    h.client
        .set_focus(Some("conversation:42".into()), h.now)
        .unwrap();
    assert!(h.client.set_focus(Some(String::new()), h.now).is_err());
    h.drain();
    assert_eq!(h.sent.last().unwrap()["type"], "set_focus");
    h.client.handle_transport_closed("drop", h.now);
    h.client.set_privacy(
        presently_core::Privacy {
            visibility: presently_core::Visibility::Contacts,
            hide_last_seen: true,
        },
        h.now,
    );
    forget(&mut h);
    h.reconnect();
    assert_eq!(
        h.sent[0]["focus"], "conversation:42",
        "hello carries the focus"
    );
    assert!(
        h.sent
            .iter()
            .any(|f| f["type"] == "set_privacy" && f["visibility"] == "contacts"),
        "privacy asked for while offline is sent after welcome: {:?}",
        h.sent
    );
}

#[test]
fn choosing_a_status_while_idle_tells_the_server_about_the_activity_before_the_choice() {
    // The server combines the choice with the automatic state: the other order would have it combine the new
    // choice with "idle" for a moment, and watchers would see away before the choice.
    let mut h = connected_with(automation(Some(5), None), WED_NOON_UTC);
    h.client
        .set_status(
            Status::new(Availability::Busy).with_message("Mixing"),
            h.now,
        )
        .unwrap();
    forget(&mut h);
    live(&mut h, 5 * MINUTE);
    assert_eq!(auto_frames(&h), [("idle".into(), None)]);
    forget(&mut h);

    h.client
        .set_status(
            Status::new(Availability::Online).with_message("Bounce done"),
            h.now,
        )
        .unwrap();
    h.drain();
    let kinds: Vec<&str> = h.sent.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(kinds, ["set_auto", "set_status"]);
    assert_eq!(auto_frames(&h), [("active".into(), None)]);
    assert_eq!(
        status_frames(&h),
        [("online".into(), Some("Bounce done".into()))]
    );
    assert_eq!(
        own_changes(&h),
        [(
            Availability::Online,
            Some("Bounce done".into()),
            StatusReason::Manual
        )]
    );
}

/// A connected client whose server announces `set_status_auto` (`set_status` may carry the automatic state).
fn connected_to_a_server_taking_auto_with_status(config: ClientConfig, unix_ms: u64) -> Harness {
    let mut h = Harness::with_config(config, 1);
    h.server_features = vec![FEATURE_SET_STATUS_AUTO.to_owned()];
    h.client.handle_wall_clock(h.now, unix_ms);
    h.client.connect(h.now);
    h.drain();
    h.open_transport();
    h.welcome();
    forget(&mut h);
    h
}

#[test]
fn choosing_a_status_while_idle_sends_one_frame_with_both_to_a_server_that_takes_them_together() {
    // The server applies the automatic state and the choice together: watchers get one update, never "back"
    // in between (an idle user picking away would otherwise go away, online, away).
    let mut h =
        connected_to_a_server_taking_auto_with_status(automation(Some(5), None), WED_NOON_UTC);
    live(&mut h, 5 * MINUTE);
    assert_eq!(auto_frames(&h), [("idle".into(), None)]);
    forget(&mut h);

    h.client
        .set_status(Status::new(Availability::Away).with_message("Lunch"), h.now)
        .unwrap();
    h.drain();
    assert_eq!(h.sent_types(), ["set_status"], "one frame: {:?}", h.sent);
    assert_eq!(h.sent[0]["availability"], "away");
    assert_eq!(h.sent[0]["message"], "Lunch");
    assert_eq!(h.sent[0]["auto"], serde_json::json!({ "state": "active" }));
    forget(&mut h);

    // The server has heard of the activity: more of it sends nothing, and a choice while active carries no
    // automatic state.
    h.advance(1_000);
    h.client.handle_activity(h.now, h.now);
    h.client
        .set_status(Status::new(Availability::Busy), h.now)
        .unwrap();
    h.drain();
    assert_eq!(h.sent_types(), ["set_status"]);
    assert!(h.sent[0].get("auto").is_none(), "{:?}", h.sent[0]);
}

#[test]
fn picking_the_status_already_chosen_while_idle_still_sends_only_the_activity() {
    let mut h =
        connected_to_a_server_taking_auto_with_status(automation(Some(5), None), WED_NOON_UTC);
    h.client
        .set_status(Status::new(Availability::Busy), h.now)
        .unwrap();
    live(&mut h, 5 * MINUTE);
    forget(&mut h);
    h.client
        .set_status(Status::new(Availability::Busy), h.now)
        .unwrap();
    h.drain();
    assert_eq!(h.sent_types(), ["set_auto"]);
    assert_eq!(auto_frames(&h), [("active".into(), None)]);
}

#[test]
fn after_rate_limited_the_latest_choice_and_automatic_state_go_in_one_frame() {
    let mut h =
        connected_to_a_server_taking_auto_with_status(automation(Some(5), None), WED_NOON_UTC);
    live(&mut h, 5 * MINUTE);
    forget(&mut h);
    h.rate_limited(500);
    h.client
        .set_status(Status::new(Availability::Away).with_message("2"), h.now)
        .unwrap();
    h.drain();
    assert!(
        h.sent.is_empty(),
        "nothing until the delay has passed: {:?}",
        h.sent
    );
    h.advance(500);
    // (The refused update may have been any of them: the focus and privacy are sent again too.)
    assert!(auto_frames(&h).is_empty(), "{:?}", h.sent);
    let statuses: Vec<_> = h
        .sent
        .iter()
        .filter(|f| f["type"] == "set_status")
        .collect();
    assert_eq!(statuses.len(), 1, "{:?}", h.sent);
    assert_eq!(statuses[0]["message"], "2");
    assert_eq!(statuses[0]["auto"]["state"], "active");
}
