//! The reference server against docs/protocol.md, spoken to frame by frame by a bare WebSocket client.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use presently_server::{RunningServer, ServerConfig, TokenAuthority};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &[u8] = b"protocol test secret of 32 bytes";
const PATIENCE: Duration = Duration::from_secs(5);

fn config() -> ServerConfig {
    let mut c = ServerConfig::new("127.0.0.1:0".parse().unwrap(), SECRET.to_vec())
        .with_heartbeat(Duration::from_millis(300), Duration::from_millis(900));
    c.hello_timeout = Duration::from_millis(300);
    c.resume_grace = Duration::from_millis(300);
    c
}

async fn server_with(config: ServerConfig) -> RunningServer {
    presently_server::start(config).await.unwrap()
}

async fn server() -> RunningServer {
    server_with(config()).await
}

/// Waits (polling, bounded) until `ready` holds, or fails saying what was awaited.
async fn eventually(what: &str, ready: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn token(user: &str) -> String {
    TokenAuthority::new(SECRET)
        .unwrap()
        .mint(user, Duration::from_secs(60))
        .unwrap()
}

struct Raw {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    subprotocol: Option<String>,
    /// `choice` frames, set aside by `recv` (most tests are not about them).
    choices: Vec<Value>,
    /// WebSocket pings received.
    pings: u32,
    /// `privacy` frames, set aside by `recv`.
    privacy: Vec<Value>,
}

impl Raw {
    async fn connect(server: &RunningServer) -> Raw {
        let mut request = server.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "presently.v1".parse().unwrap());
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        Raw {
            ws,
            subprotocol,
            choices: Vec::new(),
            pings: 0,
            privacy: Vec::new(),
        }
    }

    async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next JSON frame (control frames, `choice` and `privacy` frames set aside).
    async fn recv(&mut self) -> Value {
        loop {
            let frame = self.recv_any().await;
            match frame["type"].as_str() {
                Some("choice") => self.choices.push(frame),
                Some("privacy") => self.privacy.push(frame),
                _ => return frame,
            }
        }
    }

    /// Sends nothing for `silence` (its WebSocket layer answers pings) and counts the pings that came meanwhile.
    async fn pings_while_silent(&mut self, silence: Duration) -> u32 {
        let until = tokio::time::Instant::now() + silence;
        let mut pings = 0;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, self.ws.next()).await {
            if let Message::Ping(_) = message {
                pings += 1;
            }
        }
        pings
    }

    /// The next JSON frame, whatever its type (control frames skipped).
    async fn recv_any(&mut self) -> Value {
        // One deadline for the whole wait: the server's pings must not keep extending it.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("no error");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Ping(_) => self.pings += 1,
                Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    async fn closed(&mut self) -> Option<CloseCode> {
        loop {
            match tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    async fn hello(&mut self, user: &str, status: Option<Value>) -> Value {
        let mut hello = json!({
            "type": "hello", "protocol": 1, "token": token(user),
            "client": {"name": "raw", "version": "1", "platform": "test"}
        });
        if let Some(status) = status {
            hello["status"] = status;
        }
        self.send(hello).await;
        let welcome = self.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        welcome
    }

    async fn session(server: &RunningServer, user: &str) -> Raw {
        let mut raw = Raw::connect(server).await;
        raw.hello(user, None).await;
        raw
    }

    async fn subscribe(&mut self, users: &[&str]) -> Value {
        self.send(json!({"type": "subscribe", "users": users}))
            .await;
        let snapshot = self.recv().await;
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        snapshot
    }

    /// A `ping` answered: every frame the server sent before it has been read (`choice` frames kept aside).
    async fn round_trip(&mut self, reference: &str) {
        self.send(json!({"type": "ping", "ref": reference})).await;
        assert_eq!(self.recv().await["ref"], reference);
    }

    /// The next presence update for `user`.
    async fn update(&mut self) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["type"], "presence", "{frame}");
        frame["user"].clone()
    }
}

#[tokio::test]
async fn hello_is_answered_with_welcome_and_the_subprotocol_is_selected() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    assert_eq!(raw.subprotocol.as_deref(), Some("presently.v1"));
    let welcome = raw.hello("alice", None).await;
    assert_eq!(welcome["protocol"], 1);
    assert_eq!(welcome["user_id"], "alice");
    assert_eq!(welcome["heartbeat_interval_ms"], 300);
    assert_eq!(welcome["session_ttl_ms"], 900);
    assert_eq!(welcome["max_frame_bytes"], 65_536);
    assert!(
        welcome["session_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(welcome["server"]["name"], "presently-server");
}

#[tokio::test]
async fn fatal_handshake_errors_close_the_connection() {
    let server = server().await;
    let cases = [
        (json!({"type": "ping"}), "hello_required"),
        (
            json!({"type": "hello", "protocol": 2, "token": token("a"), "client": {"name": "x", "version": "1", "platform": "p"}}),
            "unsupported_protocol",
        ),
        (
            json!({"type": "hello", "protocol": 1, "token": "nope", "client": {"name": "x", "version": "1", "platform": "p"}}),
            "invalid_token",
        ),
        (json!({"type": "hello", "protocol": 1}), "hello_required"),
    ];
    for (first, code) in cases {
        let mut raw = Raw::connect(&server).await;
        raw.send(first).await;
        let error = raw.recv().await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], code, "{error}");
        assert_eq!(error["fatal"], true, "{error}");
        assert_eq!(raw.closed().await, Some(CloseCode::Policy));
    }
    assert_eq!(server.stats().sessions_started, 0);
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_timed_out() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    let error = raw.recv().await;
    assert_eq!(error["code"], "hello_timeout");
    assert_eq!(error["fatal"], false);
    assert_eq!(raw.closed().await, Some(CloseCode::Policy));
}

#[tokio::test]
async fn ping_is_answered_and_bad_or_unknown_messages_do_not_end_the_session() {
    let server = server().await;
    let mut raw = Raw::session(&server, "alice").await;
    raw.send(json!({"type": "ping", "ref": "p1"})).await;
    let pong = raw.recv().await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["ref"], "p1");
    assert!(pong["server_time_ms"].as_u64().is_some());

    raw.send_text("{not json".into()).await;
    let error = raw.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["fatal"].as_bool()),
        (Some("invalid_message"), Some(false))
    );
    raw.send(json!({"type": "set_status"})).await;
    assert_eq!(raw.recv().await["code"], "invalid_message");
    // Unknown types and unknown fields are ignored silently.
    raw.send(json!({"type": "typing", "conversation": "c1"}))
        .await;
    raw.send(json!({"type": "ping", "ref": "p2", "future_field": {"a": 1}}))
        .await;
    let pong = raw.recv().await;
    assert_eq!(
        (pong["type"].as_str(), pong["ref"].as_str()),
        (Some("pong"), Some("p2"))
    );
    // Binary frames are ignored too.
    raw.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    raw.send(json!({"type": "ping", "ref": "p3"})).await;
    assert_eq!(raw.recv().await["ref"], "p3");
}

