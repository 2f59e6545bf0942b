//! Local do-not-disturb scheduling: weekly windows of local time in an IANA timezone.
//!
//! A [`DndSchedule`] holds one timezone and several [`DndWindow`]s. A window covers, on each of its days, the
//! local times from `start` (inclusive) to `end` (exclusive); a window whose end is not after its start crosses
//! midnight and belongs to the day it starts (`Fri 23:00–02:00` ends on Saturday at 02:00).
//!
//! Daylight-saving rules, applied to every start and end:
//! - a local time that does not exist (it falls in a spring-forward gap) takes effect at the first valid instant
//!   after it, which is the moment the clocks jump (02:30 on a night when 02:00 jumps to 03:00 means 03:00);
//! - a local time that exists twice (fall-back) means its first occurrence.
//!
//! A window occurrence that these rules make empty (start and end both inside one gap) is skipped.
//!
//! Timezones come from one of two places ([`Zone`]): the IANA database compiled in by chrono-tz (feature `tzdb`,
//! on by default), or the host, which answers "what is the UTC offset at this instant?" (a browser's `Intl`
//! knows every zone, so the WebAssembly build does not carry a second copy of the database). Both give the same
//! results: local-to-UTC resolution is derived from offsets alone.
//! [`DndSchedule::state_at`] computes, exactly, whether DND is on, until when, and when it next starts, so a
//! client arms one timer for the next transition instead of checking every minute.

use core::fmt;
use core::str::FromStr;

use std::sync::Arc;

use crate::json_text::Quoted;

use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday,
};

/// Answers a timezone's UTC offset, in seconds east of UTC, at an instant given in Unix seconds; `None` when it
/// cannot tell (the instant is then read as UTC).
pub type OffsetFn = Arc<dyn Fn(i64) -> Option<i32> + Send + Sync>;

/// A timezone: from the compiled-in IANA database, or from the host.
#[derive(Clone)]
pub enum Zone {
    /// A zone of the IANA database compiled in by chrono-tz.
    #[cfg(feature = "tzdb")]
    Tzdb(chrono_tz::Tz),
    /// A zone the host knows (e.g. the browser's `Intl`), by name and offset function.
    Host {
        /// The IANA name.
        name: String,
        /// The zone's offset at an instant.
        offset_at: OffsetFn,
    },
}

impl Zone {
    /// A zone of the compiled-in IANA database, by name (`"Europe/Berlin"`).
    #[cfg(feature = "tzdb")]
    pub fn named(name: &str) -> Result<Zone, ScheduleError> {
        name.trim()
            .parse::<chrono_tz::Tz>()
            .map(Zone::Tzdb)
            .map_err(|_| ScheduleError::UnknownTimezone(name.to_owned()))
    }

    /// A zone the host knows: `offset_at(unix_seconds)` gives its UTC offset in seconds at that instant.
    pub fn host(
        name: impl Into<String>,
        offset_at: impl Fn(i64) -> Option<i32> + Send + Sync + 'static,
    ) -> Zone {
        Zone::Host {
            name: name.into(),
            offset_at: Arc::new(offset_at),
        }
    }

    /// The IANA name.
    pub fn name(&self) -> &str {
        match self {
            #[cfg(feature = "tzdb")]
            Zone::Tzdb(tz) => tz.name(),
            Zone::Host { name, .. } => name,
        }
    }

    /// The UTC offset in seconds at `instant`.
    pub fn offset_at(&self, instant: DateTime<Utc>) -> i32 {
        match self {
            #[cfg(feature = "tzdb")]
            Zone::Tzdb(tz) => {
                use chrono::Offset;
                tz.offset_from_utc_datetime(&instant.naive_utc())
                    .fix()
                    .local_minus_utc()
            }
            Zone::Host { offset_at, .. } => offset_at(instant.timestamp()).unwrap_or(0),
        }
    }

    /// The local date and time at `instant`.
    pub fn local(&self, instant: DateTime<Utc>) -> NaiveDateTime {
        instant.naive_utc() + chrono::TimeDelta::seconds(i64::from(self.offset_at(instant)))
    }

