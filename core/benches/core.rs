//! The sans-IO core's hot paths, on one core with no I/O (goals in BENCHMARKS.md):
//! - `decode_apply`: a `presence` frame decoded and applied to the roster, its event drained (goal ≥ 1 M/s);
//! - `decode`: the frame decode alone, for comparison;
//! - `encode`: a `set_status` frame with a message and an activity written (what every status change sends),
//!   beside `encode_with_serde`, the serde reference;
//! - `dnd_state_at`: a DND schedule's state and exact next transition at an instant (what the client computes
//!   to arm its one DND timer);
//! - `channel_snapshot_100k`: a watcher subscribed to 100 channels of 1,000 members takes in their snapshots,
//!   100,000 records in frames of at most 64 KiB as the server splits them.

use std::hint::black_box;
use std::time::{Duration, Instant as WallInstant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use presently_core::chrono::{DateTime, Utc};
use presently_core::dnd::{DndSchedule, DndWindow};
use presently_core::protocol::{self, ClientMessage, MAX_FRAME_BYTES, ServerMessage};
use presently_core::{
    Activity, Auto, AutoState, Availability, Choice, Client, ClientConfig, Instant, Presence,
    Status,
};

const WELCOME: &str = r#"{"type":"welcome","protocol":1,"session_id":"s1","user_id":"watcher","heartbeat_interval_ms":15000,"session_ttl_ms":45000,"max_frame_bytes":65536,"server":{"name":"bench","version":"0"},"resume_grace_ms":30000}"#;

/// How many users the `decode_apply` watcher follows.
const WATCHED: usize = 1_000;
/// Presence frames per pre-built pool: every watched user changes 100 times.
const POOL: usize = 100_000;

fn drain(client: &mut Client) -> usize {
    let mut events = 0;
    while client.poll_transmit().is_some() {}
    while client.poll_transport().is_some() {}
    while client.poll_event().is_some() {
        events += 1;
    }
    events
}

fn connected_client() -> Client {
    let mut config = ClientConfig::new("token");
    config.automation.idle_timeout = None;
    let mut client = Client::new(config, 1);
    client.connect(Instant::ZERO);
    drain(&mut client);
    client.handle_transport_open(Instant::ZERO);
    client.handle_frame(WELCOME, Instant::ZERO);
    drain(&mut client);
    client
}

fn record(user: usize, version: u64) -> Presence {
    let mut presence = Presence::unknown(format!("user-{user:05}"));
    presence.availability = if version.is_multiple_of(2) {
        Availability::Busy
    } else {
        Availability::Online
    };
    presence.message = Some("mixing the second verse".into());
    presence.last_active_at = Some(1_700_000_000_000 + version);
    presence.since = Some(1_700_000_000_000);
    presence.version = version;
    presence
}

/// The pool: frame k changes user k % WATCHED to version k / WATCHED + 1, so every frame is a real change.
fn presence_frames() -> Vec<String> {
    (0..POOL)
        .map(|k| {
            ServerMessage::Presence {
                user: record(k % WATCHED, (k / WATCHED + 1) as u64),
            }
            .encode()
        })
        .collect()
}

fn watcher() -> Client {
    let mut client = connected_client();
    let users: Vec<String> = (0..WATCHED).map(|u| format!("user-{u:05}")).collect();
    client
        .subscribe(users, Instant::ZERO)
        .expect("valid subscription");
    drain(&mut client);
    client
}

fn decode_apply(c: &mut Criterion) {
    let frames = presence_frames();
    println!(
        "presence frame: {} bytes, e.g. {}",
        frames[0].len(),
        frames[0]
    );
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_apply", |b| {
        b.iter_custom(|iters| {
            // A fresh watcher for every pass over the pool (not timed), so that every frame is newer than what
            // the roster holds.
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let take = left.min(POOL);
                let mut client = watcher();
                let now = Instant::from_millis(1);
                let started = WallInstant::now();
                for frame in &frames[..take] {
                    client.handle_frame(black_box(frame), now);
                    black_box(drain(&mut client));
                }
                total += started.elapsed();
                assert_eq!(client.stats().stale_updates, 0);
                left -= take;
            }
            total
        })
    });
    group.bench_function("decode", |b| {
        let mut k = 0;
        b.iter(|| {
            k = (k + 1) % POOL;
            black_box(ServerMessage::decode(
                black_box(&frames[k]),
                MAX_FRAME_BYTES,
            ))
        })
    });
    // The serde reference decoder on the same frames, for comparison (clients run the pull reader above).
    group.bench_function("decode_with_serde", |b| {
        let mut k = 0;
        b.iter(|| {
            k = (k + 1) % POOL;
            black_box(ServerMessage::decode_with_serde(
                black_box(&frames[k]),
                MAX_FRAME_BYTES,
            ))
        })
    });
    group.finish();
}