#[tokio::test]
async fn subscribe_answers_with_a_snapshot_before_any_update() {
    let server = server().await;
    let mut bob = Raw::connect(&server).await;
    bob.hello("bob", Some(json!({"availability": "busy", "message": "Mixing", "activity": {"kind": "in_studio", "detail": "Ableton Live 12"}}))).await;
    let mut alice = Raw::session(&server, "alice").await;
    let snapshot = alice.subscribe(&["bob", "dave", "bob"]).await;
    let users = snapshot["users"].as_array().unwrap();
    assert_eq!(users.len(), 2, "duplicates removed: {snapshot}");
    assert_eq!(users[0]["user_id"], "bob");
    assert_eq!(users[0]["availability"], "busy");
    assert_eq!(users[0]["message"], "Mixing");
    assert_eq!(
        users[0]["activity"],
        json!({"kind": "in_studio", "detail": "Ableton Live 12"})
    );
    assert!(users[0]["since"].as_u64().is_some() && users[0]["last_active_at"].as_u64().is_some());
    let dave = &users[1];
    assert_eq!(
        (
            &dave["user_id"],
            &dave["availability"],
            &dave["message"],
            &dave["last_active_at"],
            &dave["since"]
        ),
        (
            &json!("dave"),
            &json!("offline"),
            &Value::Null,
            &Value::Null,
            &Value::Null
        ),
        "a user never seen: {dave}"
    );
    assert!(
        dave["version"].as_u64().unwrap() > 0,
        "stamped like every record"
    );
    let v0 = users[0]["version"].as_u64().unwrap();

    bob.send(json!({"type": "set_status", "availability": "away", "message": "lunch"}))
        .await;
    let update = alice.update().await;
    assert_eq!(
        (update["availability"].as_str(), update["message"].as_str()),
        (Some("away"), Some("lunch"))
    );
    assert_eq!(update["activity"], Value::Null, "absent fields are cleared");
    let v1 = update["version"].as_u64().unwrap();
    assert!(v1 > v0);
    // An identical set_status changes nothing and sends nothing; the next real change does.
    bob.send(json!({"type": "set_status", "availability": "away", "message": "lunch"}))
        .await;
    bob.send(json!({"type": "set_status", "availability": "online"}))
        .await;
    let update = alice.update().await;
    assert_eq!(update["availability"], "online");
    assert!(update["version"].as_u64().unwrap() > v1);

    // Unsubscribed: no more updates (the next frame alice gets is her own pong).
    alice
        .send(json!({"type": "unsubscribe", "users": ["bob"]}))
        .await;
    alice.send(json!({"type": "ping", "ref": "sync"})).await;
    assert_eq!(alice.recv().await["ref"], "sync");
    bob.send(json!({"type": "set_status", "availability": "busy"}))
        .await;
    bob.send(json!({"type": "ping", "ref": "b"})).await;
    assert_eq!(bob.recv().await["ref"], "b");
    alice.send(json!({"type": "ping", "ref": "after"})).await;
    assert_eq!(alice.recv().await["ref"], "after");
}

#[tokio::test]
async fn invalid_requests_get_specific_non_fatal_errors() {
    let server = server().await;
    let mut raw = Raw::session(&server, "alice").await;
    raw.send(json!({"type": "set_status", "ref": "s1", "availability": "busy", "message": "x".repeat(201)})).await;
    let error = raw.recv().await;
    assert_eq!(
        (
            error["code"].as_str(),
            error["ref"].as_str(),
            error["fatal"].as_bool()
        ),
        (Some("invalid_status"), Some("s1"), Some(false))
    );
    assert!(error["message"].as_str().unwrap().contains("200"));
    raw.send(json!({"type": "set_status", "availability": "offline"}))
        .await;
    assert_eq!(raw.recv().await["code"], "invalid_status");
    let many: Vec<String> = (0..1_001).map(|i| format!("u{i}")).collect();
    raw.send(json!({"type": "subscribe", "users": many})).await;
    assert_eq!(raw.recv().await["code"], "too_many_users");
    raw.send(json!({"type": "subscribe", "users": ["ok", ""]}))
        .await;
    assert_eq!(raw.recv().await["code"], "invalid_user_id");
    raw.send(json!({"type": "query", "ref": "q1", "users": ["a\u{1}"]}))
        .await;
    let error = raw.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("invalid_user_id"), Some("q1"))
    );
    // Still in business.
    raw.send(json!({"type": "query", "ref": "q2", "users": ["zed"]}))
        .await;
    let result = raw.recv().await;
    assert_eq!(result["type"], "query_result");
    assert_eq!(result["ref"], "q2");
    assert_eq!(result["users"][0]["user_id"], "zed");
}

#[tokio::test]
async fn an_invalid_initial_status_starts_the_session_online_and_says_why() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    raw.hello(
        "alice",
        Some(json!({"availability": "busy", "activity": {"kind": "Not Valid"}})),
    )
    .await;
    let error = raw.recv().await;
    assert_eq!(error["code"], "invalid_status");
    raw.send(json!({"type": "query", "ref": "q", "users": ["alice"]}))
        .await;
    assert_eq!(raw.recv().await["users"][0]["availability"], "online");
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_the_connection_closed() {
    let server = server().await;
    let mut raw = Raw::session(&server, "alice").await;
    raw.send_text(format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(70_000)
    ))
    .await;
    let error = raw.recv().await;
    assert_eq!(error["code"], "frame_too_large");
    assert_eq!(raw.closed().await, Some(CloseCode::Size));
}