    /// The instants at which local time reads `local`: none in a gap, two in a fold (earlier first).
    fn instants(&self, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
        let as_utc = Utc.from_utc_datetime(&local);
        // Offsets in force a day either side cover every transition near `local` (transitions are days apart).
        let mut offsets = [
            self.offset_at(as_utc - chrono::TimeDelta::days(1)),
            self.offset_at(as_utc + chrono::TimeDelta::days(1)),
        ];
        offsets.sort_unstable();
        let mut found: Vec<DateTime<Utc>> = offsets
            .iter()
            .rev()
            .map(|&offset| as_utc - chrono::TimeDelta::seconds(i64::from(offset)))
            .filter(|&instant| self.local(instant) == local)
            .collect();
        found.sort();
        found.dedup();
        found
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Zone {}

/// Why a schedule, window, day or time is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// The timezone is not an IANA name the timezone database knows.
    UnknownTimezone(String),
    /// A time is not `HH:MM` between `00:00` and `23:59`.
    InvalidTime(String),
    /// A day name is not recognised.
    InvalidDay(String),
    /// A window has no days.
    NoDays,
    /// A window starts and ends at the same time (it would be empty or cover whole days; say which with two
    /// windows).
    StartEqualsEnd(LocalTime),
    /// A schedule has no windows.
    NoWindows,
    /// The DND message is too long or holds control characters.
    InvalidMessage(String),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::UnknownTimezone(tz) => {
                write!(
                    f,
                    "unknown timezone {}: use an IANA name such as \"Europe/Berlin\"",
                    Quoted(tz)
                )
            }
            ScheduleError::InvalidTime(t) => {
                write!(
                    f,
                    "invalid time {}: use 24-hour HH:MM between 00:00 and 23:59",
                    Quoted(t)
                )
            }
            ScheduleError::InvalidDay(d) => {
                write!(
                    f,
                    "invalid day {}: use mon, tue, wed, thu, fri, sat or sun",
                    Quoted(d)
                )
            }
            ScheduleError::NoDays => write!(f, "a DND window needs at least one day"),
            ScheduleError::StartEqualsEnd(t) => {
                write!(
                    f,
                    "a DND window cannot start and end at the same time ({t})"
                )
            }
            ScheduleError::NoWindows => write!(f, "a DND schedule needs at least one window"),
            ScheduleError::InvalidMessage(why) => write!(f, "invalid DND message: {why}"),
        }
    }
}

impl std::error::Error for ScheduleError {}

/// A local time of day with minute precision (`HH:MM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalTime {
    hour: u8,
    minute: u8,
}

impl LocalTime {
    /// `hour` 0–23 and `minute` 0–59.
    pub fn new(hour: u8, minute: u8) -> Result<Self, ScheduleError> {
        if hour > 23 || minute > 59 {
            return Err(ScheduleError::InvalidTime(format!("{hour:02}:{minute:02}")));
        }
        Ok(LocalTime { hour, minute })
    }

    /// The hour, 0–23.
    pub fn hour(self) -> u8 {
        self.hour
    }

    /// The minute, 0–59.
    pub fn minute(self) -> u8 {
        self.minute
    }

    fn naive(self) -> NaiveTime {
        // Always valid: hour ≤ 23 and minute ≤ 59 by construction.
        NaiveTime::from_hms_opt(u32::from(self.hour), u32::from(self.minute), 0)
            .unwrap_or(NaiveTime::MIN)
    }
}

impl FromStr for LocalTime {
    type Err = ScheduleError;

    /// Parses `HH:MM` (24-hour; one-digit hours such as `8:30` are accepted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ScheduleError::InvalidTime(s.to_owned());
        let (h, m) = s.trim().split_once(':').ok_or_else(invalid)?;
        if h.is_empty()
            || h.len() > 2
            || m.len() != 2
            || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(invalid());
        }
        let hour = h.parse::<u8>().map_err(|_| invalid())?;
        let minute = m.parse::<u8>().map_err(|_| invalid())?;
        LocalTime::new(hour, minute).map_err(|_| invalid())
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

/// A set of days of the week.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DaySet(u8);

