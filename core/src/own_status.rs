//! Your own status, kept right by itself: what you chose, combined with idle detection, app lifecycle and
//! do-not-disturb into one effective status.
//!
//! # Precedence
//!
//! | rule | when | effective availability | message and activity | reason |
//! |---|---|---|---|---|
//! | 0 | you chose **invisible** | invisible (watchers see offline) | yours | `Manual` |
//! | 1 | you chose **busy** | busy | yours | `Manual` |
//! | 2 | **DND** is on (a scheduled window or a snooze) | busy | the DND message if there is one, else yours; your activity | `Dnd` |
//! | 3 | you chose **away** | away | yours | `Manual` |
//! | 4 | you are **idle** (no activity for the idle timeout) | away | yours | `Idle` |
//! | 5 | the app has been in the **background** for the configured time | away | yours | `Lifecycle` |
//! | 6 | otherwise | what you chose (online by default) | yours | `Manual` |
//!
//! The first rule that applies wins. Idle and background never turn busy (chosen or DND) into away, and ending
//! an automation restores exactly what you chose, because your choice is kept apart from what the automations
//! say.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::dnd::{DndSchedule, ScheduleState};
use crate::protocol::{Availability, Status};
use crate::time::Instant;

/// Why the effective status is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusReason {
    /// What you chose (rules 1, 3 and 6).
    Manual,
    /// No activity for the idle timeout (rule 4).
    Idle,
    /// A DND window or snooze (rule 2).
    Dnd,
    /// The app has been in the background (rule 5).
    Lifecycle,
}

impl StatusReason {
    /// A lowercase name: `manual`, `idle`, `dnd`, `lifecycle`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusReason::Manual => "manual",
            StatusReason::Idle => "idle",
            StatusReason::Dnd => "dnd",
            StatusReason::Lifecycle => "lifecycle",
        }
    }
}

/// Settings of the automations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutomationConfig {
    /// Away after this long without activity; `None` turns idle detection off. Default 5 minutes.
    pub idle_timeout: Option<Duration>,
    /// How long before going away an [`Event::IdleWarning`](crate::Event::IdleWarning) is emitted, so that the app
    /// can ask "still there?"; `None` for no warning. Default `None`.
    pub idle_warning: Option<Duration>,
    /// Away after this long in the background (see [`Client::app_backgrounded`](crate::Client::app_backgrounded));
    /// `None` leaves the status alone in the background. Default 60 seconds.
    pub background_away_after: Option<Duration>,
}

impl Default for AutomationConfig {
    fn default() -> Self {
        AutomationConfig {
            idle_timeout: Some(Duration::from_secs(5 * 60)),
            idle_warning: None,
            background_away_after: Some(Duration::from_secs(60)),
        }
    }
}

/// What put DND on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DndSource {
    /// A snooze ([`Client::snooze_dnd`](crate::Client::snooze_dnd)).
    Snooze,
    /// A window of the schedule.
    Schedule,
}

/// Do-not-disturb now and next. Instants are Unix time in milliseconds; they are `None` when the client does not
/// know the wall clock yet ([`Client::handle_wall_clock`](crate::Client::handle_wall_clock)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DndState {
    /// DND is on.
    pub active: bool,
    /// What put it on (a snooze wins over a window when both apply).
    pub source: Option<DndSource>,
    /// When DND ends, if on: the later of the snooze's end and the end of a window running at that moment;
    /// `None` if off or endless.
    pub until: Option<u64>,
    /// When the schedule next turns DND on after `until` (or after now, if off).
    pub next_start: Option<u64>,
    /// The end of the current snooze, if any.
    pub snoozed_until: Option<u64>,
    /// The message shown while DND is on.
    pub message: Option<String>,
}

/// Applies the precedence table of the [module documentation](self).
///
/// `dnd` is `Some(message)` while DND is on (the message may itself be `None`).
pub fn combine(
    manual: &Status,
    dnd: Option<Option<&str>>,
    idle: bool,
    background: bool,
) -> (Status, StatusReason) {
    // Rule 0: invisible hides everything else.
    if manual.availability == Availability::Invisible || manual.availability == Availability::Busy {
        return (manual.clone(), StatusReason::Manual);
    }
    if let Some(dnd_message) = dnd {
        let status = Status {
            availability: Availability::Busy,
            message: dnd_message
                .map(str::to_owned)
                .or_else(|| manual.message.clone()),
            activity: manual.activity.clone(),
            message_expires_at: match dnd_message {
                Some(_) => None,
                None => manual.message_expires_at,
            },
        };
        return (status, StatusReason::Dnd);
    }
    if manual.availability == Availability::Away {
        return (manual.clone(), StatusReason::Manual);
    }
    let away = |reason| {
        let status = Status {
            availability: Availability::Away,
            ..manual.clone()
        };
        (status, reason)
    };
    if idle {
        return away(StatusReason::Idle);
    }
    if background {
        return away(StatusReason::Lifecycle);
    }
    (manual.clone(), StatusReason::Manual)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdlePhase {
    Active,
    /// The warning was emitted; away at `away_at` unless activity comes first.
    Warned {
        away_at: Instant,
    },
    Away,
}

/// What an automation input changed, for the client to report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// The inputs of the precedence table may have changed: recompute the effective status.
    pub(crate) recompute: bool,
    /// Emit `IdleWarning { away_at }`.
    pub(crate) warning: Option<Instant>,
    /// Emit `IdleWarningCancelled`.
    pub(crate) warning_cancelled: bool,
}