#[tokio::test]
async fn a_silent_session_expires_after_its_ttl_and_watchers_see_the_user_offline() {
    let server = server().await;
    let mut watcher = Raw::session(&server, "alice").await;
    watcher.subscribe(&["bob"]).await;
    let mut bob = Raw::session(&server, "bob").await;
    let online = watcher.update().await;
    assert_eq!(online["availability"], "online");
    let silent_since = std::time::Instant::now();
    // Bob says nothing more; alice keeps her own session alive with pings.
    let offline = loop {
        watcher.send(json!({"type": "ping"})).await;
        let frame = watcher.recv().await;
        if frame["type"] == "presence" {
            break frame["user"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expired_after = silent_since.elapsed();
    assert_eq!(offline["availability"], "offline");
    assert!(
        // TTL (900 ms) then the resume grace (300 ms): never sooner.
        expired_after >= Duration::from_millis(1_150),
        "expired early: {expired_after:?}"
    );
    assert!(expired_after < Duration::from_millis(1_200) + PATIENCE);
    // last_active_at is when bob's last frame arrived, not when the TTL ran out.
    let last_active = offline["last_active_at"].as_u64().unwrap();
    let since = offline["since"].as_u64().unwrap();
    assert!(
        since >= last_active + 800,
        "last active {last_active}, offline since {since}"
    );
    // Bob was told why, if his end can still read it (it never answered the server's pings).
    while let Ok(Some(Ok(message))) = tokio::time::timeout(PATIENCE, bob.ws.next()).await {
        if let Message::Text(text) = message
            && text.as_str().contains("\"error\"")
        {
            assert!(text.as_str().contains("session_expired"), "{text}");
            break;
        }
    }
    assert_eq!(server.stats().sessions_active, 1);
}

#[tokio::test]
async fn bye_makes_the_user_offline_at_once() {
    let server = server().await;
    let mut watcher = Raw::session(&server, "alice").await;
    watcher.subscribe(&["bob"]).await;
    let mut bob = Raw::session(&server, "bob").await;
    assert_eq!(watcher.update().await["availability"], "online");
    bob.send(json!({"type": "bye"})).await;
    assert_eq!(bob.closed().await, Some(CloseCode::Normal));
    assert_eq!(watcher.update().await["availability"], "offline");
}

#[tokio::test]
async fn three_devices_of_one_user_are_aggregated_by_the_documented_rule() {
    let server = server().await;
    let mut watcher = Raw::session(&server, "alice").await;
    watcher.subscribe(&["bob"]).await;
    let mut plugin = Raw::session(&server, "bob").await;
    assert_eq!(watcher.update().await["availability"], "online");
    let mut phone = Raw::session(&server, "bob").await;
    let mut browser = Raw::session(&server, "bob").await;
    let auto = |state: &str| json!({"type": "set_auto", "state": state});
    // An idle plugin and an active phone show online: no change reaches the watcher.
    plugin.send(auto("idle")).await;
    browser.send(auto("background")).await;
    watcher.send(json!({"type": "ping", "ref": "1"})).await;
    let frame = watcher.recv().await;
    assert_eq!(frame["ref"], "1", "nothing changed for watchers: {frame}");
    // The phone goes idle too: every device idle or in the background is away.
    phone.send(auto("idle")).await;
    assert_eq!(watcher.update().await["availability"], "away");
    // Activity on any one device brings the user back.
    browser.send(auto("active")).await;
    assert_eq!(watcher.update().await["availability"], "online");
    // Busy chosen on the phone is user-wide, whatever the devices' states; every device is told.
    phone
        .send(json!({"type": "set_status", "availability": "busy", "message": "Meeting", "chosen_at": 2_000}))
        .await;
    let update = watcher.update().await;
    assert_eq!(
        (update["availability"].as_str(), update["message"].as_str()),
        (Some("busy"), Some("Meeting"))
    );
    plugin.send(json!({"type": "ping", "ref": "p"})).await;
    assert_eq!(plugin.recv().await["ref"], "p");
    assert_eq!(
        plugin.choices.last().unwrap()["status"]["availability"],
        "busy",
        "{:?}",
        plugin.choices
    );
    // The phone that made the choice holds it already: it is not sent back.
    phone.send(json!({"type": "ping", "ref": "q"})).await;
    assert_eq!(phone.recv().await["ref"], "q");
    assert!(phone.choices.is_empty(), "{:?}", phone.choices);
    // An older choice from a device that reconnects does not override it.
    browser
        .send(json!({"type": "set_status", "availability": "online", "chosen_at": 1_000}))
        .await;
    browser.send(json!({"type": "ping", "ref": "b"})).await;
    assert_eq!(browser.recv().await["ref"], "b");
    // A newer choice does; DND on one device then makes the user busy with its message.
    browser
        .send(json!({"type": "set_status", "availability": "online", "chosen_at": 3_000}))
        .await;
    assert_eq!(watcher.update().await["availability"], "online");
    plugin
        .send(json!({"type": "set_auto", "state": "dnd", "message": "Tracking vocals"}))
        .await;
    let update = watcher.update().await;
    assert_eq!(
        (update["availability"].as_str(), update["message"].as_str()),
        (Some("busy"), Some("Tracking vocals"))
    );
    // Devices leave one by one; the user is offline only when the last one is gone.
    plugin.send(json!({"type": "bye"})).await;
    plugin.closed().await;
    assert_eq!(
        watcher.update().await["availability"],
        "online",
        "the DND device left"
    );
    phone.send(json!({"type": "bye"})).await;
    phone.closed().await;
    browser.send(json!({"type": "bye"})).await;
    assert_eq!(watcher.update().await["availability"], "offline");
}

#[tokio::test]
async fn a_status_with_the_automatic_state_is_applied_as_one_change() {
    let server = server().await;
    let mut watcher = Raw::session(&server, "alice").await;
    watcher.subscribe(&["bob"]).await;
    let mut bob = Raw::connect(&server).await;
    let welcome = bob.hello("bob", None).await;
    assert_eq!(welcome["features"], json!(["set_status_auto"]), "{welcome}");
    assert_eq!(watcher.update().await["availability"], "online");
    bob.send(json!({"type": "set_auto", "state": "idle"})).await;
    assert_eq!(watcher.update().await["availability"], "away");

    // Back and away with a message at once: one update, never online in between.
    bob.send(json!({
        "type": "set_status", "availability": "away", "message": "Lunch", "auto": {"state": "active"}
    }))
    .await;
    let update = watcher.update().await;
    assert_eq!(
        (update["availability"].as_str(), update["message"].as_str()),
        (Some("away"), Some("Lunch"))
    );
    // The session is active now: choosing online shows online.
    bob.send(json!({"type": "set_status", "availability": "online"}))
        .await;
    assert_eq!(watcher.update().await["availability"], "online");

    // The automatic state alone, carried by a choice that changes nothing, still counts.
    bob.send(json!({"type": "set_status", "availability": "online", "auto": {"state": "idle"}}))
        .await;
    assert_eq!(watcher.update().await["availability"], "away");

    // An invalid automatic state makes the whole frame invalid: nothing of it is applied.
    let long = "x".repeat(1_000);
    bob.send(json!({
        "type": "set_status", "ref": "bad", "availability": "busy",
        "auto": {"state": "dnd", "message": long}
    }))
    .await;
    let error = bob.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("invalid_status"), Some("bad")),
        "{error}"
    );
    watcher.send(json!({"type": "ping", "ref": "w"})).await;
    let frame = watcher.recv().await;
    assert_eq!(frame["ref"], "w", "nothing changed for watchers: {frame}");
}

#[tokio::test]
async fn versions_keep_increasing_across_a_restart() {
    let server = server().await;
    let addr = server.local_addr();
    let mut bob = Raw::session(&server, "bob").await;
    bob.send(json!({"type": "query", "ref": "q", "users": ["bob"]}))
        .await;
    let before = bob.recv().await["users"][0]["version"].as_u64().unwrap();
    server.kill().await;
    let mut c = config();
    c.listen = addr;
    let server = server_with(c).await;
    let mut bob = Raw::session(&server, "bob").await;
    bob.send(json!({"type": "query", "ref": "q", "users": ["bob"]}))
        .await;
    let after = bob.recv().await["users"][0]["version"].as_u64().unwrap();
    assert!(after > before, "{after} <= {before}");
}

#[tokio::test]
async fn draining_sends_goaway_then_closes() {
    let server = server().await;
    let mut raw = Raw::session(&server, "alice").await;
    let drained = tokio::spawn(server.shutdown());
    let goaway = raw.recv().await;
    assert_eq!(goaway["type"], "goaway");
    assert!(goaway["reconnect_after_ms"].as_u64().is_some());
    assert_eq!(raw.closed().await, Some(CloseCode::Away));
    drained.await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_instead_of_buffered_without_bound() {
    let mut c = config();
    c.outbound_queue = 8;
    // Bob floods on purpose; this test is about the reader, not the rate limit.
    c.status_burst = u32::MAX;
    c.status_per_second = 1e9;
    c.heartbeat_interval = Duration::from_secs(10);
    c.session_ttl = Duration::from_secs(30);
    let server = server_with(c).await;
    let mut sleeper = Raw::session(&server, "sleeper").await;
    sleeper.subscribe(&["bob"]).await;
    // The sleeper never reads again. Bob changes status until the sleeper's socket buffers and queue are full.
    let mut bob = Raw::session(&server, "bob").await;
    let long = "m".repeat(190);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut sent = 0u64;
    while server.stats().slow_consumers == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dropped after {sent} updates"
        );
        for _ in 0..100 {
            // A DND message that changes every time: a new record for the sleeper, nothing back to bob.
            let message = format!("{long}{}", sent % 10);
            bob.send(json!({"type": "set_auto", "state": "dnd", "message": message}))
                .await;
            sent += 1;
        }
        bob.send(json!({"type": "ping", "ref": "sync"})).await;
        while bob.recv().await["ref"] != "sync" {}
    }
    let wait = tokio::time::Instant::now() + PATIENCE;
    // The sleeper's connection is dropped; its session waits (briefly) for a resume.
    while server.stats().sessions_detached != 1 && server.stats().sessions_active != 1 {
        assert!(tokio::time::Instant::now() < wait, "{:?}", server.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("slow consumer dropped after {sent} updates");
    drop(sleeper);
}

impl Raw {
    /// `hello` that asks to resume `session_id`; returns the welcome.
    async fn hello_resume(&mut self, user: &str, session_id: &str, last_version: u64) -> Value {
        self.send(json!({
            "type": "hello", "protocol": 1, "token": token(user),
            "client": {"name": "raw", "version": "1", "platform": "test"},
            "resume": {"session_id": session_id, "last_version": last_version}
        }))
        .await;
        let welcome = self.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        welcome
    }
}

/// Asserts that the watcher receives nothing but its own pong: no presence change happened.
async fn nothing_changed(watcher: &mut Raw, tag: &str) {
    watcher.send(json!({"type": "ping", "ref": tag})).await;
    let frame = watcher.recv().await;
    assert_eq!(frame["ref"], tag, "a watcher saw a change: {frame}");
}

#[tokio::test]
async fn a_dropped_session_resumed_within_the_grace_shows_no_blip() {
    let mut c = config();
    c.resume_grace = Duration::from_secs(10);
    let server = server_with(c).await;
    let mut watcher = Raw::session(&server, "alice").await;
    watcher.subscribe(&["bob"]).await;
    let mut bob = Raw::connect(&server).await;
    let welcome = bob
        .hello(
            "bob",
            Some(json!({"availability": "busy", "message": "Mixing"})),
        )
        .await;
    assert_eq!(welcome["resume_grace_ms"], 10_000);
    let session_id = welcome["session_id"].as_str().unwrap().to_owned();
    assert_eq!(watcher.update().await["availability"], "busy");
    let snapshot = bob.subscribe(&["alice", "carol"]).await;
    let last_version = snapshot["users"][0]["version"].as_u64().unwrap();

    // The tunnel: bob's connection drops without bye; alice changes status meanwhile.
    drop(bob);
    eventually("the session waiting for a resume", || {
        server.stats().sessions_detached == 1
    })
    .await;
    assert_eq!(server.stats().sessions_detached, 1);
    watcher
        .send(json!({"type": "set_status", "availability": "away"}))
        .await;
    nothing_changed(&mut watcher, "during the drop").await;

    let mut bob = Raw::connect(&server).await;
    let welcome = bob.hello_resume("bob", &session_id, last_version).await;
    assert_eq!(welcome["resumed"], true);
    assert_eq!(welcome["session_id"], session_id.as_str());
    assert_eq!(
        welcome["choice"]["availability"], "busy",
        "the choice survived"
    );
    // Only what changed while away: alice, not carol.
    let snapshot = bob.recv().await;
    assert_eq!(snapshot["type"], "snapshot");
    let users: Vec<&str> = snapshot["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice"]);
    assert_eq!(snapshot["users"][0]["availability"], "away");
    // The watch list was kept: alice's next change reaches bob without a new subscribe.
    watcher
        .send(json!({"type": "set_status", "availability": "online"}))
        .await;
    assert_eq!(bob.update().await["availability"], "online");
    nothing_changed(&mut watcher, "after the resume").await;
    assert_eq!(server.stats().sessions_resumed, 1);
}

#[tokio::test]
async fn after_the_grace_the_user_goes_offline_and_a_resume_starts_afresh() {
    let server = server().await; // grace 300 ms
    let mut watcher = Raw::session(&server, "alice").await;
    watcher.subscribe(&["bob"]).await;
    let mut bob = Raw::connect(&server).await;
    let session_id = bob.hello("bob", None).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(watcher.update().await["availability"], "online");
    let dropped_at = std::time::Instant::now();
    drop(bob);
    let offline = watcher.update().await;
    assert_eq!(offline["availability"], "offline");
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(290),
        "not before the grace"
    );
    let mut bob = Raw::connect(&server).await;
    let welcome = bob.hello_resume("bob", &session_id, 0).await;
    assert_eq!(welcome["resumed"], false);
    assert_ne!(welcome["session_id"], session_id.as_str());
    assert_eq!(watcher.update().await["availability"], "online");
}

