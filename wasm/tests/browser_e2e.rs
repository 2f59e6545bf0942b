//! End to end in a real browser: `examples/browser/` loads the npm package (built by `scripts/build-npm`) in
//! headless Chromium, connects to a reference server and shows a live presence list. A native client changes its
//! status and the page must show it within 1 s; then the page is hidden (another tab in front) and frozen (no
//! JavaScript at all) for several session TTLs, and the native watcher must never see it go offline. A screenshot
//! of the page is saved to `target/browser-e2e/screenshot.png`. A second scenario runs the page against a server
//! without WebSocket (as behind a proxy that blocks them): it falls back to HTTP + Server-Sent Events, shows a
//! change live, keeps its session, recovers from a server restart and detects a frozen (half-open) link.
//!
//! Chromium is driven over the DevTools protocol with tokio-tungstenite; `chromium` must be installed
//! (scripts/test installs Debian's). A second test compiles `tests/ts/usage.ts` against the package's types with
//! `tsc --strict` (TypeScript from npm, installed under target/tools) and checks that no public type is `any`.
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use presently::{Availability, Client, Event, Status};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[path = "../../tests/support/proxy.rs"]
mod proxy;
use proxy::FreezableProxy;

const SECRET: &[u8] = b"browser end-to-end secret, 32 b";
/// Short timings, so that "hidden for several TTLs" takes seconds.
const HEARTBEAT: Duration = Duration::from_millis(500);
const TTL: Duration = Duration::from_millis(1_500);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// Builds the npm package into `target/browser-e2e/pkg`, once for all the tests of this file (they run at the
/// same time), and returns where it is.
fn package() -> PathBuf {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let path = target_dir().join("browser-e2e").join("pkg");
    build_package(&path);
    *built = Some(path.clone());
    path
}

/// Builds the npm package into `out`.
fn build_package(out: &Path) {
    let status = Command::new(repo().join("scripts/build-npm"))
        .arg("--out")
        .arg(out)
        .env("CARGO", env!("CARGO"))
        .status()
        .expect("run scripts/build-npm");
    assert!(status.success(), "scripts/build-npm failed");
}

/// Serves `examples/browser/` at `/` and the package at `/pkg/` over plain HTTP/1.1.
async fn serve_files(package: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("an address");
    let site = repo().join("examples/browser");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (site, package) = (site.clone(), package.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                let mut request = String::new();
                if lines.read_line(&mut request).await.is_err() {
                    return;
                }
                // Skip the headers.
                let mut header = String::new();
                while lines.read_line(&mut header).await.is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or("/");
                let file = match path {
                    "/" => site.join("index.html"),
                    p if p.starts_with("/pkg/") => package.join(&p[5..]),
                    p => site.join(p.trim_start_matches('/')),
                };
                let (status, body) = match (path.contains(".."), std::fs::read(&file)) {
                    (false, Ok(body)) => ("200 OK", body),
                    _ => ("404 Not Found", b"not found".to_vec()),
                };
                let kind = match file.extension().and_then(|e| e.to_str()) {
                    Some("html") => "text/html; charset=utf-8",
                    Some("js") => "text/javascript",
                    Some("wasm") => "application/wasm",
                    _ => "application/octet-stream",
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = write.write_all(head.as_bytes()).await;
                let _ = write.write_all(&body).await;
                let _ = write.shutdown().await;
            });
        }
    });
    format!("http://{address}")
}

/// A headless Chromium and a DevTools connection to it; the browser is killed when dropped.
struct Browser {
    process: tokio::process::Child,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    _profile: PathBuf,
}

