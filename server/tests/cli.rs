//! The `presently-server` binary as an operator runs it: serve, mint a token, drain on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const BIN: &str = env!("CARGO_BIN_EXE_presently-server");
const SECRET: &str = "cli test secret of enough length";

#[test]
fn help_and_token_commands() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--listen") && help.contains("--secret") && help.contains("token"));

    let token = Command::new(BIN)
        .args(["token", "--user", "alice", "--secret", SECRET])
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    let auth = presently_server::TokenAuthority::new(SECRET.as_bytes()).unwrap();
    assert_eq!(auth.verify(token.trim()), Ok("alice".to_owned()));

    let weak = Command::new(BIN)
        .args(["token", "--user", "alice", "--secret", "short"])
        .output()
        .unwrap();
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 16 bytes"));
}

#[test]
fn serving_without_a_secret_is_refused_with_a_clear_message() {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("PRESENTLY_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PRESENTLY_SECRET"));
}

#[cfg(unix)]
#[tokio::test]
async fn serves_a_session_and_drains_with_goaway_on_ctrl_c() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env("PRESENTLY_SECRET", SECRET)
        .env("RUST_LOG", "off")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();

    let token = presently_server::TokenAuthority::new(SECRET.as_bytes())
        .unwrap()
        .mint("alice", Duration::from_secs(60))
        .unwrap();
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "presently.v1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = json!({"type": "hello", "protocol": 1, "token": token,
        "client": {"name": "cli-test", "version": "1", "platform": "linux"}});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let welcome: Value =
        serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user_id"], "alice");

    // Ctrl-C: the server drains.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Other frames (the privacy settings in force) may come first.
    let goaway = loop {
        let message = ws.next().await.unwrap().unwrap();
        let Ok(text) = message.to_text() else {
            continue;
        };
        let frame: Value = serde_json::from_str(text).unwrap();
        if frame["type"] == "goaway" {
            break frame;
        }
    };
    assert_eq!(goaway["type"], "goaway");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
}
