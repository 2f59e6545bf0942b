//! `presently-bench bare`: the fan-out scenario against the same reference server, with clients that are bare
//! WebSocket connections (tokio-tungstenite, configured as the SDK configures it) sending and reading the
//! protocol's few frames by hand: no SDK, no JSON decoding, no event channel, no timers. Beside `fanout` it shows
//! what the SDK's client adds on top of the WebSocket stack it is built on; beside `floor`, what that stack and the
//! server add on top of the machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Result, ServerProcess, free_port, own_rss, paced_changes, percentile, tokens, user};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames a bare client's task may have waiting to be written (the harness's changes).
const OUTBOUND: usize = 64;

/// Runs the fan-out scenario of `fanout` (`count` clients, each watching the `watch` users after it, `rate` status
/// changes a second for `duration` seconds, the clients taking turns in a shuffled order) with bare clients;
/// reports the latency from a change's frame being handed to its client's task to each watcher's task reading it.
pub(crate) async fn bare(
    count: usize,
    watch: usize,
    rate: u64,
    duration: u64,
) -> Result<serde_json::Value> {
    if watch == 0 || watch >= count {
        return Err("--watch must be at least 1 and less than --clients".into());
    }
    let authority = tokens()?;
    let server = ServerProcess::start(free_port().await?).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server_rss_before = server.rss();
    let own_rss_before = own_rss();
    let origin = Instant::now();
    let connect_started = Instant::now();

    let mut sockets = Vec::with_capacity(count);
    for start in (0..count).step_by(200) {
        let batch = (start..(start + 200).min(count)).map(|i| {
            let token = authority.mint(&user(i), Duration::from_secs(24 * 3_600));
            let url = server.url();
            async move { connect(&url, &token.map_err(|e| e.to_string())?).await }
        });
        for (i, outcome) in futures_util::future::join_all(batch)
            .await
            .into_iter()
            .enumerate()
        {
            sockets.push(
                outcome.map_err(|e| format!("bare client {} did not connect: {e}", start + i))?,
            );
        }
    }

    let latencies = Arc::new(Mutex::new(Vec::<u64>::with_capacity(
        (rate * duration) as usize * watch,
    )));
    let received = Arc::new(AtomicU64::new(0));
    let snapshots = Arc::new(Semaphore::new(0));
    let mut outlets = Vec::with_capacity(count);
    for (i, ws) in sockets.into_iter().enumerate() {
        let (outlet, outbound) = mpsc::channel(OUTBOUND);
        outlets.push(outlet);
        let watched: Vec<String> = (1..=watch).map(|k| user((i + k) % count)).collect();
        let subscribe = json!({"type": "subscribe", "users": watched}).to_string();
        let (latencies, received, snapshots) =
            (latencies.clone(), received.clone(), snapshots.clone());
        tokio::spawn(run(
            ws,
            subscribe,
            outbound,
            origin,
            move |micros| {
                if let Ok(mut all) = latencies.lock() {
                    all.push(micros);
                }
                received.fetch_add(1, Ordering::Relaxed);
            },
            snapshots,
        ));
    }
    let all_in = tokio::time::timeout(
        Duration::from_secs(120),
        snapshots.acquire_many(count as u32),
    )
    .await;
    match all_in {
        Ok(Ok(permits)) => permits.forget(),
        _ => return Err("snapshots did not arrive within 120 s".into()),
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server_rss_connected = server.rss();
    let own_rss_connected = own_rss();

    let total = rate * duration;
    let sent = tokio::spawn(changes(outlets.clone(), rate, total, origin))
        .await
        .map_err(|e| format!("the task making changes failed: {e}"))??;
    let expected = total * watch as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut all = latencies.lock().map_err(|_| "poisoned")?.clone();
    all.sort_unstable();
    drop(outlets);
    server.kill().await;
    Ok(json!({
        "peer": "bare",
        "clients": count,
        "watch": watch,
        "rate": rate,
        "duration_s": duration,
        "connect_s": (connect_s * 1000.0).round() / 1000.0,
        "changes": sent,
        "expected": expected,
        "received": received.load(Ordering::Relaxed),
        "p50_us": percentile(&all, 50.0),
        "p99_us": percentile(&all, 99.0),
        "max_us": all.last().copied().unwrap_or(0),
        "server_rss_per_connection_bytes": server_rss_connected.saturating_sub(server_rss_before) / count as u64,
        "client_rss_per_instance_bytes": own_rss_connected.saturating_sub(own_rss_before) / count as u64,
    }))
}

/// Opens a WebSocket as the SDK does (subprotocol, 2 KiB read buffer, Nagle off), says hello and waits for
/// `welcome`.
async fn connect(url: &str, token: &str) -> Result<Ws> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(presently::protocol::SUBPROTOCOL),
    );
    let config = WebSocketConfig::default().read_buffer_size(2 * 1024);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| e.to_string())?;
    let hello = json!({
        "type": "hello",
        "protocol": 1,
        "token": token,
        "client": {"name": "presently-bench-bare", "version": "1", "platform": "linux"},
    });
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.as_str().starts_with(r#"{"type":"welcome""#) => {
                return Ok(ws);
            }
            Some(Ok(Message::Text(text))) => {
                return Err(format!("expected welcome, got {}", text.as_str()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the server closed the connection before welcome".into()),
        }
    }
}