#[tokio::test]
async fn a_session_cannot_be_resumed_by_another_user() {
    let mut c = config();
    c.resume_grace = Duration::from_secs(10);
    let server = server_with(c).await;
    let mut bob = Raw::connect(&server).await;
    let session_id = bob.hello("bob", None).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(bob);
    eventually("the session waiting for a resume", || {
        server.stats().sessions_detached == 1
    })
    .await;
    let mut mallory = Raw::connect(&server).await;
    let welcome = mallory.hello_resume("mallory", &session_id, 0).await;
    assert_eq!(welcome["resumed"], false);
    assert_eq!(welcome["user_id"], "mallory");
}

#[tokio::test]
async fn a_resume_takes_over_a_half_open_connection_without_a_blip() {
    let mut c = config();
    c.resume_grace = Duration::from_secs(10);
    let server = server_with(c).await;
    let mut watcher = Raw::session(&server, "alice").await;
    watcher.subscribe(&["bob"]).await;
    let mut old = Raw::connect(&server).await;
    let session_id = old.hello("bob", None).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(watcher.update().await["availability"], "online");
    // The server still believes in the old connection; the client has given up on it and resumes.
    let mut new = Raw::connect(&server).await;
    assert_eq!(
        new.hello_resume("bob", &session_id, 0).await["resumed"],
        true
    );
    assert_eq!(old.closed().await, None, "the old connection is dropped");
    nothing_changed(&mut watcher, "takeover").await;
    assert_eq!(server.stats().sessions_active, 2);
}