impl DaySet {
    /// No days.
    pub const EMPTY: DaySet = DaySet(0);
    /// Monday to Friday.
    pub const WEEKDAYS: DaySet = DaySet(0b001_1111);
    /// Saturday and Sunday.
    pub const WEEKEND: DaySet = DaySet(0b110_0000);
    /// Every day.
    pub const EVERY_DAY: DaySet = DaySet(0b111_1111);

    /// The set of these days.
    pub fn of(days: impl IntoIterator<Item = Weekday>) -> Self {
        days.into_iter()
            .fold(DaySet::EMPTY, |set, day| set.with(day))
    }

    /// This set plus `day`.
    pub fn with(self, day: Weekday) -> Self {
        DaySet(self.0 | 1 << day.num_days_from_monday())
    }

    /// Whether `day` is in the set.
    pub fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << day.num_days_from_monday()) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The days in the set, Monday first.
    pub fn iter(self) -> impl Iterator<Item = Weekday> {
        [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ]
        .into_iter()
        .filter(move |d| self.contains(*d))
    }
}

impl FromStr for DaySet {
    type Err = ScheduleError;

    /// Parses a comma-separated list of day names or three-letter abbreviations (`"mon,tue,fri"`,
    /// `"Saturday, Sunday"`), or one of `weekdays`, `weekend`, `daily`. An empty list is an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = DaySet::EMPTY;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            set = match part.to_ascii_lowercase().as_str() {
                "weekdays" => DaySet(set.0 | DaySet::WEEKDAYS.0),
                "weekend" | "weekends" => DaySet(set.0 | DaySet::WEEKEND.0),
                "daily" | "every day" | "everyday" => DaySet::EVERY_DAY,
                name => set.with(
                    name.parse::<Weekday>()
                        .map_err(|_| ScheduleError::InvalidDay(part.to_owned()))?,
                ),
            };
        }
        if set.is_empty() {
            return Err(ScheduleError::NoDays);
        }
        Ok(set)
    }
}

/// One weekly window of local time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DndWindow {
    days: DaySet,
    start: LocalTime,
    end: LocalTime,
}

impl DndWindow {
    /// A window on `days` from `start` to `end`; `end` earlier than `start` crosses midnight.
    pub fn new(days: DaySet, start: LocalTime, end: LocalTime) -> Result<Self, ScheduleError> {
        if days.is_empty() {
            return Err(ScheduleError::NoDays);
        }
        if start == end {
            return Err(ScheduleError::StartEqualsEnd(start));
        }
        Ok(DndWindow { days, start, end })
    }

    /// A window from text: `days` as for [`DaySet`]'s `FromStr`, `start` and `end` as `HH:MM`.
    pub fn parse(days: &str, start: &str, end: &str) -> Result<Self, ScheduleError> {
        DndWindow::new(days.parse()?, start.parse()?, end.parse()?)
    }

    /// The days the window starts on.
    pub fn days(&self) -> DaySet {
        self.days
    }

    /// The local start time.
    pub fn start(&self) -> LocalTime {
        self.start
    }

    /// The local end time (on the next day when not after the start).
    pub fn end(&self) -> LocalTime {
        self.end
    }

    /// Whether the window crosses midnight.
    pub fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }
}

/// A weekly DND schedule in one IANA timezone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DndSchedule {
    timezone: Zone,
    windows: Vec<DndWindow>,
    message: Option<String>,
}

/// Whether DND is on at an instant, until when, and when it next starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleState {
    /// DND is on now.
    pub active: bool,
    /// When the current DND period ends (windows that overlap or touch count as one period); `None` when not
    /// active, or when the windows cover every instant.
    pub until: Option<DateTime<Utc>>,
    /// When the next DND period starts (after `until` when active); `None` if there is none.
    pub next_start: Option<DateTime<Utc>>,
}

impl ScheduleState {
    /// The next instant at which `active` changes, if any.
    pub fn next_transition(&self) -> Option<DateTime<Utc>> {
        if self.active {
            self.until
        } else {
            self.next_start
        }
    }
}

/// How many days after the current one the schedule looks for the next period: a week and a day covers every
/// weekly window.
const LOOKAHEAD_DAYS: u64 = 9;
/// How far a period that never seems to end is followed before the schedule calls it endless.
const ENDLESS_DAYS: u64 = 60;

