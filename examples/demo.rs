//! `cargo run --example demo`
//!
//! Starts an embedded reference server and three clients — Alice's audio plugin, Bob's phone and Carol's
//! browser tab — that watch each other. It shows, live, who is online and why each status changes: a status set,
//! a message, a server crash and recovery, a plugin that goes idle and comes back, quiet hours starting in Berlin
//! time, a phone that drives through a tunnel and resumes without its watchers seeing a blip, invisible mode, and
//! an app closed. It ends by itself after about 25 seconds with how long each change took to reach its watchers.
//! Nothing to configure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use presently::presently_core::chrono::{TimeZone, Utc};
use presently::presently_core::chrono_tz::Europe::Berlin;
use presently::{
    Activity, Availability, Client, ClientInfo, ConnectionState, DndSchedule, DndWindow, Event,
    Presence, ReconnectPolicy, Status,
};
use presently_server::{RunningServer, ServerConfig};
use tokio::time::{Instant, sleep};

const SECRET: &[u8] = b"demo secret: never use this one in production";
/// Alice's plugin goes away after this long without activity (shortened for the demo).
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

fn shifted(t: SystemTime, skew_ms: i64) -> SystemTime {
    if skew_ms >= 0 {
        t + Duration::from_millis(skew_ms as u64)
    } else {
        t - Duration::from_millis(skew_ms.unsigned_abs())
    }
}

/// The three people of the demo: user id, device, client info.
const PEOPLE: [(&str, &str, &str); 3] = [
    ("alice", "audio plugin", "vst3-linux"),
    ("bob", "phone app", "ios"),
    ("carol", "browser tab", "web"),
];

/// A change someone made, and when each watcher saw it.
struct Change {
    label: String,
    user: &'static str,
    started: Instant,
    expect: Box<dyn Fn(&Presence) -> bool + Send>,
    seen_by: BTreeMap<&'static str, Duration>,
}

#[derive(Default)]
struct Tracker {
    changes: Vec<Change>,
}

struct Demo {
    start: Instant,
    tracker: Mutex<Tracker>,
    /// Every presence change each client saw: (watcher, user, when).
    seen_log: Mutex<Vec<(&'static str, String, Instant)>>,
}

impl Demo {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn say(&self, who: &str, what: impl AsRef<str>) {
        println!("[{:>5.2}s] {who:<8} {}", self.t(), what.as_ref());
    }

    fn expect(
        &self,
        label: impl Into<String>,
        user: &'static str,
        expect: impl Fn(&Presence) -> bool + Send + 'static,
    ) {
        self.expect_at(label, user, Instant::now(), expect);
    }

    /// A change that will happen by itself at `at` (an automation's timer).
    fn expect_at(
        &self,
        label: impl Into<String>,
        user: &'static str,
        at: Instant,
        expect: impl Fn(&Presence) -> bool + Send + 'static,
    ) {
        self.tracker.lock().unwrap().changes.push(Change {
            label: label.into(),
            user,
            started: at,
            expect: Box::new(expect),
            seen_by: BTreeMap::new(),
        });
    }

    /// Records that `watcher` saw `presence`, against every change it completes.
    fn saw(&self, watcher: &'static str, presence: &Presence) -> Option<Duration> {
        let mut tracker = self.tracker.lock().unwrap();
        let mut latency = None;
        for change in tracker.changes.iter_mut().rev() {
            if change.user == presence.user_id
                && !change.seen_by.contains_key(watcher)
                && (change.expect)(presence)
            {
                let took = Instant::now().saturating_duration_since(change.started);
                change.seen_by.insert(watcher, took);
                latency.get_or_insert(took);
            }
        }
        latency
    }

