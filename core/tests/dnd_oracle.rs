//! `DndSchedule::state_at` against an independent oracle: the same documented rules evaluated minute by minute
//! with a different time library (jiff, with its own bundled tz database) and no merging cleverness.

use chrono::{DateTime, Utc};
use jiff::civil;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};
use presently_core::{DaySet, DndSchedule, DndWindow, LocalTime, Zone};
use proptest::prelude::*;

/// Zones whose rules have not changed recently (so both tz databases agree), with odd offsets and DST kinds.
const ZONES: &[&str] = &[
    "America/New_York",
    "America/Los_Angeles",
    "America/St_Johns",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Dublin",
    "Australia/Lord_Howe",
    "Australia/Sydney",
    "Asia/Kathmandu",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "UTC",
];

#[derive(Debug, Clone)]
struct Window {
    days: u8,
    start: u16,
    end: u16,
}

/// Local date-time to an instant by the documented rules: gaps move to the first valid minute after, folds take
/// the first occurrence.
fn resolve(tz: &TimeZone, local: civil::DateTime) -> Timestamp {
    let mut probe = local;
    loop {
        match tz.to_ambiguous_timestamp(probe).offset() {
            AmbiguousOffset::Unambiguous { offset } => return offset.to_timestamp(probe).unwrap(),
            AmbiguousOffset::Fold { before, after } => {
                return before
                    .to_timestamp(probe)
                    .unwrap()
                    .min(after.to_timestamp(probe).unwrap());
            }
            AmbiguousOffset::Gap { .. } => probe = probe.checked_add(1.minute()).unwrap(),
        }
    }
}

/// Every occurrence of every window starting on local dates around `now`, unmerged.
fn occurrences(tz: &TimeZone, windows: &[Window], now: Timestamp) -> Vec<(Timestamp, Timestamp)> {
    let today = now.to_zoned(tz.clone()).date();
    let mut out = Vec::new();
    for offset in -3..=14 {
        let date = today.checked_add(offset.days()).unwrap();
        let weekday = date.weekday().to_monday_zero_offset();
        for w in windows {
            if w.days & (1 << weekday) == 0 {
                continue;
            }
            let at = |date: civil::Date, minute: u16| {
                resolve(
                    tz,
                    date.to_datetime(civil::time((minute / 60) as i8, (minute % 60) as i8, 0, 0)),
                )
            };
            let end_date = if w.end <= w.start {
                date.tomorrow().unwrap()
            } else {
                date
            };
            let (start, end) = (at(date, w.start), at(end_date, w.end));
            if end > start {
                out.push((start, end));
            }
        }
    }
    out
}

fn active(occurrences: &[(Timestamp, Timestamp)], t: Timestamp) -> bool {
    occurrences.iter().any(|(s, e)| *s <= t && t < *e)
}

fn to_chrono(t: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), 0).unwrap()
}

fn window_strategy() -> impl Strategy<Value = Window> {
    // Times cluster around the small hours, where DST transitions happen.
    let minute = prop_oneof![0u16..1440, 0u16..240, (0u16..96).prop_map(|q| q * 15)];
    (1u8..=127, minute.clone(), minute)
        .prop_filter("start != end", |(_, s, e)| s != e)
        .prop_map(|(days, start, end)| Window { days, start, end })
}

fn instant_strategy() -> impl Strategy<Value = Timestamp> {
    // Mostly in the months where DST changes somewhere; any second of the minute.
    let month = prop_oneof![3 => prop::sample::select(vec![3i8, 4, 9, 10, 11]), 1 => 1i8..=12];
    (2020i16..2036, month, 1i8..=28, 0i8..24, 0i8..60, 0i8..60).prop_map(|(y, mo, d, h, mi, s)| {
        civil::date(y, mo, d)
            .at(h, mi, s, 0)
            .to_zoned(TimeZone::UTC)
            .unwrap()
            .timestamp()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn state_at_agrees_with_a_minute_by_minute_oracle(
        zone in prop::sample::select(ZONES),
        windows in prop::collection::vec(window_strategy(), 1..=3),
        base in instant_strategy(),
        near_transition in any::<bool>(),
        before_transition_minutes in 0i64..(3 * 24 * 60),
    ) {
        let tz = TimeZone::get(zone).unwrap();
        // Half of the cases start shortly before one of the zone's real DST transitions.
        let now = match tz.following(base).next() {
            Some(transition) if near_transition => {
                transition.timestamp().checked_sub((before_transition_minutes * 60).seconds()).unwrap()
            }
            _ => base,
        };
        let schedule = DndSchedule::new(
            zone,
            windows
                .iter()
                .map(|w| {
                    let days = DaySet::of(
                        [chrono::Weekday::Mon, chrono::Weekday::Tue, chrono::Weekday::Wed, chrono::Weekday::Thu,
                         chrono::Weekday::Fri, chrono::Weekday::Sat, chrono::Weekday::Sun]
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| w.days & (1 << i) != 0)
                            .map(|(_, d)| d),
                    );
                    let t = |m: u16| LocalTime::new((m / 60) as u8, (m % 60) as u8).unwrap();
                    DndWindow::new(days, t(w.start), t(w.end)).unwrap()
                })
                .collect(),
        )
        .unwrap();
        let occ = occurrences(&tz, &windows, now);
        let state = schedule.state_at(to_chrono(now));
        // The same schedule with the zone from the host (as the browser build does with Intl): offsets only, here
        // from jiff's own database, must give the same answer.
        let host_tz = tz.clone();
        let host = DndSchedule::in_zone(
            Zone::host(zone, move |secs| {
                Timestamp::from_second(secs).ok().map(|t| host_tz.to_offset(t).seconds())
            }),
            schedule.windows().to_vec(),
        )
        .unwrap();
        prop_assert_eq!(host.state_at(to_chrono(now)), state, "host zone vs database zone");

        let expected_active = active(&occ, now);
        prop_assert_eq!(state.active, expected_active, "active at {}", now);

        // Walk forward minute by minute from the next whole minute.
        let first_minute = Timestamp::from_second(now.as_second() - now.as_second().rem_euclid(60) + 60).unwrap();
        let limit = 9 * 24 * 60;
        let mut t = first_minute;
        let mut until = None;
        if expected_active {
            for _ in 0..limit {
                if !active(&occ, t) {
                    until = Some(t);
                    break;
                }
                t = t.checked_add(1.minute()).unwrap();
            }
            match until {
                Some(u) => prop_assert_eq!(state.until, Some(to_chrono(u)), "until"),
                // Active for the whole walk: the schedule must agree that the period is at least that long.
                None => prop_assert!(state.until.is_none_or(|u| u >= to_chrono(t)), "until {:?}", state.until),
            }
        } else {
            prop_assert_eq!(state.until, None);
        }
        if expected_active && until.is_none() {
            return Ok(());
        }
        // The next start: the first minute after that where DND is on.
        let mut next = None;
        for _ in 0..limit {
            if active(&occ, t) {
                next = Some(t);
                break;
            }
            t = t.checked_add(1.minute()).unwrap();
        }
        match next {
            Some(n) => prop_assert_eq!(state.next_start, Some(to_chrono(n)), "next start"),
            None => prop_assert!(state.next_start.is_none_or(|n| n > to_chrono(t))),
        }
    }
}