impl DndSchedule {
    /// A schedule in `timezone` (an IANA name such as `"America/New_York"`, from the compiled-in database) with at
    /// least one window.
    #[cfg(feature = "tzdb")]
    pub fn new(timezone: &str, windows: Vec<DndWindow>) -> Result<Self, ScheduleError> {
        DndSchedule::in_zone(Zone::named(timezone)?, windows)
    }

    /// A schedule in `zone` (from the database or the host) with at least one window.
    pub fn in_zone(zone: Zone, windows: Vec<DndWindow>) -> Result<Self, ScheduleError> {
        if windows.is_empty() {
            return Err(ScheduleError::NoWindows);
        }
        Ok(DndSchedule {
            timezone: zone,
            windows,
            message: None,
        })
    }

    /// The same schedule with a message shown as the custom status while it is on (limits of the protocol's
    /// custom message: 200 code points, no control characters).
    pub fn with_message(mut self, message: impl Into<String>) -> Result<Self, ScheduleError> {
        let message = message.into();
        let status = crate::Status::new(crate::Availability::Busy).with_message(message.clone());
        crate::protocol::validate_status(&status)
            .map_err(|e| ScheduleError::InvalidMessage(e.to_string()))?;
        self.message = (!message.is_empty()).then_some(message);
        Ok(self)
    }

    /// The timezone.
    pub fn timezone(&self) -> &Zone {
        &self.timezone
    }

    /// The windows.
    pub fn windows(&self) -> &[DndWindow] {
        &self.windows
    }

    /// The message shown while DND is on, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The UTC instant a local date and time means, by the DST rules of the module documentation.
    pub fn resolve(&self, local: NaiveDateTime) -> DateTime<Utc> {
        resolve(&self.timezone, local)
    }