#[derive(Clone, Debug)]
struct Snooze {
    until: Instant,
    message: Option<String>,
}

/// The state of the automations: idle, lifecycle, DND schedule and snooze. Sans-IO like the rest of the core.
#[derive(Clone, Debug)]
pub(crate) struct Automation {
    config: AutomationConfig,
    started: bool,
    last_activity: Instant,
    idle: IdlePhase,
    background_since: Option<Instant>,
    lifecycle_away: bool,
    /// Unix milliseconds minus driver milliseconds, once the driver told the wall clock.
    wall_offset: Option<i64>,
    schedule: Option<DndSchedule>,
    schedule_state: Option<ScheduleState>,
    /// When the schedule's state next changes, on the driver's clock.
    schedule_next: Option<Instant>,
    snooze: Option<Snooze>,
}

impl Automation {
    pub(crate) fn new(config: AutomationConfig) -> Self {
        Automation {
            config,
            started: false,
            last_activity: Instant::ZERO,
            idle: IdlePhase::Active,
            background_since: None,
            lifecycle_away: false,
            wall_offset: None,
            schedule: None,
            schedule_state: None,
            schedule_next: None,
            snooze: None,
        }
    }

    /// Starts idle tracking from `now` if it has not started yet.
    pub(crate) fn start(&mut self, now: Instant) {
        if !self.started {
            self.started = true;
            self.last_activity = now;
        }
    }

    pub(crate) fn set_config(&mut self, config: AutomationConfig, now: Instant) -> Changes {
        self.config = config;
        // Re-judge from the last activity under the new settings.
        let mut changes = self.clear_idle();
        changes.recompute = true;
        changes = merge(changes, self.handle_timeout(now));
        if self.background_since.is_some() {
            self.lifecycle_away = false;
            changes = merge(changes, self.handle_timeout(now));
        }
        changes
    }

    /// Whether the client is idle or about to be (a warning is out): activity must reach the client promptly.
    pub(crate) fn wants_activity(&self) -> bool {
        self.idle != IdlePhase::Active
    }

    fn clear_idle(&mut self) -> Changes {
        let previous = std::mem::replace(&mut self.idle, IdlePhase::Active);
        Changes {
            recompute: previous == IdlePhase::Away,
            warning: None,
            warning_cancelled: matches!(previous, IdlePhase::Warned { .. }),
        }
    }

    /// Activity at `at` (clamped to `now`).
    pub(crate) fn activity(&mut self, at: Instant, now: Instant) -> Changes {
        self.start(now);
        let at = at.min(now);
        if at < self.last_activity {
            return Changes::default();
        }
        self.last_activity = at;
        self.clear_idle()
    }

    pub(crate) fn backgrounded(&mut self, now: Instant) -> Changes {
        self.start(now);
        if self.background_since.is_none() {
            self.background_since = Some(now);
        }
        self.handle_timeout(now)
    }

    pub(crate) fn foregrounded(&mut self, now: Instant) -> Changes {
        let was_away = self.lifecycle_away;
        self.background_since = None;
        self.lifecycle_away = false;
        // Coming to the foreground is the user's doing: it is activity too.
        let mut changes = self.activity(now, now);
        changes.recompute |= was_away;
        changes
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.idle == IdlePhase::Away
    }

    pub(crate) fn is_background_away(&self) -> bool {
        self.lifecycle_away
    }

    // ----- wall clock and DND -----

    pub(crate) fn wall_clock(&mut self, now: Instant, unix_ms: u64) -> Changes {
        let offset = i64::try_from(unix_ms).unwrap_or(i64::MAX)
            - i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
        let moved = self
            .wall_offset
            .is_none_or(|known| (known - offset).abs() >= 1_000);
        if !moved {
            return Changes::default();
        }
        self.wall_offset = Some(offset);
        self.evaluate_schedule(now)
    }

    /// The driver's instant at Unix milliseconds `unix_ms`, if the wall clock is known.
    pub(crate) fn instant_of_unix_ms(&self, unix_ms: u64) -> Option<Instant> {
        let utc = DateTime::from_timestamp_millis(i64::try_from(unix_ms).ok()?)?;
        self.to_instant(utc)
    }