#[tokio::test]
async fn the_server_pings_so_a_throttled_client_stays_alive() {
    let server = server().await; // pings every 300 ms, TTL 900 ms
    let mut raw = Raw::session(&server, "alice").await;
    // The client sends nothing for 2 s, but its WebSocket layer answers the server's pings.
    let pings = raw.pings_while_silent(Duration::from_secs(2)).await;
    assert!(pings >= 4, "{pings} pings in 2 s at one per 300 ms");
    raw.send(json!({"type": "ping", "ref": "still here"})).await;
    assert_eq!(raw.recv().await["ref"], "still here");
    assert_eq!(server.stats().sessions_detached, 0, "never dropped");
}

#[tokio::test]
async fn a_link_busy_both_ways_is_not_pinged_and_a_quiet_one_is() {
    let config = config().with_heartbeat(Duration::from_secs(1), Duration::from_secs(3));
    let server = server_with(config).await; // pings every 1 s, unless frames went both ways in the last 500 ms
    let mut raw = Raw::session(&server, "alice").await;
    // Busy for 3 s: a `ping` of its own every 50 ms, each answered with `pong`.
    let busy_until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut answered = 0;
    while tokio::time::Instant::now() < busy_until {
        raw.send(json!({"type": "ping", "ref": answered.to_string()}))
            .await;
        assert_eq!(raw.recv().await["type"], "pong");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        raw.pings, 0,
        "a link that carried frames both ways within half an interval needs no ping"
    );
    // Quiet for 2.5 s: pinged again, and the pongs keep the session.
    let pings = raw.pings_while_silent(Duration::from_millis(2_500)).await;
    assert!(pings >= 1, "{pings} pings in 2.5 s of silence");
    assert_eq!(server.stats().sessions_detached, 0, "never dropped");
}

#[tokio::test]
async fn status_updates_are_rate_limited_without_disconnecting() {
    let server = server().await; // burst 10, 5 per second
    let mut raw = Raw::session(&server, "alice").await;
    for i in 0..10 {
        raw.send(json!({"type": "set_auto", "state": if i % 2 == 0 { "idle" } else { "active" }}))
            .await;
    }
    raw.send(json!({"type": "set_auto", "ref": "11th", "state": "idle"}))
        .await;
    let error = raw.recv().await;
    assert_eq!(
        (
            error["code"].as_str(),
            error["ref"].as_str(),
            error["fatal"].as_bool()
        ),
        (Some("rate_limited"), Some("11th"), Some(false))
    );
    let retry = error["retry_after_ms"].as_u64().unwrap();
    assert!((1..=250).contains(&retry), "{retry}");
    tokio::time::sleep(Duration::from_millis(retry + 20)).await;
    raw.send(json!({"type": "set_auto", "ref": "later", "state": "idle"}))
        .await;
    raw.send(json!({"type": "ping", "ref": "up"})).await;
    assert_eq!(
        raw.recv().await["ref"],
        "up",
        "accepted after the delay, still connected"
    );
}

#[tokio::test]
async fn a_hello_with_an_unknown_availability_starts_without_it_and_a_future_hello_is_refused_clearly()
 {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    raw.hello("alice", Some(json!({"availability": "sparkling"})))
        .await;
    assert_eq!(raw.recv().await["code"], "invalid_status");
    raw.send(json!({"type": "set_status", "ref": "s", "availability": "sparkling"}))
        .await;
    let error = raw.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["fatal"].as_bool()),
        (Some("invalid_message"), Some(false))
    );
    raw.send(json!({"type": "query", "ref": "q", "users": ["alice"]}))
        .await;
    assert_eq!(raw.recv().await["users"][0]["availability"], "online");
    // A hello from a future version with a different shape: unsupported_protocol, not hello_required.
    let mut future = Raw::connect(&server).await;
    future
        .send(json!({"type": "hello", "protocol": 2, "credentials": {"kind": "oauth"}}))
        .await;
    assert_eq!(future.recv().await["code"], "unsupported_protocol");
}

#[tokio::test]
async fn big_snapshots_and_query_results_are_split_to_fit_the_frame_limit() {
    let server = server().await;
    let mut raw = Raw::session(&server, "alice").await;
    // Requests of 1,000 ids of 45 bytes fit in a frame; their answers (about 160 KB) do not.
    let users: Vec<String> = (0..1_000)
        .map(|i| format!("user-{i:04}-{}", "x".repeat(35)))
        .collect();
    raw.send(json!({"type": "subscribe", "users": users})).await;
    let mut seen = 0;
    let mut frames = 0;
    while seen < 1_000 {
        let frame = raw.recv().await;
        assert_eq!(frame["type"], "snapshot");
        assert!(frame.to_string().len() <= 65_536);
        seen += frame["users"].as_array().unwrap().len();
        frames += 1;
    }
    assert!(frames > 1, "one frame of 1,000 records would not fit");
    raw.send(json!({"type": "query", "ref": "big", "users": users}))
        .await;
    let mut records = 0;
    loop {
        let part = raw.recv().await;
        assert_eq!(
            (part["type"].as_str(), part["ref"].as_str()),
            (Some("query_result"), Some("big"))
        );
        records += part["users"].as_array().unwrap().len();
        if part.get("more").is_none() {
            break;
        }
    }
    assert_eq!(records, 1_000);
}