    /// The DND periods that begin on local dates `first..=last`, merged where they overlap or touch, in order.
    pub fn periods(
        &self,
        first: NaiveDate,
        last: NaiveDate,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let mut periods = Vec::new();
        let mut date = first;
        while date <= last {
            for window in &self.windows {
                if !window.days.contains(date.weekday()) {
                    continue;
                }
                let end_date = if window.crosses_midnight() {
                    date.succ_opt().unwrap_or(date)
                } else {
                    date
                };
                let start = self.resolve(date.and_time(window.start.naive()));
                let end = self.resolve(end_date.and_time(window.end.naive()));
                if end > start {
                    periods.push((start, end));
                }
            }
            match date.succ_opt() {
                Some(next) => date = next,
                None => break,
            }
        }
        periods.sort();
        let mut merged: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::with_capacity(periods.len());
        for (start, end) in periods {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// Whether DND is on at `now`, until when, and when it next starts — exactly, with no sampling.
    pub fn state_at(&self, now: DateTime<Utc>) -> ScheduleState {
        let today = self.timezone.local(now).date();
        // Periods that started up to two days ago may still be running (a window crossing midnight, merged with
        // the next day's).
        let first = today.checked_sub_days(Days::new(2)).unwrap_or(today);
        let mut horizon = today
            .checked_add_days(Days::new(LOOKAHEAD_DAYS))
            .unwrap_or(today);
        loop {
            let periods = self.periods(first, horizon);
            let horizon_end = self.resolve(horizon.and_time(NaiveTime::MIN));
            let current = periods
                .iter()
                .find(|(start, end)| *start <= now && now < *end);
            let state = match current {
                Some(&(_, end)) if end >= horizon_end => {
                    // Runs to the edge of what was computed: look further, or call it endless.
                    if horizon
                        >= today
                            .checked_add_days(Days::new(ENDLESS_DAYS))
                            .unwrap_or(today)
                    {
                        return ScheduleState {
                            active: true,
                            until: None,
                            next_start: None,
                        };
                    }
                    horizon = horizon
                        .checked_add_days(Days::new(LOOKAHEAD_DAYS))
                        .unwrap_or(horizon);
                    continue;
                }
                Some(&(_, end)) => ScheduleState {
                    active: true,
                    until: Some(end),
                    next_start: periods.iter().map(|p| p.0).find(|start| *start > end),
                },
                None => ScheduleState {
                    active: false,
                    until: None,
                    next_start: periods.iter().map(|p| p.0).find(|start| *start > now),
                },
            };
            return state;
        }
    }
}

/// Local date-time to UTC: gaps resolve to the first valid instant after, ambiguities to the first occurrence.
fn resolve(zone: &Zone, local: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    // Gaps are at most a few hours long; step forward minute by minute until the local time exists.
    for _ in 0..=(26 * 60) {
        if let Some(&first) = zone.instants(probe).first() {
            return first;
        }
        match probe.checked_add_signed(chrono::TimeDelta::minutes(1)) {
            Some(next) => probe = next,
            None => break,
        }
    }
    // Not reached for real timezones; read the local time as UTC rather than fail.
    Utc.from_utc_datetime(&local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn schedule(tz: &str, windows: &[(&str, &str, &str)]) -> DndSchedule {
        DndSchedule::new(
            tz,
            windows
                .iter()
                .map(|(d, s, e)| DndWindow::parse(d, s, e).unwrap())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn parsing_and_clear_errors() {
        assert_eq!("22:00".parse::<LocalTime>(), LocalTime::new(22, 0));
        assert_eq!("8:05".parse::<LocalTime>(), LocalTime::new(8, 5));
        for bad in [
            "25:00", "24:00", "12:60", "12", "12:5", "ab:cd", "", "-1:00", "12:00:00",
        ] {
            assert_eq!(
                bad.parse::<LocalTime>(),
                Err(ScheduleError::InvalidTime(bad.into())),
                "{bad}"
            );
        }
        assert_eq!("".parse::<DaySet>(), Err(ScheduleError::NoDays));
        assert_eq!(
            "mon,funday".parse::<DaySet>(),
            Err(ScheduleError::InvalidDay("funday".into()))
        );
        assert_eq!(
            "Mon, friday".parse::<DaySet>(),
            Ok(DaySet::of([Weekday::Mon, Weekday::Fri]))
        );
        assert_eq!("weekdays".parse::<DaySet>(), Ok(DaySet::WEEKDAYS));
        assert_eq!(
            DndWindow::parse("mon", "09:00", "09:00"),
            Err(ScheduleError::StartEqualsEnd(LocalTime::new(9, 0).unwrap()))
        );
        assert_eq!(
            DndWindow::new(
                DaySet::EMPTY,
                "09:00".parse().unwrap(),
                "10:00".parse().unwrap()
            ),
            Err(ScheduleError::NoDays)
        );
        assert_eq!(
            DndSchedule::new("Mars/Olympus_Mons", vec![]),
            Err(ScheduleError::UnknownTimezone("Mars/Olympus_Mons".into()))
        );
        assert_eq!(
            DndSchedule::new("UTC", vec![]),
            Err(ScheduleError::NoWindows)
        );
        let s = schedule("UTC", &[("daily", "22:00", "07:00")]);
        assert!(s.clone().with_message("x".repeat(201)).is_err());
        assert!(
            ScheduleError::UnknownTimezone("x".into())
                .to_string()
                .contains("IANA")
        );
        assert!(
            ScheduleError::InvalidTime("25:00".into())
                .to_string()
                .contains("HH:MM")
        );
    }

    #[test]
    fn a_simple_evening_window() {
        let s = schedule("Europe/Berlin", &[("weekdays", "22:00", "07:00")]);
        // Wednesday 2026-06-10 12:00 UTC = 14:00 CEST: off, next start 22:00 CEST = 20:00 UTC.
        let st = s.state_at(utc("2026-06-10T12:00:00Z"));
        assert_eq!(
            st,
            ScheduleState {
                active: false,
                until: None,
                next_start: Some(utc("2026-06-10T20:00:00Z"))
            }
        );
        // 23:30 CEST: on until Thursday 07:00 CEST.
        let st = s.state_at(utc("2026-06-10T21:30:00Z"));
        assert!(st.active);
        assert_eq!(st.until, Some(utc("2026-06-11T05:00:00Z")));
        assert_eq!(st.next_start, Some(utc("2026-06-11T20:00:00Z")));
        // Start is inclusive, end exclusive.
        assert!(s.state_at(utc("2026-06-10T20:00:00Z")).active);
        assert!(!s.state_at(utc("2026-06-11T05:00:00Z")).active);
        // Friday's window ends Saturday 07:00; the next is Monday 22:00.
        let st = s.state_at(utc("2026-06-13T04:00:00Z"));
        assert_eq!(st.until, Some(utc("2026-06-13T05:00:00Z")));
        assert_eq!(st.next_start, Some(utc("2026-06-15T20:00:00Z")));
    }

    #[test]
    fn a_window_crossing_midnight_on_custom_days_ends_on_the_next_day() {
        // Only Friday 23:00–02:00: ends Saturday 02:00, and nothing happens on Saturday night.
        let s = schedule("America/New_York", &[("fri", "23:00", "02:00")]);
        let fri_2330 = utc("2026-06-13T03:30:00Z"); // Fri 23:30 EDT
        let st = s.state_at(fri_2330);
        assert!(st.active);
        assert_eq!(st.until, Some(utc("2026-06-13T06:00:00Z"))); // Sat 02:00 EDT
        assert_eq!(st.next_start, Some(utc("2026-06-20T03:00:00Z"))); // next Fri 23:00 EDT
        assert!(
            !s.state_at(utc("2026-06-14T03:30:00Z")).active,
            "Saturday 23:30 is not covered"
        );
        assert!(
            !s.state_at(utc("2026-06-12T05:00:00Z")).active,
            "Friday 01:00 is not covered (Thursday's night)"
        );
    }

    #[test]
    fn overlapping_and_touching_windows_form_one_period() {
        let s = schedule(
            "UTC",
            &[
                ("mon", "09:00", "12:00"),
                ("mon", "11:00", "13:00"),
                ("mon", "13:00", "14:00"),
            ],
        );
        let st = s.state_at(utc("2026-06-08T09:30:00Z"));
        assert_eq!(st.until, Some(utc("2026-06-08T14:00:00Z")));
        assert_eq!(st.next_start, Some(utc("2026-06-15T09:00:00Z")));
    }

    #[test]
    fn windows_covering_every_instant_never_end() {
        let s = schedule(
            "UTC",
            &[("daily", "12:00", "00:00"), ("daily", "00:00", "12:00")],
        );
        let st = s.state_at(utc("2026-06-08T09:30:00Z"));
        assert_eq!(
            st,
            ScheduleState {
                active: true,
                until: None,
                next_start: None
            }
        );
    }

    #[test]
    fn new_york_spring_forward_2026_03_08() {
        // 02:00 EST jumps to 03:00 EDT at 07:00 UTC.
        let jump = utc("2026-03-08T07:00:00Z");
        // A start inside the gap takes effect when the clocks jump.
        let s = schedule("America/New_York", &[("sun", "02:30", "04:00")]);
        let st = s.state_at(utc("2026-03-08T06:00:00Z")); // 01:00 EST
        assert_eq!(st.next_start, Some(jump));
        assert!(s.state_at(jump).active);
        assert_eq!(s.state_at(jump).until, Some(utc("2026-03-08T08:00:00Z"))); // 04:00 EDT
        // An end inside the gap also resolves to the jump.
        let s = schedule("America/New_York", &[("sun", "01:00", "02:30")]);
        let st = s.state_at(utc("2026-03-08T06:30:00Z")); // 01:30 EST
        assert_eq!(st.until, Some(jump));
        // A window entirely inside the gap is empty that day and starts next week.
        let s = schedule("America/New_York", &[("sun", "02:10", "02:50")]);
        let st = s.state_at(utc("2026-03-08T06:00:00Z"));
        assert_eq!(st.next_start, Some(utc("2026-03-15T06:10:00Z"))); // Sun 02:10 EDT
        // A window across the jump lasts one hour less in real time.
        let s = schedule("America/New_York", &[("sat", "22:00", "06:00")]);
        let st = s.state_at(utc("2026-03-08T04:00:00Z")); // Sat 23:00 EST
        assert_eq!(st.until, Some(utc("2026-03-08T10:00:00Z"))); // 06:00 EDT
    }

    #[test]
    fn new_york_fall_back_2026_11_01() {
        // 02:00 EDT falls back to 01:00 EST at 06:00 UTC: 01:00–01:59 happen twice.
        let s = schedule("America/New_York", &[("sun", "01:30", "03:00")]);
        let st = s.state_at(utc("2026-11-01T04:00:00Z")); // 00:00 EDT
        assert_eq!(
            st.next_start,
            Some(utc("2026-11-01T05:30:00Z")),
            "the first 01:30 (EDT)"
        );
        assert_eq!(
            s.state_at(utc("2026-11-01T05:30:00Z")).until,
            Some(utc("2026-11-01T08:00:00Z"))
        ); // 03:00 EST
        // An end in the repeated hour ends at its first occurrence and does not come back for the second.
        let s = schedule("America/New_York", &[("sun", "00:00", "01:30")]);
        let st = s.state_at(utc("2026-11-01T04:30:00Z"));
        assert_eq!(st.until, Some(utc("2026-11-01T05:30:00Z")));
        assert!(
            !s.state_at(utc("2026-11-01T06:30:00Z")).active,
            "01:30 EST, the second time round"
        );
        // A window across the change lasts one hour more in real time.
        let s = schedule("America/New_York", &[("sat", "22:00", "06:00")]);
        let st = s.state_at(utc("2026-11-01T03:00:00Z")); // Sat 23:00 EDT
        assert_eq!(st.until, Some(utc("2026-11-01T11:00:00Z"))); // 06:00 EST
    }

    #[test]
    fn london_changes_at_one_in_the_morning() {
        // 2026-03-29 01:00 GMT → 02:00 BST; 2026-10-25 02:00 BST → 01:00 GMT.
        let s = schedule("Europe/London", &[("sun", "01:15", "08:00")]);
        assert_eq!(
            s.state_at(utc("2026-03-28T23:00:00Z")).next_start,
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            s.state_at(utc("2026-10-24T22:00:00Z")).next_start,
            Some(utc("2026-10-25T00:15:00Z")),
            "first 01:15 is BST"
        );
        assert_eq!(
            s.state_at(utc("2026-10-25T01:00:00Z")).until,
            Some(utc("2026-10-25T08:00:00Z"))
        );
    }

    #[test]
    fn lord_howe_has_a_thirty_minute_shift() {
        // Australia/Lord_Howe: +10:30 standard, +11:00 in summer. 2026-10-04 02:00 → 02:30 (gap of 30 min);
        // 2026-04-05 02:00 → 01:30 (01:30–01:59 repeated).
        let s = schedule("Australia/Lord_Howe", &[("sun", "02:15", "06:00")]);
        let st = s.state_at(utc("2026-10-03T14:00:00Z")); // Sun 00:30 +10:30
        assert_eq!(
            st.next_start,
            Some(utc("2026-10-03T15:30:00Z")),
            "02:15 does not exist: 02:30 +11:00"
        );
        assert_eq!(
            s.state_at(utc("2026-10-03T15:30:00Z")).until,
            Some(utc("2026-10-03T19:00:00Z"))
        ); // 06:00 +11
        let s = schedule("Australia/Lord_Howe", &[("sun", "01:45", "03:00")]);
        let st = s.state_at(utc("2026-04-04T13:00:00Z")); // Sun 00:00 +11:00
        assert_eq!(
            st.next_start,
            Some(utc("2026-04-04T14:45:00Z")),
            "first 01:45 is +11:00"
        );
        assert_eq!(
            s.state_at(utc("2026-04-04T14:45:00Z")).until,
            Some(utc("2026-04-04T16:30:00Z"))
        ); // 03:00 +10:30
    }

    #[test]
    fn kathmandu_is_five_forty_five_ahead() {
        let s = schedule("Asia/Kathmandu", &[("weekdays", "22:00", "06:30")]);
        let st = s.state_at(utc("2026-06-10T12:00:00Z")); // Wed 17:45
        assert_eq!(st.next_start, Some(utc("2026-06-10T16:15:00Z")));
        assert_eq!(
            s.state_at(utc("2026-06-10T16:15:00Z")).until,
            Some(utc("2026-06-11T00:45:00Z"))
        );
    }
}