    /// Unix milliseconds at `at`, if the wall clock is known.
    pub(crate) fn unix_ms_at(&self, at: Instant) -> Option<u64> {
        self.unix_ms(at).and_then(|ms| u64::try_from(ms).ok())
    }

    fn unix_ms(&self, at: Instant) -> Option<i64> {
        self.wall_offset.map(|offset| {
            i64::try_from(at.as_millis())
                .unwrap_or(i64::MAX)
                .saturating_add(offset)
        })
    }

    fn to_instant(&self, at: DateTime<Utc>) -> Option<Instant> {
        let offset = self.wall_offset?;
        let mono = at.timestamp_millis().saturating_sub(offset);
        Some(Instant::from_millis(u64::try_from(mono).unwrap_or(0)))
    }

    pub(crate) fn set_schedule(&mut self, schedule: Option<DndSchedule>, now: Instant) -> Changes {
        self.schedule = schedule;
        self.evaluate_schedule(now)
    }

    pub(crate) fn schedule(&self) -> Option<&DndSchedule> {
        self.schedule.as_ref()
    }

    fn evaluate_schedule(&mut self, now: Instant) -> Changes {
        let was_active = self.schedule_active();
        let utc = self.unix_ms(now).and_then(DateTime::from_timestamp_millis);
        self.schedule_state = match (&self.schedule, utc) {
            (Some(schedule), Some(utc)) => Some(schedule.state_at(utc)),
            _ => None,
        };
        self.schedule_next = self
            .schedule_state
            .and_then(|s| s.next_transition())
            .and_then(|t| self.to_instant(t))
            .map(|t| t.max(now));
        Changes {
            recompute: was_active != self.schedule_active(),
            ..Changes::default()
        }
    }

    fn schedule_active(&self) -> bool {
        self.schedule_state.is_some_and(|s| s.active)
    }

    pub(crate) fn snooze(
        &mut self,
        until: Instant,
        message: Option<String>,
        now: Instant,
    ) -> Changes {
        self.snooze = (until > now).then_some(Snooze { until, message });
        Changes {
            recompute: true,
            ..Changes::default()
        }
    }

    pub(crate) fn end_snooze(&mut self) -> Changes {
        Changes {
            recompute: self.snooze.take().is_some(),
            ..Changes::default()
        }
    }

    /// `Some(message)` while DND is on.
    pub(crate) fn dnd(&self) -> Option<Option<&str>> {
        if let Some(snooze) = &self.snooze {
            return Some(
                snooze
                    .message
                    .as_deref()
                    .or_else(|| self.schedule.as_ref().and_then(|s| s.message())),
            );
        }
        if self.schedule_active() {
            return Some(self.schedule.as_ref().and_then(|s| s.message()));
        }
        None
    }

    pub(crate) fn dnd_state(&self, now: Instant) -> DndState {
        let to_unix = |at: Instant| self.unix_ms(at).and_then(|ms| u64::try_from(ms).ok());
        let snoozed_until = self.snooze.as_ref().map(|s| s.until);
        let schedule = self.schedule_state;
        let source = match (snoozed_until, schedule) {
            (Some(_), _) => Some(DndSource::Snooze),
            (None, Some(s)) if s.active => Some(DndSource::Schedule),
            _ => None,
        };
        let active = source.is_some();
        // A window running when the snooze ends extends DND to the window's end.
        let until = match (snoozed_until, schedule) {
            (Some(snooze_end), _) => {
                let snooze_unix = to_unix(snooze_end);
                match (
                    &self.schedule,
                    snooze_unix.and_then(|ms| DateTime::from_timestamp_millis(ms as i64)),
                ) {
                    (Some(s), Some(at_end)) => {
                        let later = s.state_at(at_end);
                        if later.active {
                            later.until.map(|t| t.timestamp_millis() as u64)
                        } else {
                            snooze_unix
                        }
                    }
                    _ => snooze_unix,
                }
            }
            (None, Some(s)) if s.active => s.until.map(|t| t.timestamp_millis() as u64),
            _ => None,
        };
        let after = until.or_else(|| to_unix(now));
        let next_start = match (
            &self.schedule,
            after.and_then(|ms| DateTime::from_timestamp_millis(ms as i64)),
        ) {
            (Some(s), Some(after)) => s
                .state_at(after)
                .next_start
                .map(|t| t.timestamp_millis() as u64),
            _ => None,
        };
        DndState {
            active,
            source,
            until: if active { until } else { None },
            next_start,
            snoozed_until: snoozed_until.and_then(to_unix),
            message: self.dnd().flatten().map(str::to_owned),
        }
    }

    // ----- timers -----