fn admin_config() -> ServerConfig {
    let mut c = config();
    c.admin_token = Some("admin-secret".into());
    c
}

/// A session of `user` that watches `users`; returns it with the snapshot's records.
async fn watching(server: &RunningServer, user: &str, users: &[&str]) -> (Raw, Vec<Value>) {
    let mut raw = Raw::session(server, user).await;
    let snapshot = raw.subscribe(users).await;
    let records = snapshot["users"].as_array().unwrap().clone();
    (raw, records)
}

fn hidden(record: &Value) -> bool {
    record["availability"] == "offline"
        && record["message"].is_null()
        && record["activity"].is_null()
        && record["last_active_at"].is_null()
        && record["since"].is_null()
        && record.get("focus").is_none()
}

#[tokio::test]
async fn contacts_only_visibility_is_enforced_on_every_path() {
    let server = server_with(admin_config()).await;
    server
        .set_contacts("bob", ["friend"])
        .await
        .expect("contacts set");
    let mut bob = Raw::connect(&server).await;
    bob.hello(
        "bob",
        Some(json!({"availability": "busy", "message": "secret plans"})),
    )
    .await;
    bob.send(json!({"type": "set_privacy", "visibility": "contacts"}))
        .await;
    bob.send(json!({"type": "set_focus", "context": "conversation:7"}))
        .await;
    bob.send(json!({"type": "ping", "ref": "sync"})).await;
    assert_eq!(bob.recv().await["ref"], "sync");
    assert_eq!(
        bob.privacy.last().unwrap()["visibility"],
        "contacts",
        "bob is told the settings in force"
    );

    let (mut friend, friend_view) = watching(&server, "friend", &["bob"]).await;
    let (mut stranger, stranger_view) = watching(&server, "stranger", &["bob"]).await;
    // Snapshots.
    assert_eq!(friend_view[0]["availability"], "busy");
    assert_eq!(friend_view[0]["focus"], json!(["conversation:7"]));
    assert!(hidden(&stranger_view[0]), "{}", stranger_view[0]);
    // Queries.
    stranger
        .send(json!({"type": "query", "ref": "q", "users": ["bob"]}))
        .await;
    assert!(hidden(&stranger.recv().await["users"][0]));
    // Updates: the friend sees the change, the stranger gets no frame at all.
    bob.send(json!({"type": "set_status", "availability": "away", "message": "more secrets"}))
        .await;
    assert_eq!(friend.update().await["message"], "more secrets");
    nothing_changed(&mut stranger, "no leak").await;
    // Becoming a contact reveals; losing it hides again (with a newer version each time).
    server
        .set_contacts("bob", ["friend", "stranger"])
        .await
        .expect("contacts set");
    let revealed = stranger.update().await;
    assert_eq!(revealed["message"], "more secrets");
    server
        .set_contacts("bob", ["friend"])
        .await
        .expect("contacts set");
    let hidden_again = stranger.update().await;
    assert!(hidden(&hidden_again), "{hidden_again}");
    assert!(hidden_again["version"].as_u64() > revealed["version"].as_u64());
    nothing_changed(&mut friend, "the friend's view did not change").await;
}

#[tokio::test]
async fn nobody_visibility_and_a_resumed_session_leak_nothing_either() {
    let mut c = admin_config();
    c.resume_grace = Duration::from_secs(10);
    let server = server_with(c).await;
    let mut bob = Raw::session(&server, "bob").await;
    bob.send(json!({"type": "set_privacy", "visibility": "nobody"}))
        .await;
    let (stranger, view) = watching(&server, "stranger", &["bob"]).await;
    assert!(hidden(&view[0]));
    drop(stranger);
    // A watcher that drops and resumes from version 0 must not learn anything from the resume snapshot.
    let mut watcher = Raw::connect(&server).await;
    let welcome = watcher.hello("watcher", None).await;
    let id = welcome["session_id"].as_str().unwrap().to_owned();
    watcher.subscribe(&["bob"]).await;
    bob.send(json!({"type": "set_status", "availability": "busy", "message": "hidden"}))
        .await;
    nothing_changed(&mut watcher, "nobody sees bob").await;
    drop(watcher);
    let mut again = Raw::connect(&server).await;
    assert_eq!(again.hello_resume("watcher", &id, 0).await["resumed"], true);
    let snapshot = again.recv().await;
    assert_eq!(snapshot["type"], "snapshot");
    for record in snapshot["users"].as_array().unwrap() {
        assert!(hidden(record), "{record}");
    }
}

#[tokio::test]
async fn invisible_users_appear_offline_but_still_see_others() {
    let server = server().await;
    let (mut watcher, _) = watching(&server, "watcher", &["bob"]).await;
    let (mut bob, _) = watching(&server, "bob", &["carol"]).await;
    assert_eq!(watcher.update().await["availability"], "online");
    bob.send(json!({"type": "set_status", "availability": "invisible", "message": "shh"}))
        .await;
    let gone = watcher.update().await;
    assert_eq!(gone["availability"], "offline");
    assert!(gone["message"].is_null() && gone["since"].is_u64() && gone["last_active_at"].is_u64());
    // Real changes while invisible produce nothing for watchers.
    bob.send(json!({"type": "set_focus", "context": "conversation:9"}))
        .await;
    bob.send(json!({"type": "set_status", "availability": "invisible", "message": "still shh"}))
        .await;
    nothing_changed(&mut watcher, "invisible").await;
    // Bob still sees carol.
    let mut carol = Raw::session(&server, "carol").await;
    assert_eq!(bob.update().await["availability"], "online");
    carol
        .send(json!({"type": "set_status", "availability": "busy"}))
        .await;
    assert_eq!(bob.update().await["availability"], "busy");
    // Leaving while invisible moves nothing: he was already offline.
    bob.send(json!({"type": "bye"})).await;
    nothing_changed(&mut watcher, "left while invisible").await;
}

#[tokio::test]
async fn hidden_last_seen_is_null_for_everyone_but_the_user() {
    let server = server().await;
    let mut bob = Raw::session(&server, "bob").await;
    bob.send(json!({"type": "set_privacy", "visibility": "everyone", "hide_last_seen": true}))
        .await;
    let (_watcher, view) = watching(&server, "watcher", &["bob"]).await;
    assert_eq!(view[0]["availability"], "online");
    assert!(view[0]["last_active_at"].is_null());
    let own = bob.subscribe(&["bob"]).await;
    assert!(
        own["users"][0]["last_active_at"].is_u64(),
        "the user sees their own"
    );
}

