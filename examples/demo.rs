//! `cargo run --example demo`
//!
//! Starts an embedded reference server and three clients — Alice's audio plugin, Bob's phone and Carol's
//! browser tab — that watch each other. It shows, live, who is online and why each status changes (a status
//! set, a message, a server crash and recovery, an app closed), then ends by itself after about 25 seconds
//! with a summary of how long each change took to reach its watchers. Nothing to configure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use presently::{
    Activity, Availability, Client, ClientInfo, ConnectionState, Event, Presence, Status,
};
use presently_server::{RunningServer, ServerConfig};
use tokio::time::{Instant, sleep};

const SECRET: &[u8] = b"demo secret: never use this one in production";

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
        self.tracker.lock().unwrap().changes.push(Change {
            label: label.into(),
            user,
            started: Instant::now(),
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
                let took = change.started.elapsed();
                change.seen_by.insert(watcher, took);
                latency.get_or_insert(took);
            }
        }
        latency
    }

    /// Waits until every watcher saw the latest change (at most 5 s).
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let done = self
                .tracker
                .lock()
                .unwrap()
                .changes
                .last()
                .is_none_or(|c| c.seen_by.len() == PEOPLE.len() - 1);
            if done {
                return;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }
}

fn describe(p: &Presence) -> String {
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
        Availability::Offline => "○",
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
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::PresenceChanged {
                    user_id,
                    previous,
                    current,
                } => {
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
                        other => other.to_string(),
                    };
                    demo.say(name, line);
                }
                Event::ServerError { code, message, .. } => {
                    demo.say(name, format!("server error {code}: {message}"))
                }
                _ => {}
            }
        }
    })
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
    });
    println!(
        "Presently demo: an embedded server and three clients that watch each other (about 25 s).\n"
    );
    let server = start_server("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.local_addr();
    demo.say("server", format!("listening on {}", server.ws_url()));

    // 1. Everyone connects and watches the other two.
    let mut clients: Vec<(&'static str, Client)> = Vec::new();
    let mut watchers = Vec::new();
    for (user, device, platform) in PEOPLE {
        let token = server.mint_token(user, Duration::from_secs(3_600)).unwrap();
        let client = Client::builder(server.ws_url())
            .token(token)
            .client_info(ClientInfo::new(
                format!("{user}'s {device}"),
                "1.0",
                platform,
            ))
            .build()
            .expect("client builds");
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

    // 4. More changes, then Bob closes his app.
    sleep(Duration::from_secs(2)).await;
    demo.say("alice", "finishes the bounce");
    demo.expect("alice: online \"Bounce done\"", "alice", |p| {
        p.availability == Availability::Online
    });
    alice
        .set_status(
            Status::new(Availability::Online).with_message("Bounce done, who wants to listen?"),
        )
        .unwrap();
    demo.settle().await;

    sleep(Duration::from_secs(2)).await;
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

    // 5. Summary.
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