    /// Waits until both watchers saw every change that has happened so far (at most 5 s).
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let now = Instant::now();
            let done = self
                .tracker
                .lock()
                .unwrap()
                .changes
                .iter()
                .filter(|c| c.started <= now)
                .all(|c| c.seen_by.len() >= PEOPLE.len() - 1);
            if done {
                return;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }
}

fn describe(p: &Presence) -> String {
    describe_status(&Status {
        availability: p.availability,
        message: p.message.clone(),
        activity: p.activity.clone(),
        message_expires_at: None,
    })
}

fn describe_status(p: &Status) -> String {
    let mut s = p.availability.to_string();
    if let Some(m) = &p.message {
        s.push_str(&format!(" \"{m}\""));
    }
    if let Some(a) = &p.activity {
        s.push_str(&format!(" · {}", a.kind));
        if let Some(d) = &a.detail {
            s.push_str(&format!(" ({d})"));
        }
    }
    s
}

fn dot(a: Availability) -> &'static str {
    match a {
        Availability::Online => "●",
        Availability::Away => "◐",
        Availability::Busy => "⊘",
        Availability::Offline | Availability::Invisible => "○",
    }
}

fn print_board(demo: &Demo, clients: &[(&'static str, Client)]) {
    println!("         ┌ who sees what ─────────────────────────────────────────────────────────");
    for (watcher, client) in clients {
        let view: Vec<String> = client
            .roster()
            .iter()
            .map(|p| format!("{} {} {}", dot(p.availability), p.user_id, describe(p)))
            .collect();
        println!("         │ {watcher:<6} sees  {}", view.join("   "));
    }
    println!("         └ at {:.2}s", demo.t());
}

fn spawn_watch(
    demo: Arc<Demo>,
    name: &'static str,
    client: &Client,
) -> tokio::task::JoinHandle<()> {
    let mut events = client.events();
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::PresenceChanged {
                    user_id,
                    previous,
                    current,
                } => {
                    demo.seen_log
                        .lock()
                        .unwrap()
                        .push((name, user_id.clone(), Instant::now()));
                    let latency = demo.saw(name, &current);
                    let took = latency.map_or(String::new(), |d| {
                        format!("   (+{:.1} ms)", d.as_secs_f64() * 1e3)
                    });
                    let line = match previous.as_ref().map(describe) {
                        None => format!("sees {user_id}: {}", describe(&current)),
                        Some(before) if before == describe(&current) => {
                            format!("sees {user_id}: still {before} (new server: times refreshed)")
                        }
                        Some(before) => {
                            format!("sees {user_id}: {before} → {}{took}", describe(&current))
                        }
                    };
                    demo.say(name, line);
                }
                Event::StateChanged { current, .. } => {
                    let line = match &current {
                        ConnectionState::Reconnecting {
                            attempt,
                            delay,
                            reason,
                            ..
                        } => format!(
                            "reconnecting: attempt {attempt} in {} ms ({reason})",
                            delay.as_millis()
                        ),
                        ConnectionState::Connected {
                            session_id,
                            transport,
                        } if client.session().is_some_and(|s| s.resumed) => {
                            format!("connected: resumed session {session_id} ({transport})")
                        }
                        other => other.to_string(),
                    };
                    demo.say(name, line);
                }
                Event::ServerError { code, message, .. } => {
                    demo.say(name, format!("server error {code}: {message}"))
                }
                Event::OwnStatusChanged { effective, reason } => demo.say(
                    name,
                    format!(
                        "own status → {} (reason: {})",
                        describe_status(&effective),
                        reason.as_str()
                    ),
                ),
                Event::IdleWarning { .. } => demo.say(
                    name,
                    "idle warning: \"still there?\" (away in 2 s without activity)",
                ),
                Event::IdleWarningCancelled => demo.say(name, "idle warning cancelled"),
                _ => {}
            }
        }
    })
}

/// A TCP relay in front of the server whose open connections the demo can cut, as a tunnel would.
struct Tunnel {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Tunnel {
    async fn start(server: std::net::SocketAddr) -> Tunnel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let addr = listener.local_addr().expect("its address");
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(server).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Tunnel { addr, cut }
    }