#[tokio::test]
async fn focus_contexts_of_all_devices_are_visible() {
    let server = server().await;
    let (mut watcher, _) = watching(&server, "watcher", &["bob"]).await;
    let mut phone = Raw::session(&server, "bob").await;
    let _ = watcher.update().await;
    let mut laptop = Raw::session(&server, "bob").await;
    phone
        .send(json!({"type": "set_focus", "context": "conversation:42"}))
        .await;
    assert_eq!(watcher.update().await["focus"], json!(["conversation:42"]));
    laptop
        .send(json!({"type": "set_focus", "context": "channel:general"}))
        .await;
    assert_eq!(
        watcher.update().await["focus"],
        json!(["channel:general", "conversation:42"])
    );
    phone
        .send(json!({"type": "set_focus", "context": null}))
        .await;
    assert_eq!(watcher.update().await["focus"], json!(["channel:general"]));
    laptop
        .send(json!({"type": "set_focus", "context": ""}))
        .await;
    assert_eq!(laptop.recv().await["code"], "invalid_message");
}

#[tokio::test]
async fn a_choice_goes_back_to_the_session_that_made_it_only_when_the_server_changed_it() {
    let server = server().await;
    let mut phone = Raw::session(&server, "bob").await;
    let mut laptop = Raw::connect(&server).await;
    // A hello with a choice: the welcome carries it, no `choice` frame follows for that session.
    let welcome = laptop
        .hello(
            "bob",
            Some(json!({"availability": "away", "message": "Lunch", "chosen_at": 1_000})),
        )
        .await;
    assert_eq!(welcome["choice"]["availability"], "away");
    laptop.round_trip("1").await;
    assert!(laptop.choices.is_empty(), "{:?}", laptop.choices);
    phone.round_trip("2").await;
    assert_eq!(phone.choices.len(), 1, "the other device is told");
    assert_eq!(phone.choices[0]["status"]["message"], "Lunch");

    // Taken as sent: not echoed; the other device is told.
    phone
        .send(json!({"type": "set_status", "availability": "busy", "chosen_at": 2_000}))
        .await;
    phone.round_trip("3").await;
    assert_eq!(phone.choices.len(), 1, "{:?}", phone.choices);
    laptop.round_trip("4").await;
    assert_eq!(laptop.choices.len(), 1);
    assert_eq!(laptop.choices[0]["status"]["availability"], "busy");

    // Without a time, the server times it: the maker learns when.
    phone
        .send(json!({"type": "set_status", "availability": "online"}))
        .await;
    phone.round_trip("5").await;
    assert_eq!(phone.choices.len(), 2, "{:?}", phone.choices);
    let stored = &phone.choices[1]["status"];
    assert_eq!(stored["availability"], "online");
    assert!(stored["chosen_at"].as_u64().unwrap() > 2_000, "{stored}");

    // A message already expired is dropped: the maker learns the choice as stored.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    phone
        .send(json!({"type": "set_status", "availability": "away", "message": "gone", "message_expires_at": 1, "chosen_at": now_ms + 60_000}))
        .await;
    phone.round_trip("6").await;
    assert_eq!(phone.choices.len(), 3, "{:?}", phone.choices);
    assert!(
        phone.choices[2]["status"].get("message").is_none(),
        "{}",
        phone.choices[2]
    );
}

#[tokio::test]
async fn a_message_with_an_expiry_clears_itself_on_time() {
    let server = server().await;
    let (mut watcher, _) = watching(&server, "watcher", &["bob"]).await;
    let mut bob = Raw::session(&server, "bob").await;
    let _ = watcher.update().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    bob.send(json!({"type": "set_status", "availability": "busy", "message": "back in 5", "message_expires_at": now_ms + 400})).await;
    assert_eq!(watcher.update().await["message"], "back in 5");
    let cleared = watcher.update().await;
    assert!(cleared["message"].is_null(), "{cleared}");
    assert_eq!(cleared["availability"], "busy", "only the message goes");
    let waited = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(waited >= now_ms + 400, "not before its time");
    bob.send(json!({"type": "ping", "ref": "x"})).await;
    assert_eq!(bob.recv().await["ref"], "x");
    assert!(
        bob.choices.last().unwrap()["status"]
            .get("message")
            .is_none(),
        "devices are told: {:?}",
        bob.choices
    );
}

#[tokio::test]
async fn the_admin_api_needs_its_token() {
    let server = server_with(admin_config()).await;
    let put = |token: Option<&str>| {
        let mut request = String::from(
            "PUT /v1/admin/users/bob/contacts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 24\r\nConnection: close\r\n",
        );
        if let Some(t) = token {
            request.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        request.push_str("\r\n{\"contacts\":[\"alice\"]}\r\n");
        request
    };
    async fn send(addr: std::net::SocketAddr, request: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }
    let addr = server.local_addr();
    assert!(send(addr, put(None)).await.starts_with("HTTP/1.1 401"));
    assert!(
        send(addr, put(Some("wrong")))
            .await
            .starts_with("HTTP/1.1 401")
    );
    assert!(
        send(addr, put(Some("admin-secret")))
            .await
            .starts_with("HTTP/1.1 204")
    );
    let get = "GET /v1/admin/users/bob/contacts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-secret\r\nConnection: close\r\n\r\n";
    let response = send(addr, get.to_owned()).await;
    assert!(response.contains(r#"{"contacts":["alice"]}"#), "{response}");
    // Off without a token configured.
    let plain = server_with(config()).await;
    assert!(
        send(plain.local_addr(), put(Some("admin-secret")))
            .await
            .starts_with("HTTP/1.1 404")
    );
}

#[tokio::test]
async fn channels_give_a_snapshot_then_updates_joins_and_leaves() {
    let server = server().await;
    server
        .set_channel_members("studio", ["alice", "bob", "carol"])
        .await
        .expect("channel members set");
    let mut alice = Raw::session(&server, "alice").await;
    let mut bob = Raw::connect(&server).await;
    bob.hello("bob", Some(json!({"availability": "busy"})))
        .await;
    alice
        .send(json!({"type": "subscribe_channels", "channels": ["studio", "other"]}))
        .await;
    // The snapshot of "studio", then the refusal of "other" (channels are handled in order).
    let snapshot = alice.recv().await;
    let error = alice.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["fatal"].as_bool()),
        (Some("not_a_member"), Some(false))
    );
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["channel"].as_str()),
        (Some("channel_snapshot"), Some("studio"))
    );
    let members: Vec<(&str, &str)> = snapshot["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap(),
                m["availability"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        members,
        [("alice", "online"), ("bob", "busy"), ("carol", "offline")]
    );
    // Updates of members.
    bob.send(json!({"type": "set_status", "availability": "away"}))
        .await;
    assert_eq!(alice.update().await["availability"], "away");
    // Joins and leaves.
    server
        .set_channel_members("studio", ["alice", "bob", "dave"])
        .await
        .expect("channel members set");
    // Who left, then who joined.
    let left = alice.recv().await;
    assert_eq!(left["type"], "channel_members");
    assert_eq!(left["left"], json!(["carol"]));
    let joined = alice.recv().await;
    assert_eq!(joined["type"], "channel_members");
    assert_eq!(joined["joined"][0]["user_id"], "dave");
    // A member who left is no longer watched; one who joined is.
    let mut carol = Raw::session(&server, "carol").await;
    let mut dave = Raw::session(&server, "dave").await;
    assert_eq!(
        alice.update().await["user_id"],
        "dave",
        "carol's coming online is not sent: she left"
    );
    carol.send(json!({"type": "ping"})).await;
    dave.send(json!({"type": "set_status", "availability": "busy"}))
        .await;
    assert_eq!(alice.update().await["availability"], "busy");
    // Unsubscribing stops the updates.
    alice
        .send(json!({"type": "unsubscribe_channels", "channels": ["studio"]}))
        .await;
    dave.send(json!({"type": "set_status", "availability": "away"}))
        .await;
    nothing_changed(&mut alice, "unsubscribed").await;
}