fn dnd(c: &mut Criterion) {
    let schedule = DndSchedule::new(
        "America/New_York",
        vec![
            DndWindow::parse("weekdays", "22:00", "07:00").expect("window"),
            DndWindow::parse("weekend", "00:00", "10:00").expect("window"),
        ],
    )
    .expect("schedule");
    let start = DateTime::<Utc>::from_timestamp(1_709_856_000, 0).expect("instant"); // 2024-03-08, before DST
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function("dnd_state_at", |b| {
        let mut step = 0i64;
        b.iter(|| {
            // A different instant every call, 37 minutes apart, across the spring DST change.
            step = (step + 1) % 2_000;
            let now = start + presently_core::chrono::Duration::minutes(step * 37);
            let state = schedule.state_at(black_box(now));
            black_box(state.next_transition())
        })
    });
    group.finish();
}

const CHANNELS: usize = 100;
const MEMBERS: usize = 1_000;

fn channel_snapshot(c: &mut Criterion) {
    let channels: Vec<String> = (0..CHANNELS).map(|c| format!("room-{c:03}")).collect();
    let mut frames = Vec::new();
    for (c, channel) in channels.iter().enumerate() {
        let members: Vec<Presence> = (0..MEMBERS).map(|m| record(c * MEMBERS + m, 1)).collect();
        frames.extend(protocol::split_records(
            members,
            MAX_FRAME_BYTES,
            |members, more| ServerMessage::ChannelSnapshot {
                channel: channel.clone(),
                members,
                more,
            },
        ));
    }
    println!(
        "channel snapshots: {} frames, {} bytes for {} records",
        frames.len(),
        frames.iter().map(String::len).sum::<usize>(),
        CHANNELS * MEMBERS
    );
    let mut group = c.benchmark_group("core");
    group.sample_size(10);
    group.throughput(Throughput::Elements((CHANNELS * MEMBERS) as u64));
    group.bench_function("channel_snapshot_100k", |b| {
        b.iter_batched(
            || {
                let mut client = connected_client();
                client
                    .subscribe_channels(channels.clone(), Instant::ZERO)
                    .expect("valid channels");
                drain(&mut client);
                client
            },
            |mut client| {
                for frame in &frames {
                    client.handle_frame(frame, Instant::from_millis(1));
                    drain(&mut client);
                }
                assert_eq!(client.roster().count(), CHANNELS * MEMBERS);
                client
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let message = ClientMessage::SetStatus {
        reference: Some("r42".to_owned()),
        choice: Choice {
            status: Status::new(Availability::Busy)
                .with_message("Mixing \"Night Drive\" — back at 6")
                .with_activity(Activity::new("in_studio", "Ableton Live 12")),
            chosen_at: Some(1_763_900_000_000),
        },
        auto: Some(Auto {
            state: AutoState::Active,
            message: None,
        }),
    };
    assert_eq!(message.encode(), message.encode_with_serde());
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| b.iter(|| black_box(&message).encode()));
    group.bench_function("encode_with_serde", |b| {
        b.iter(|| black_box(&message).encode_with_serde())
    });
    group.finish();
}

criterion_group!(benches, decode_apply, encode, dnd, channel_snapshot);
criterion_main!(benches);