    fn idle_deadlines(&self) -> Option<(Option<Instant>, Instant)> {
        if !self.started {
            return None;
        }
        let timeout = self.config.idle_timeout?;
        let away_at = self.last_activity + timeout;
        let warn_at = self
            .config
            .idle_warning
            .filter(|lead| *lead < timeout)
            .map(|lead| self.last_activity + (timeout - lead));
        Some((warn_at, away_at))
    }

    fn background_deadline(&self) -> Option<Instant> {
        if self.lifecycle_away {
            return None;
        }
        Some(self.background_since? + self.config.background_away_after?)
    }

    /// The next instant at which an automation changes something.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let idle = match (self.idle, self.idle_deadlines()) {
            (IdlePhase::Active, Some((Some(warn_at), _))) => Some(warn_at),
            (IdlePhase::Active, Some((None, away_at))) => Some(away_at),
            (IdlePhase::Warned { away_at }, _) => Some(away_at),
            _ => None,
        };
        [
            idle,
            self.background_deadline(),
            self.schedule_next,
            self.snooze.as_ref().map(|s| s.until),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires every automation that is due at `now`; early calls change nothing.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Changes {
        let mut changes = Changes::default();
        if let Some((warn_at, away_at)) = self.idle_deadlines() {
            match self.idle {
                IdlePhase::Active if now >= away_at => {
                    self.idle = IdlePhase::Away;
                    changes.recompute = true;
                }
                IdlePhase::Active if warn_at.is_some_and(|w| now >= w) => {
                    self.idle = IdlePhase::Warned { away_at };
                    changes.warning = Some(away_at);
                }
                IdlePhase::Warned { away_at } if now >= away_at => {
                    self.idle = IdlePhase::Away;
                    changes.recompute = true;
                }
                _ => {}
            }
        }
        if self.background_deadline().is_some_and(|at| now >= at) {
            self.lifecycle_away = true;
            changes.recompute = true;
        }
        if self.snooze.as_ref().is_some_and(|s| now >= s.until) {
            self.snooze = None;
            changes.recompute = true;
        }
        if self.schedule_next.is_some_and(|at| now >= at) {
            changes = merge(changes, self.evaluate_schedule(now));
        }
        changes
    }
}

fn merge(a: Changes, b: Changes) -> Changes {
    Changes {
        recompute: a.recompute || b.recompute,
        warning: b.warning.or(a.warning),
        warning_cancelled: a.warning_cancelled || b.warning_cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Activity;

    fn manual(availability: Availability) -> Status {
        Status::new(availability)
            .with_message("mine")
            .with_activity(Activity::new("in_studio", "Ableton Live 12"))
    }

    /// (manual, dnd, idle, background) => (availability, message, reason)
    type Row<'a> = (
        Availability,
        Option<Option<&'a str>>,
        bool,
        bool,
        Availability,
        &'a str,
        StatusReason,
    );

    /// The precedence table, row by row (module documentation).
    #[test]
    fn precedence_table_row_by_row() {
        use Availability::*;
        use StatusReason as R;
        let dnd_msg = Some(Some("quiet hours"));
        let dnd_plain = Some(None);
        // (manual, dnd, idle, background) => (availability, message, reason)
        let rows: Vec<Row> = vec![
            // Rule 0: invisible beats everything.
            (Invisible, dnd_msg, true, true, Invisible, "mine", R::Manual),
            // Rule 1: explicit busy beats everything, including DND, idle and background.
            (Busy, None, false, false, Busy, "mine", R::Manual),
            (Busy, dnd_msg, true, true, Busy, "mine", R::Manual),
            // Rule 2: DND beats explicit away, idle and background; its message replaces yours if set.
            (Online, dnd_msg, false, false, Busy, "quiet hours", R::Dnd),
            (Away, dnd_msg, false, false, Busy, "quiet hours", R::Dnd),
            (Online, dnd_plain, true, true, Busy, "mine", R::Dnd),
            // Rule 3: explicit away beats idle and background.
            (Away, None, true, true, Away, "mine", R::Manual),
            // Rule 4: idle turns online into away.
            (Online, None, true, false, Away, "mine", R::Idle),
            (Online, None, true, true, Away, "mine", R::Idle),
            // Rule 5: background turns online into away.
            (Online, None, false, true, Away, "mine", R::Lifecycle),
            // Rule 6: otherwise your choice.
            (Online, None, false, false, Online, "mine", R::Manual),
        ];
        for (i, (m, dnd, idle, bg, availability, message, reason)) in rows.into_iter().enumerate() {
            let (status, why) = combine(&manual(m), dnd, idle, bg);
            assert_eq!(status.availability, availability, "row {i}");
            assert_eq!(status.message.as_deref(), Some(message), "row {i}");
            assert_eq!(
                status.activity,
                Some(Activity::new("in_studio", "Ableton Live 12")),
                "row {i}: activity kept"
            );
            assert_eq!(why, reason, "row {i}");
        }
    }
}