#[tokio::test]
async fn privacy_holds_in_channels_too() {
    let server = server().await;
    server
        .set_channel_members("team", ["alice", "bob"])
        .await
        .expect("channel members set");
    let mut bob = Raw::session(&server, "bob").await;
    bob.send(json!({"type": "set_privacy", "visibility": "contacts"}))
        .await;
    bob.send(json!({"type": "ping", "ref": "sync"})).await;
    assert_eq!(bob.recv().await["ref"], "sync");
    let mut alice = Raw::session(&server, "alice").await;
    alice
        .send(json!({"type": "subscribe_channels", "channels": ["team"]}))
        .await;
    let snapshot = alice.recv().await;
    let bob_record = snapshot["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == "bob")
        .unwrap()
        .clone();
    assert!(hidden(&bob_record), "{bob_record}");
    bob.send(json!({"type": "set_status", "availability": "busy"}))
        .await;
    nothing_changed(&mut alice, "bob is hidden from alice in the channel").await;
}

#[tokio::test]
async fn after_a_resume_channels_are_subscribed_afresh() {
    let mut c = config();
    c.resume_grace = Duration::from_secs(10);
    let server = server_with(c).await;
    server
        .set_channel_members("studio", ["alice", "bob"])
        .await
        .expect("channel members set");
    let mut alice = Raw::connect(&server).await;
    let id = alice.hello("alice", None).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .send(json!({"type": "subscribe_channels", "channels": ["studio"]}))
        .await;
    assert_eq!(alice.recv().await["type"], "channel_snapshot");
    drop(alice);
    eventually("the session waiting for a resume", || {
        server.stats().sessions_detached == 1
    })
    .await;
    server
        .set_channel_members("studio", ["alice", "bob", "erin"])
        .await
        .expect("channel members set");
    let mut alice = Raw::connect(&server).await;
    assert_eq!(
        alice.hello_resume("alice", &id, u64::MAX).await["resumed"],
        true
    );
    assert_eq!(alice.recv().await["type"], "snapshot");
    // Clients subscribe their channels again after every welcome; the answer reflects today's members.
    alice
        .send(json!({"type": "subscribe_channels", "channels": ["studio"]}))
        .await;
    let channel = alice.recv().await;
    assert_eq!(channel["type"], "channel_snapshot");
    let ids: Vec<&str> = channel["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob", "erin"]);
}

#[tokio::test]
async fn connecting_invisibly_leaves_no_trace_for_watchers() {
    let server = server().await;
    let (mut watcher, _) = watching(&server, "watcher", &["bob"]).await;
    let mut bob = Raw::session(&server, "bob").await;
    assert_eq!(watcher.update().await["availability"], "online");
    bob.send(json!({"type": "bye"})).await;
    let offline = watcher.update().await;
    assert_eq!(offline["availability"], "offline");
    // Bob comes back invisible: watchers receive nothing at all.
    let mut ghost = Raw::connect(&server).await;
    ghost
        .hello("bob", Some(json!({"availability": "invisible"})))
        .await;
    nothing_changed(&mut watcher, "an invisible arrival").await;
    watcher
        .send(json!({"type": "query", "ref": "q", "users": ["bob"]}))
        .await;
    let seen = watcher.recv().await["users"][0].clone();
    assert_eq!(
        (&seen["since"], &seen["last_active_at"]),
        (&offline["since"], &offline["last_active_at"]),
        "{seen}"
    );
}

#[tokio::test]
async fn a_resume_without_an_automatic_state_means_active() {
    let mut c = config();
    c.resume_grace = Duration::from_secs(10);
    let server = server_with(c).await;
    let (mut watcher, _) = watching(&server, "watcher", &["bob"]).await;
    let mut bob = Raw::connect(&server).await;
    let id = bob.hello("bob", None).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(watcher.update().await["availability"], "online");
    bob.send(json!({"type": "set_auto", "state": "idle"})).await;
    assert_eq!(watcher.update().await["availability"], "away");
    drop(bob);
    eventually("the session waiting for a resume", || {
        server.stats().sessions_detached == 1
    })
    .await;
    // The laptop wakes up active and resumes: its hello has no `auto`.
    let mut bob = Raw::connect(&server).await;
    assert_eq!(bob.hello_resume("bob", &id, 0).await["resumed"], true);
    assert_eq!(watcher.update().await["availability"], "online");
}

#[tokio::test]
async fn hidden_last_seen_also_hides_when_an_offline_user_left() {
    let server = server().await;
    let (mut watcher, _) = watching(&server, "watcher", &["bob"]).await;
    let mut bob = Raw::session(&server, "bob").await;
    let _ = watcher.update().await;
    bob.send(json!({"type": "set_privacy", "visibility": "everyone", "hide_last_seen": true}))
        .await;
    bob.send(json!({"type": "bye"})).await;
    let offline = loop {
        let update = watcher.update().await;
        if update["availability"] == "offline" {
            break update;
        }
    };
    assert!(
        offline["since"].is_null() && offline["last_active_at"].is_null(),
        "{offline}"
    );
}

#[tokio::test]
async fn a_choice_from_the_far_future_is_refused() {
    let server = server().await;
    let mut raw = Raw::session(&server, "alice").await;
    raw.send(json!({"type": "set_status", "ref": "f", "availability": "busy", "chosen_at": 9_007_199_254_740_991u64})).await;
    let error = raw.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("invalid_status"), Some("f"))
    );
    raw.send(json!({"type": "set_status", "availability": "away"}))
        .await;
    raw.send(json!({"type": "query", "ref": "q", "users": ["alice"]}))
        .await;
    assert_eq!(
        raw.recv().await["users"][0]["availability"],
        "away",
        "later choices still win"
    );
}