/// One bare client: subscribes, counts its snapshot in `snapshots`, then writes what `outbound` brings and hands
/// the latency of every harness change it reads (in µs; the change's message is `t` and its instant in ns since
/// `origin`) to `record`.
async fn run(
    mut ws: Ws,
    subscribe: String,
    mut outbound: mpsc::Receiver<String>,
    origin: Instant,
    record: impl Fn(u64),
    snapshots: Arc<Semaphore>,
) {
    if ws.send(Message::Text(subscribe.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            frame = outbound.recv() => {
                let Some(frame) = frame else { break };
                if ws.send(Message::Text(frame.into())).await.is_err() {
                    break;
                }
            }
            inbound = ws.next() => match inbound {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if text.starts_with(r#"{"type":"snapshot""#) {
                        snapshots.add_permits(1);
                    } else if let Some(sent) = change_stamp(text) {
                        let now = origin.elapsed().as_nanos() as u64;
                        record(now.saturating_sub(sent) / 1_000);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
}

/// The instant (ns since the harness's origin) a harness change carries in its message, if `text` is a
/// `presence` frame of one.
fn change_stamp(text: &str) -> Option<u64> {
    if !text.starts_with(r#"{"type":"presence""#) {
        return None;
    }
    let at = text.find(r#""message":"t"#)? + r#""message":"t"#.len();
    let digits = &text[at..];
    let end = digits.find('"')?;
    digits[..end].parse().ok()
}

/// Makes `total` status changes at `rate` a second on the schedule of `fanout`'s harness ([`paced_changes`]),
/// each handed to its client's task; each change's message carries the instant it was made.
async fn changes(
    outlets: Vec<mpsc::Sender<String>>,
    rate: u64,
    total: u64,
    origin: Instant,
) -> Result<u64> {
    paced_changes(outlets.len(), rate, total, origin, |k, who, stamp| {
        let availability = if k.is_multiple_of(2) { "busy" } else { "away" };
        let frame = format!(
            r#"{{"type":"set_status","availability":"{availability}","message":"t{stamp}"}}"#
        );
        outlets[who]
            .try_send(frame)
            .map_err(|e| format!("bare client {who} cannot take a change: {e}"))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::change_stamp;

    #[test]
    fn a_change_stamp_is_read_from_presence_frames_only() {
        let presence = r#"{"type":"presence","user":{"user_id":"u1","availability":"busy","message":"t12345","activity":null}}"#;
        assert_eq!(change_stamp(presence), Some(12345));
        assert_eq!(change_stamp(r#"{"type":"you","message":"t1"}"#), None);
        assert_eq!(
            change_stamp(r#"{"type":"presence","user":{"message":null}}"#),
            None
        );
        assert_eq!(
            change_stamp(r#"{"type":"presence","user":{"message":"tx"}}"#),
            None
        );
    }
}