    /// Drops every connection open now.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

async fn sleep_until_after(at: Instant) {
    tokio::time::sleep_until(at + Duration::from_millis(50)).await;
}

async fn start_server(addr: std::net::SocketAddr) -> RunningServer {
    presently_server::start(ServerConfig::new(addr, SECRET.to_vec()))
        .await
        .expect("the embedded server starts")
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let demo = Arc::new(Demo {
        start: Instant::now(),
        tracker: Mutex::new(Tracker::default()),
        seen_log: Mutex::new(Vec::new()),
    });
    println!(
        "Presently demo: an embedded server and three clients that watch each other (about 25 s).\n"
    );
    let server = start_server("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.local_addr();
    demo.say("server", format!("listening on {}", server.ws_url()));

    let tunnel = Tunnel::start(addr).await;

    // 1. Everyone connects and watches the other two.
    let mut clients: Vec<(&'static str, Client)> = Vec::new();
    let mut watchers = Vec::new();
    // Carol's device clock, which the demo will set to just before 22:00 in Berlin.
    let carol_clock_skew_ms = Arc::new(AtomicI64::new(0));
    for (user, device, platform) in PEOPLE {
        let token = server.mint_token(user, Duration::from_secs(3_600)).unwrap();
        // Bob's phone reaches the server through a network that the demo can cut (a tunnel).
        let url = if user == "bob" {
            format!("ws://{}/v1/ws", tunnel.addr)
        } else {
            server.ws_url()
        };
        let mut builder = Client::builder(url)
            .token(token)
            .client_info(ClientInfo::new(
                format!("{user}'s {device}"),
                "1.0",
                platform,
            ));
        // Shortened for the demo: the defaults are 2 s, 30 s, stable after 30 s.
        builder = builder.reconnect_policy(ReconnectPolicy {
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            stable_after: Duration::from_secs(5),
        });
        if user == "alice" {
            // Shortened for the demo (the default is 5 minutes, no warning).
            builder = builder
                .idle_timeout(Some(IDLE_TIMEOUT))
                .idle_warning(Some(Duration::from_secs(2)));
        }
        if user == "carol" {
            let skew = carol_clock_skew_ms.clone();
            builder = builder
                .wall_clock(move || shifted(SystemTime::now(), skew.load(Ordering::Relaxed)));
        }
        let client = builder.build().expect("client builds");
        watchers.push(spawn_watch(demo.clone(), user, &client));
        let others: Vec<&str> = PEOPLE.iter().map(|p| p.0).filter(|u| *u != user).collect();
        client.subscribe(others).unwrap();
        demo.say(user, format!("opens the {device} app"));
        let started = Instant::now();
        client
            .connect()
            .await
            .expect("connects to the embedded server");
        demo.say(
            user,
            format!(
                "connected in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            ),
        );
        clients.push((user, client));
        sleep(Duration::from_millis(300)).await;
    }
    let client = |name: &str| {
        clients
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.clone())
            .unwrap()
    };
    let (alice, bob, carol) = (client("alice"), client("bob"), client("carol"));
    sleep(Duration::from_millis(300)).await;
    print_board(&demo, &clients);

    // 2. Status changes.
    sleep(Duration::from_secs(2)).await;
    demo.say("alice", "starts a session in her DAW: busy, in the studio");
    demo.expect("alice: busy in the studio", "alice", |p| {
        p.availability == Availability::Busy
    });
    alice
        .set_status(
            Status::new(Availability::Busy)
                .with_message("Mixing the EP")
                .with_activity(Activity::new("in_studio", "Ableton Live 12")),
        )
        .unwrap();
    demo.settle().await;

    sleep(Duration::from_secs(2)).await;
    demo.say("bob", "steps out");
    demo.expect("bob: away \"lunch\"", "bob", |p| {
        p.availability == Availability::Away
    });
    bob.set_status(Status::new(Availability::Away).with_message("lunch"))
        .unwrap();
    demo.settle().await;

    sleep(Duration::from_secs(2)).await;
    demo.say("carol", "sets a message");
    demo.expect("carol: message", "carol", |p| {
        p.message.as_deref() == Some("Listening to Alice's demo")
    });
    carol
        .set_status(Status::new(Availability::Online).with_message("Listening to Alice's demo"))
        .unwrap();
    demo.settle().await;
    print_board(&demo, &clients);

    // 3. The server crashes and comes back on the same port.
    sleep(Duration::from_secs(2)).await;
    demo.say("server", "CRASH: killed without warning");
    let crashed_at = Instant::now();
    server.kill().await;
    sleep(Duration::from_millis(300)).await;
    demo.say(
        "bob",
        "is back from lunch while the server is down: online (queued, sent once on reconnect)",
    );
    bob.set_status(Status::new(Availability::Online)).unwrap();
    sleep(Duration::from_millis(1_200)).await;
    demo.expect("bob: back (set while the server was down)", "bob", |p| {
        p.availability == Availability::Online && p.message.is_none()
    });
    let server = start_server(addr).await;
    demo.say(
        "server",
        "restarted on the same port with empty memory: until a client reconnects, its watchers see it offline",
    );
    let restarted_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !clients
        .iter()
        .all(|(_, c)| matches!(c.state(), ConnectionState::Connected { .. }))
        && Instant::now() < deadline
    {
        sleep(Duration::from_millis(10)).await;
    }
    let reconnected = restarted_at.elapsed();
    demo.settle().await;
    let converged = restarted_at.elapsed();
    demo.say(
        "server",
        format!(
            "all clients back {:.0} ms after the restart; every watcher converged after {:.0} ms (outage {:.1} s)",
            reconnected.as_secs_f64() * 1e3,
            converged.as_secs_f64() * 1e3,
            (restarted_at - crashed_at).as_secs_f64()
        ),
    );
    print_board(&demo, &clients);

    // 4. Alice's plugin notices she is gone, and that she is back.
    sleep(Duration::from_secs(2)).await;
    demo.say(
        "alice",
        "finishes the bounce, then leaves her desk (her plugin idles after 4 s)",
    );
    demo.expect("alice: online \"Bounce done\"", "alice", |p| {
        p.availability == Availability::Online
    });
    let bounced_at = Instant::now();
    alice
        .set_status(
            Status::new(Availability::Online).with_message("Bounce done, who wants to listen?"),
        )
        .unwrap();
    demo.expect_at(
        "alice: away (idle, no activity for 4 s)",
        "alice",
        bounced_at + IDLE_TIMEOUT,
        |p| p.availability == Availability::Away,
    );
    demo.settle().await;
    sleep_until_after(bounced_at + IDLE_TIMEOUT).await;
    demo.settle().await;
    sleep(Duration::from_millis(800)).await;
    demo.say(
        "alice",
        "comes back and moves the mouse over her plugin (record_activity)",
    );
    demo.expect("alice: back online (activity)", "alice", |p| {
        p.availability == Availability::Online
    });
    alice.record_activity();
    // She keeps working: her plugin reports mouse moves as they happen.
    let working = {
        let alice = alice.clone();
        tokio::spawn(async move {
            loop {
                sleep(Duration::from_millis(250)).await;
                alice.record_activity();
            }
        })
    };
    demo.settle().await;

    // 5. Carol's quiet hours start, in her own timezone, on a timer of their own.
    sleep(Duration::from_secs(1)).await;
    let real_now = SystemTime::now();
    let today = real_now.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let berlin_date = Utc
        .timestamp_millis_opt(today.as_millis() as i64)
        .single()
        .expect("a valid instant")
        .with_timezone(&Berlin)
        .date_naive();
    let ten_pm = Berlin
        .from_local_datetime(&berlin_date.and_hms_opt(22, 0, 0).expect("22:00"))
        .earliest()
        .expect("22:00 exists in Berlin");
    let skew = ten_pm.timestamp_millis() - 2_000 - today.as_millis() as i64;
    carol_clock_skew_ms.store(skew, Ordering::Relaxed);
    demo.say("carol", "her device clock reads 21:59:58 in Berlin (set by the demo); she turns on quiet hours 22:00–07:00");
    demo.expect_at(
        "carol: busy, quiet hours (DND window)",
        "carol",
        Instant::now() + Duration::from_secs(2),
        |p| p.availability == Availability::Busy,
    );
    carol.set_dnd_schedule(Some(
        DndSchedule::new(
            "Europe/Berlin",
            vec![DndWindow::parse("daily", "22:00", "07:00").unwrap()],
        )
        .unwrap()
        .with_message("Quiet hours")
        .unwrap(),
    ));
    let state = carol.dnd_state();
    demo.say(
        "carol",
        format!(
            "dnd: active {}, next start in {:.1} s",
            state.active,
            state.next_start.map_or(f64::NAN, |t| (t as i64
                - shifted(SystemTime::now(), skew)
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64)
                as f64
                / 1e3)
        ),
    );
    sleep(Duration::from_millis(2_100)).await;
    demo.settle().await;
    print_board(&demo, &clients);

    // 6. Bob drives into a tunnel: his connection is cut, he comes back within the resume grace.
    sleep(Duration::from_secs(1)).await;
    demo.say("bob", "drives into a tunnel: the phone's connection is cut");
    let cut_at = Instant::now();
    tunnel.cut();
    let deadline = Instant::now() + Duration::from_secs(5);
    sleep(Duration::from_millis(50)).await;
    while !(matches!(bob.state(), ConnectionState::Connected { .. })
        && bob.session().is_some_and(|s| s.resumed))
        && Instant::now() < deadline
    {
        sleep(Duration::from_millis(10)).await;
    }
    sleep(Duration::from_millis(300)).await;
    let blips = demo
        .seen_log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, user, at)| user == "bob" && *at >= cut_at)
        .count();
    demo.say(
        "bob",
        format!(
            "back after {:.0} ms; alice and carol saw {blips} change(s) of bob: the session was resumed, no offline/online pair",
            cut_at.elapsed().as_secs_f64() * 1e3 - 300.0
        ),
    );

    // 7. Carol goes invisible: offline to everyone, while she still sees them.
    sleep(Duration::from_secs(1)).await;
    demo.say(
        "carol",
        "goes invisible (appears offline, still sees everyone)",
    );
    demo.expect("carol: invisible (watchers see offline)", "carol", |p| {
        p.availability == Availability::Offline
    });
    carol
        .set_status(Status::new(Availability::Invisible))
        .unwrap();
    demo.settle().await;
    print_board(&demo, &clients);

    // 8. Bob closes his app.
    sleep(Duration::from_secs(1)).await;
    demo.say("bob", "closes the phone app");
    demo.expect("bob goes offline", "bob", |p| {
        p.availability == Availability::Offline
    });
    bob.close().await;
    // Only two watchers are left for this one.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let seen = demo
            .tracker
            .lock()
            .unwrap()
            .changes
            .last()
            .map_or(0, |c| c.seen_by.len());
        if seen >= 2 {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    print_board(&demo, &clients);

    // 9. Summary.
    println!(
        "\nHow long each change took to reach its watchers (from the call to the watcher's event):"
    );
    {
        let tracker = demo.tracker.lock().unwrap();
        let mut all = Vec::new();
        for change in &tracker.changes {
            let seen: Vec<String> = change
                .seen_by
                .iter()
                .map(|(w, d)| format!("{w} {:.1} ms", d.as_secs_f64() * 1e3))
                .collect();
            all.extend(change.seen_by.values().copied());
            println!(
                "  {:<48} {}",
                change.label,
                if seen.is_empty() {
                    "not seen".to_owned()
                } else {
                    seen.join(", ")
                }
            );
        }
        all.sort();
        if let (Some(min), Some(max)) = (all.first(), all.last()) {
            let median = all[all.len() / 2];
            println!(
                "  {} deliveries: median {:.1} ms, min {:.1} ms, max {:.1} ms (the change made during the outage counts from the restart)",
                all.len(),
                median.as_secs_f64() * 1e3,
                min.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            );
        }
        println!(
            "  server restart: clients reconnected {:.0} ms and converged {:.0} ms after it came back",
            reconnected.as_secs_f64() * 1e3,
            converged.as_secs_f64() * 1e3
        );
    }
    working.abort();
    for watcher in watchers {
        watcher.abort();
    }
    for (_, client) in &clients {
        client.close().await;
    }
    server.shutdown().await;
    println!(
        "\nDone in {:.1} s. Run every test with: ./scripts/test",
        demo.t()
    );
}