impl Browser {
    async fn launch() -> Browser {
        let profile =
            std::env::temp_dir().join(format!("presently-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let mut process = tokio::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--window-size=900,600",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "chromium must be installed (Debian package chromium; scripts/test installs it)",
            );
        let mut stderr = BufReader::new(process.stderr.take().expect("stderr")).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = stderr.next_line().await {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_owned();
                }
            }
            panic!("chromium did not print its DevTools address");
        })
        .await
        .expect("chromium starts within 30 s");
        // Keep draining stderr so that the browser never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to DevTools");
        Browser {
            process,
            socket,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends a DevTools command (to a page if `session` is given) and returns its result.
    async fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .expect("send to DevTools");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools is open")
                .expect("a DevTools message");
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
            if value["id"] == json!(id) {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab; returns (target id, session id).
    async fn open(&mut self, url: &str) -> (String, String) {
        let target = self
            .send("Target.createTarget", json!({ "url": url }), None)
            .await;
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = self
            .send(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
                None,
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_owned();
        (target_id, session)
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self
            .send(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
                Some(session),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Polls `expression` every 10 ms until it is `true`; returns how long that took.
    async fn until(&mut self, session: &str, expression: &str, what: &str) -> Duration {
        let started = tokio::time::Instant::now();
        while self.eval(session, expression).await != json!(true) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
    }
}

async fn native_client(url: &str, token: String) -> Client {
    let client = Client::builder(url)
        .token(token)
        .liveness_grace(Duration::from_millis(500))
        .build()
        .expect("a client");
    client.connect().await.expect("connected");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_presence_and_stays_online_while_hidden() {
    let out = target_dir().join("browser-e2e");
    let site = serve_files(package()).await;

    let server = presently_server::start(
        presently_server::ServerConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            SECRET.to_vec(),
        )
        .with_heartbeat(HEARTBEAT, TTL),
    )
    .await
    .expect("the server starts");
    let token = |user: &str| {
        server
            .mint_token(user, Duration::from_secs(600))
            .expect("a token")
    };
    let bob = native_client(&server.ws_url(), token("bob")).await;
    let carol = native_client(&server.ws_url(), token("carol")).await;
    carol.subscribe(["alice"]).expect("carol watches alice");
    // Remembers whether carol ever sees alice (the page) go offline.
    let alice_went_offline = Arc::new(AtomicBool::new(false));
    {
        let mut events = carol.events();
        let flag = alice_went_offline.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Event::PresenceChanged {
                    user_id, current, ..
                } = event
                    && user_id == "alice"
                    && current.availability == Availability::Offline
                {
                    flag.store(true, Ordering::SeqCst);
                }
            }
        });
    }

    let mut browser = Browser::launch().await;
    let page_url = format!(
        "{site}/?server={}&token={}&watch=bob,dave",
        server.ws_url(),
        token("alice")
    );
    let (page_target, page) = browser.open(&page_url).await;
    browser
        .until(
            &page,
            "document.querySelector('#state')?.textContent === 'connected'",
            "the page connected",
        )
        .await;
    browser
        .until(
            &page,
            "document.querySelector('#user-bob')?.dataset.availability === 'online'",
            "bob online on the page",
        )
        .await;
    browser
        .until(
            &page,
            "document.querySelector('#user-dave')?.dataset.availability === 'offline'",
            "dave offline on the page",
        )
        .await;

    // A native client changes its status: the page shows it within 1 s.
    bob.set_status(
        Status::new(Availability::Busy)
            .with_message("Mixing")
            .with_activity(presently::Activity::new("in_studio", "Ableton Live 12")),
    )
    .expect("bob's status");
    let shown_after = browser
        .until(
            &page,
            "document.querySelector('#user-bob')?.textContent === 'bob: busy — Mixing (Ableton Live 12)'",
            "bob busy on the page",
        )
        .await;
    println!("the page showed bob's change after {shown_after:?} (polled every 10 ms)");
    assert!(
        shown_after < Duration::from_secs(1),
        "the page took {shown_after:?}"
    );
    let shot = browser
        .send(
            "Page.captureScreenshot",
            json!({ "format": "png" }),
            Some(&page),
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64 screenshot");
    std::fs::create_dir_all(&out).expect("target/browser-e2e");
    std::fs::write(out.join("screenshot.png"), png).expect("save the screenshot");
    println!("screenshot: {}", out.join("screenshot.png").display());

    // Carol sees alice (the page) online.
    wait_for(&carol, "alice online", |c| {
        c.presence("alice")
            .is_some_and(|p| p.availability == Availability::Online)
    })
    .await;
    alice_went_offline.store(false, Ordering::SeqCst);

    // Hide the page behind another tab, then freeze it: no JavaScript runs, timers stop. The browser still
    // answers the server's WebSocket pings, so the session lives on for many TTLs.
    let (_front, _) = browser.open("about:blank").await;
    browser
        .send("Target.activateTarget", json!({ "targetId": _front }), None)
        .await;
    browser
        .until(
            &page,
            "document.visibilityState === 'hidden'",
            "the page hidden",
        )
        .await;
    browser
        .send(
            "Page.setWebLifecycleState",
            json!({ "state": "frozen" }),
            Some(&page),
        )
        .await;
    tokio::time::sleep(TTL * 4).await;
    browser
        .send(
            "Page.setWebLifecycleState",
            json!({ "state": "active" }),
            Some(&page),
        )
        .await;
    browser
        .send(
            "Target.activateTarget",
            json!({ "targetId": page_target }),
            None,
        )
        .await;
    assert!(
        !alice_went_offline.load(Ordering::SeqCst),
        "carol saw the hidden page go offline"
    );
    assert_eq!(
        carol.presence("alice").map(|p| p.availability),
        Some(Availability::Online)
    );
    browser
        .until(
            &page,
            "document.querySelector('#state')?.textContent === 'connected'",
            "the page still connected",
        )
        .await;
    assert_eq!(server.stats().sessions_started, 3, "{:?}", server.stats());

    bob.close().await;
    carol.close().await;
    drop(browser);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_websocket_blocked_the_page_falls_back_to_sse_and_recovers_from_a_restart_and_a_frozen_link()
 {
    let site = serve_files(package()).await;
    let config = |addr: std::net::SocketAddr| {
        let mut config = presently_server::ServerConfig::new(addr, SECRET.to_vec())
            .with_heartbeat(HEARTBEAT, TTL);
        // As behind a proxy that blocks WebSockets: only the HTTP binding answers.
        config.websocket = false;
        config
    };
    let server = presently_server::start(config("127.0.0.1:0".parse().expect("an address")))
        .await
        .expect("the server starts");
    let addr = server.local_addr();
    let token = |user: &str| {
        server
            .mint_token(user, Duration::from_secs(600))
            .expect("a token")
    };
    let bob = native_client(&server.ws_url(), token("bob")).await;
    // The page reaches the server through a proxy whose connections can be frozen (a half-open link).
    let proxy = FreezableProxy::start(addr).await;
    let mut browser = Browser::launch().await;
    let page_url = format!(
        "{site}/?server=ws://{}/v1/ws&token={}&watch=bob&grace=500",
        proxy.addr,
        token("alice")
    );
    let (_, page) = browser.open(&page_url).await;
    browser
        .until(
            &page,
            "window.presently?.state().state === 'connected' && window.presently.state().transport === 'sse'",
            "the page connected over SSE",
        )
        .await;
    bob.set_status(Status::new(Availability::Busy).with_message("Mixing"))
        .expect("bob's status");
    let shown_after = browser
        .until(
            &page,
            "document.querySelector('#user-bob')?.textContent === 'bob: busy — Mixing'",
            "bob busy on the page",
        )
        .await;
    println!("over SSE, the page showed bob's change after {shown_after:?} (polled every 10 ms)");
    assert!(shown_after < Duration::from_secs(1), "{shown_after:?}");

    // Quiet for several TTLs: the page's pings over HTTP keep its session.
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(server.stats().sessions_active, 2, "{:?}", server.stats());

    // The server dies and comes back: the page reconnects by itself over SSE and sees bob's next change.
    server.kill().await;
    browser
        .until(
            &page,
            "window.presently.state().state !== 'connected'",
            "the page noticed",
        )
        .await;
    let server = presently_server::start(config(addr))
        .await
        .expect("the server restarts");
    browser
        .until(
            &page,
            "window.presently.state().state === 'connected' && window.presently.state().transport === 'sse'",
            "the page back over SSE",
        )
        .await;
    wait_for(&bob, "bob back", |c| {
        matches!(c.state(), presently::ConnectionState::Connected { .. })
    })
    .await;
    bob.set_status(Status::new(Availability::Away).with_message("lunch"))
        .expect("bob's status");
    browser
        .until(
            &page,
            "document.querySelector('#user-bob')?.textContent === 'bob: away — lunch'",
            "bob away on the page after the restart",
        )
        .await;

    // The link goes half-open: nothing flows, nothing closes. The page notices within interval + grace and
    // reconnects through fresh connections.
    proxy.freeze();
    let detected_after = browser
        .until(
            &page,
            "window.presently.state().state === 'reconnecting'",
            "the page noticed the frozen link",
        )
        .await;
    println!(
        "the page detected the frozen SSE link after {detected_after:?} (interval + grace = {:?})",
        HEARTBEAT + Duration::from_millis(500)
    );
    browser
        .until(
            &page,
            "window.presently.state().state === 'connected'",
            "the page reconnected",
        )
        .await;
    bob.set_status(Status::new(Availability::Online).with_message("back"))
        .expect("bob's status");
    browser
        .until(
            &page,
            "document.querySelector('#user-bob')?.textContent === 'bob: online — back'",
            "bob's change on the page after the frozen link",
        )
        .await;
    bob.close().await;
    drop(browser);
    server.shutdown().await;
}

/// TypeScript's version, pinned.
const TYPESCRIPT: &str = "typescript@5.9.3";

#[test]
fn the_published_types_are_exact_and_compile_strictly() {
    let out = target_dir().join("browser-e2e");
    let package = out.join("pkg-types");
    build_package(&package);

    // The public part of the declarations (everything before wasm-bindgen's loader types) names no `any`.
    let declarations =
        std::fs::read_to_string(package.join("presently.d.ts")).expect("presently.d.ts");
    let public = declarations
        .split("export type InitInput")
        .next()
        .expect("declarations");
    let any = public
        .lines()
        .filter(|line| {
            line.split(|c: char| !c.is_alphanumeric())
                .any(|w| w == "any")
        })
        .collect::<Vec<_>>();
    assert!(any.is_empty(), "`any` in the public types: {any:?}");
    let index = std::fs::read_to_string(package.join("index.d.ts")).expect("index.d.ts");
    assert!(
        !index.contains("InitOutput"),
        "index.d.ts must not re-export the loader"
    );

    let tools = target_dir().join("tools/typescript");
    let tsc = tools.join("node_modules/.bin/tsc");
    if !tsc.exists() {
        std::fs::create_dir_all(&tools).expect("target/tools/typescript");
        let status = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&tools)
            .arg(TYPESCRIPT)
            .status()
            .expect("npm must be installed");
        assert!(status.success(), "npm install {TYPESCRIPT} failed");
    }
    let usage = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ts/usage.ts");
    let config = json!({
        "compilerOptions": {
            "strict": true,
            "noEmit": true,
            "target": "es2022",
            "module": "esnext",
            "moduleResolution": "bundler",
            "lib": ["es2022", "dom", "esnext.disposable"],
            "skipLibCheck": false,
            "paths": { "@presently/client": [package.join("index.d.ts")] }
        },
        "files": [usage]
    });
    let config_path = out.join("tsconfig.json");
    std::fs::write(&config_path, config.to_string()).expect("write tsconfig.json");
    let output = Command::new(tsc)
        .arg("-p")
        .arg(&config_path)
        .output()
        .expect("run tsc");
    assert!(
        output.status.success(),
        "tsc --strict failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until `ready(client)`.
async fn wait_for(client: &Client, what: &str, ready: impl Fn(&Client) -> bool) {
    let started = tokio::time::Instant::now();
    while !ready(client) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
