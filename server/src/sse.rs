//! The HTTP binding (protocol section 11): `POST /v1/sse` opens a connection whose response is a Server-Sent
//! Events stream (axum's `Sse`), `POST /v1/sse/send` delivers one client message to it. Each connection is
//! named by an unguessable id in the `Presently-Connection` header and runs the same session code as a
//! WebSocket, through [`session::run`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, Stream, StreamExt};
use presently_core::protocol::ServerMessage;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::Context;
use crate::session::{self, Binding, FromClient, ToClient};

/// The header naming a connection.
pub const CONNECTION_HEADER: &str = "Presently-Connection";
/// The path of the opening request.
pub const SSE_PATH: &str = "/v1/sse";
/// The path of the requests that carry client messages.
pub const SSE_SEND_PATH: &str = "/v1/sse/send";

/// Messages from `POST /send` waiting for the session's reader.
const INBOUND_QUEUE: usize = 64;
/// Messages waiting for the response body (the session's own outbound queue is in front of it).
const OUTBOUND_QUEUE: usize = 16;

/// Cross-origin rules for the HTTP binding: pages of any origin may use it, as they may open a WebSocket (the
/// credential is in the body, never a cookie); they may send the protocol's headers and read the connection id.
pub(crate) fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method, header};
    let connection = HeaderName::from_static("presently-connection");
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::ACCEPT,
            connection.clone(),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([connection])
}

/// The open connections of the HTTP binding, by connection id.
#[derive(Default)]
pub(crate) struct Connections {
    by_id: Mutex<HashMap<String, mpsc::Sender<FromClient>>>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<FromClient>>> {
        // A panic while holding this lock leaves a map that is still consistent.
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Forgets a connection when its response stream goes (the client went away, or the session closed it): the
/// session's reader then sees its input end, as when a WebSocket closes.
struct Registration {
    ctx: Arc<Context>,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.ctx.sse.lock().remove(&self.id);
    }
}

/// `POST /v1/sse`: the body is the `hello`; the answer is the connection's event stream.
pub(crate) async fn open(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(hello) = String::from_utf8(body.to_vec()) else {
        return (StatusCode::BAD_REQUEST, "the body must be UTF-8 JSON").into_response();
    };
    let last_event_id = headers
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let id = format!("c_{:032x}", rand::random::<u128>());
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let (outbound_tx, outbound_rx) = mpsc::channel::<ToClient>(OUTBOUND_QUEUE);
    ctx.sse.lock().insert(id.clone(), inbound_tx);
    let registration = Registration {
        ctx: ctx.clone(),
        id: id.clone(),
    };
    let incoming = futures_util::stream::once(std::future::ready(FromClient::Text(hello))).chain(
        futures_util::stream::unfold(inbound_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }),
    );
    let outgoing = PollSender::new(outbound_tx).sink_map_err(|_| ());
    let tracker = ctx.tracker.clone();
    tracker.spawn(session::run(
        Box::pin(incoming),
        Box::pin(outgoing),
        ctx.clone(),
        Binding::Sse { last_event_id },
    ));
    let mut response = Sse::new(events(outbound_rx, registration)).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(CONNECTION_HEADER, value);
    }
    headers.insert("Cache-Control", HeaderValue::from_static("no-cache"));
    // Proxies that buffer responses would hold the stream back (nginx honours this header).
    headers.insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    response
}

/// The event stream of one connection: each message an event (with the record-version watermark as its id),
/// each keep-alive a comment; it ends when the session closes the connection.
fn events(
    outbound: mpsc::Receiver<ToClient>,
    registration: Registration,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let state = (outbound, registration, 0u64);
    futures_util::stream::unfold(
        state,
        |(mut outbound, registration, mut watermark)| async move {
            let event = match outbound.recv().await? {
                ToClient::Text(frame) => {
                    let mut event = Event::default().data(frame.as_str());
                    if carries_records(&frame) {
                        watermark =
                            greatest_version(&frame).map_or(watermark, |v| v.max(watermark));
                        if watermark > 0 {
                            event = event.id(watermark.to_string());
                        }
                    }
                    event
                }
                ToClient::Ping => Event::default().comment("ping"),
                ToClient::Close(..) => return None,
            };
            Some((Ok(event), (outbound, registration, watermark)))
        },
    )
}

/// Whether a server frame is one of the messages whose events carry an id (protocol section 11.3).
fn carries_records(frame: &str) -> bool {
    const PREFIXES: [&str; 4] = [
        r#"{"type":"snapshot""#,
        r#"{"type":"presence""#,
        r#"{"type":"channel_snapshot""#,
        r#"{"type":"channel_members""#,
    ];
    PREFIXES.iter().any(|prefix| frame.starts_with(prefix))
}

/// The greatest record version in a frame that carries records.
fn greatest_version(frame: &str) -> Option<u64> {
    let records = match ServerMessage::decode(frame, usize::MAX).ok()? {
        ServerMessage::Snapshot { users } => users,
        ServerMessage::Presence { user } => vec![user],
        ServerMessage::ChannelSnapshot { members, .. } => members,
        ServerMessage::ChannelMembers { joined, .. } => joined,
        _ => return None,
    };
    records.iter().map(|r| r.version).max()
}

/// `POST /v1/sse/send`: one client message for the connection named in `Presently-Connection`.
pub(crate) async fn send(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(id) = headers.get(CONNECTION_HEADER).and_then(|v| v.to_str().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("the {CONNECTION_HEADER} header is missing"),
        )
            .into_response();
    };
    let Some(inbound) = ctx.sse.lock().get(id).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            "no open connection has this id; open a new one",
        )
            .into_response();
    };
    let too_large = body.len() > ctx.config.max_frame_bytes;
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return (StatusCode::BAD_REQUEST, "the body must be UTF-8 JSON").into_response();
    };
    // The session answers a message that is too large as over WebSocket: an error, then the connection ends.
    if inbound.send(FromClient::Text(text)).await.is_err() {
        return (StatusCode::NOT_FOUND, "the connection has ended").into_response();
    }
    if too_large {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the message is larger than max_frame_bytes",
        )
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_the_record_version_watermark() {
        let presence =
            r#"{"type":"presence","user":{"user_id":"b","availability":"online","version":42}}"#;
        assert!(carries_records(presence));
        assert_eq!(greatest_version(presence), Some(42));
        let snapshot = r#"{"type":"snapshot","users":[{"user_id":"a","availability":"online","version":7},{"user_id":"b","availability":"away","version":9}]}"#;
        assert_eq!(greatest_version(snapshot), Some(9));
        assert!(!carries_records(r#"{"type":"pong"}"#));
        assert!(!carries_records(
            r#"{"type":"query_result","ref":"q","users":[]}"#
        ));
    }
}
