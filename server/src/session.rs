//! One WebSocket connection: the handshake, then a reader loop (this task) and a writer task joined by a
//! bounded queue.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use presently_core::protocol::{
    self, ClientMessage, ErrorCode, MAX_REF_BYTES, MAX_USERS_PER_REQUEST, PROTOCOL_VERSION,
    ServerInfo, ServerMessage, ValidationError,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

use crate::Context;
use crate::auth::AuthError;
use crate::hub::{Outbound, SessionControl, unix_millis};

/// WebSocket close codes used by the server (protocol sections 6 and 7).
mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// How long the server tries to deliver a last error frame to a client that is being dropped.
const LAST_WORDS_TIMEOUT: Duration = Duration::from_secs(1);

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

fn error_frame(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Arc<str> {
    let fatal = code.is_fatal();
    ServerMessage::Error {
        code,
        message: message.into(),
        fatal,
        reference,
    }
    .encode()
    .into()
}

fn close_message(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Sends an error and closes, before a session exists.
async fn reject(mut sink: Sink, code: ErrorCode, message: String, close: u16) {
    tracing::debug!(%code, %message, "rejecting connection");
    let _ = timeout(LAST_WORDS_TIMEOUT, async {
        sink.send(Message::Text(
            error_frame(code, message, None).as_ref().into(),
        ))
        .await?;
        sink.send(close_message(close, "rejected")).await
    })
    .await;
}

/// Runs one connection to its end.
pub(crate) async fn run(socket: WebSocket, ctx: Arc<Context>) {
    ctx.hub
        .connections_accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (sink, mut stream) = socket.split();
    let first = tokio::select! {
        biased;
        _ = ctx.kill.cancelled() => return,
        _ = ctx.drain.cancelled() => return,
        first = timeout(ctx.config.hello_timeout, first_text(&mut stream)) => first,
    };
    let text = match first {
        Err(_) => {
            let message = format!(
                "no hello within {} ms",
                ctx.config.hello_timeout.as_millis()
            );
            return reject(sink, ErrorCode::HelloTimeout, message, close_code::POLICY).await;
        }
        Ok(None) => return,
        Ok(Some(Err(()))) => {
            let message = "the first frame must be a hello text frame".to_owned();
            return reject(sink, ErrorCode::HelloRequired, message, close_code::POLICY).await;
        }
        Ok(Some(Ok(text))) => text,
    };
    let (token, client, status) = match ClientMessage::decode(&text, ctx.config.max_frame_bytes) {
        Ok(ClientMessage::Hello {
            protocol,
            token,
            client,
            status,
        }) => {
            if protocol != PROTOCOL_VERSION {
                let message = format!(
                    "protocol {protocol} is not supported; this server speaks {PROTOCOL_VERSION}"
                );
                return reject(
                    sink,
                    ErrorCode::UnsupportedProtocol,
                    message,
                    close_code::POLICY,
                )
                .await;
            }
            (token, client, status)
        }
        Ok(_) => {
            let message = "the first frame must be hello".to_owned();
            return reject(sink, ErrorCode::HelloRequired, message, close_code::POLICY).await;
        }
        Err(e) => {
            let message = format!("the first frame must be a valid hello: {e}");
            return reject(sink, ErrorCode::HelloRequired, message, close_code::POLICY).await;
        }
    };
    let user_id = match ctx.auth.verify(&token) {
        Ok(user_id) => user_id,
        Err(AuthError::Expired) => {
            let message = "the token has expired".to_owned();
            return reject(sink, ErrorCode::TokenExpired, message, close_code::POLICY).await;
        }
        Err(AuthError::Invalid(why)) => {
            return reject(sink, ErrorCode::InvalidToken, why, close_code::POLICY).await;
        }
    };
    // An invalid initial status does not stop the session: it starts online and the client is told why.
    let mut status_error = None;
    let status =
        status
            .map(protocol::normalize_status)
            .and_then(|s| match protocol::validate_status(&s) {
                Ok(()) => Some(s),
                Err(e) => {
                    status_error = Some(e);
                    None
                }
            });

    let (tx, rx) = mpsc::channel(ctx.config.outbound_queue);
    let control = Arc::new(SessionControl::default());
    let session = ctx.hub.join(&user_id, status, tx.clone(), control.clone());
    let session_id = format!("s_{:016x}", rand::random::<u64>());
    tracing::info!(
        %user_id, %session_id, client = %client.name, version = %client.version, platform = %client.platform,
        "session started"
    );
    let mut conn = Connection {
        ctx: ctx.clone(),
        session,
        tx,
        control: control.clone(),
    };
    conn.queue(
        ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            session_id,
            user_id: user_id.clone(),
            heartbeat_interval_ms: millis(ctx.config.heartbeat_interval),
            session_ttl_ms: millis(ctx.config.session_ttl),
            max_frame_bytes: ctx.config.max_frame_bytes as u64,
            server: ServerInfo {
                name: "presently-server".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
        }
        .encode()
        .into(),
    );
    if let Some(e) = status_error {
        conn.queue(error_frame(ErrorCode::InvalidStatus, e.to_string(), None));
    }
    let writer = tokio::spawn(write_loop(sink, rx, control, ctx.kill.clone()));
    let last_inbound_at = conn.read_loop(&mut stream).await;
    ctx.hub.leave(session, last_inbound_at);
    tracing::info!(%user_id, "session ended");
    drop(conn);
    // Let the writer deliver what was queued (goaway, a last error, the close frame), but not for ever.
    let abort = writer.abort_handle();
    if timeout(LAST_WORDS_TIMEOUT * 2, writer).await.is_err() {
        abort.abort();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The first text frame, skipping control frames; `Err` for a binary first frame, `None` if the connection
/// ended.
async fn first_text(stream: &mut Stream) -> Option<Result<String, ()>> {
    loop {
        match stream.next().await? {
            Ok(Message::Text(text)) => return Some(Ok(text.as_str().to_owned())),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Binary(_)) => return Some(Err(())),
            Ok(Message::Close(_)) | Err(_) => return None,
        }
    }
}

async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    control: Arc<SessionControl>,
    kill: tokio_util::sync::CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = kill.cancelled() => return,
            _ = control.stopped() => break,
            next = rx.recv() => next,
        };
        let message = match next {
            Some(Outbound::Frame(frame)) => Message::Text(frame.as_ref().into()),
            Some(Outbound::Close(code, reason)) => {
                let _ = timeout(LAST_WORDS_TIMEOUT, sink.send(close_message(code, reason))).await;
                return;
            }
            None => return,
        };
        tokio::select! {
            biased;
            _ = kill.cancelled() => return,
            _ = control.stopped() => break,
            sent = sink.send(message) => if sent.is_err() { return },
        }
    }
    // Stopped from outside (slow consumer): say why if the client can still hear it, then close.
    let code = control.reason().cloned().unwrap_or(ErrorCode::ServerError);
    let message = match code {
        ErrorCode::SlowConsumer => {
            "the client did not read fast enough; reconnect to get fresh snapshots"
        }
        _ => "session stopped",
    };
    let _ = timeout(LAST_WORDS_TIMEOUT, async {
        sink.send(Message::Text(
            error_frame(code, message, None).as_ref().into(),
        ))
        .await?;
        sink.send(close_message(close_code::POLICY, "stopped"))
            .await
    })
    .await;
}

struct Connection {
    ctx: Arc<Context>,
    session: u64,
    tx: mpsc::Sender<Outbound>,
    control: Arc<SessionControl>,
}

/// Whether the reader loop goes on after a message.
enum Flow {
    Continue,
    End,
}

impl Connection {
    fn queue(&self, frame: Arc<str>) {
        self.ctx.hub.push(&self.tx, &self.control, frame);
    }

    fn queue_close(&self, code: u16, reason: &'static str) {
        // A close that does not fit means the queue is full: the session is being stopped anyway.
        let _ = self.tx.try_send(Outbound::Close(code, reason));
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>, reference: Option<String>) {
        self.queue(error_frame(code, message, reference));
    }

    /// Reads until the session ends; returns when the last frame arrived (Unix ms).
    async fn read_loop(&mut self, stream: &mut Stream) -> u64 {
        let ttl = self.ctx.config.session_ttl;
        let mut last_inbound = Instant::now();
        let mut last_inbound_at = unix_millis();
        loop {
            tokio::select! {
                biased;
                _ = self.ctx.kill.cancelled() => break,
                _ = self.control.stopped() => break,
                _ = self.ctx.drain.cancelled() => {
                    self.queue(ServerMessage::Goaway {
                        reconnect_after_ms: millis(self.ctx.config.goaway_reconnect_after),
                        reason: Some("server shutting down".into()),
                    }.encode().into());
                    self.queue_close(close_code::GOING_AWAY, "server shutting down");
                    break;
                }
                _ = sleep_until(last_inbound + ttl) => {
                    self.error(ErrorCode::SessionExpired, format!("no frame for {} ms", ttl.as_millis()), None);
                    self.queue_close(close_code::POLICY, "session expired");
                    break;
                }
                message = stream.next() => {
                    let Some(Ok(message)) = message else { break };
                    last_inbound = Instant::now();
                    last_inbound_at = unix_millis();
                    match message {
                        Message::Text(text) => {
                            if let Flow::End = self.handle_text(text.as_str()) {
                                break;
                            }
                        }
                        // Binary frames are not used in v1 and are ignored; control frames only count as life.
                        Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => {}
                        Message::Close(_) => break,
                    }
                }
            }
        }
        last_inbound_at
    }

    fn handle_text(&mut self, text: &str) -> Flow {
        let limit = self.ctx.config.max_frame_bytes;
        if text.len() > limit {
            self.error(
                ErrorCode::FrameTooLarge,
                format!(
                    "a message of {} bytes is larger than the limit of {limit} bytes",
                    text.len()
                ),
                None,
            );
            self.queue_close(close_code::TOO_BIG, "message too big");
            return Flow::End;
        }
        let message = match ClientMessage::decode(text, limit) {
            Ok(message) => message,
            Err(e) => {
                self.error(ErrorCode::InvalidMessage, e.to_string(), None);
                return Flow::Continue;
            }
        };
        match message {
            ClientMessage::Hello { .. } => {
                self.error(
                    ErrorCode::InvalidMessage,
                    "hello was already received",
                    None,
                );
            }
            ClientMessage::SetStatus { reference, status } => {
                let status = protocol::normalize_status(status);
                match protocol::validate_status(&status) {
                    Ok(()) => self.ctx.hub.set_status(self.session, status),
                    Err(e) => self.error(ErrorCode::InvalidStatus, e.to_string(), reference),
                }
            }
            ClientMessage::Subscribe { users } => {
                if let Err(e) = protocol::validate_user_list(&users) {
                    self.list_error(e, None);
                } else if let Some(code) = self.ctx.hub.subscribe(self.session, users) {
                    self.error(
                        code,
                        "this session would watch more than 10000 users; the excess was not added",
                        None,
                    );
                }
            }
            ClientMessage::Unsubscribe { users } => {
                if users.len() > MAX_USERS_PER_REQUEST {
                    self.list_error(ValidationError::TooManyUsers { count: users.len() }, None);
                } else {
                    self.ctx.hub.unsubscribe(self.session, &users);
                }
            }
            ClientMessage::Query { reference, users } => {
                if reference.len() > MAX_REF_BYTES {
                    self.error(
                        ErrorCode::InvalidMessage,
                        "ref is longer than 64 bytes",
                        None,
                    );
                } else if let Err(e) = protocol::validate_user_list(&users) {
                    self.list_error(e, Some(reference));
                } else {
                    let users = self.ctx.hub.query(&users);
                    self.queue(
                        ServerMessage::QueryResult { reference, users }
                            .encode()
                            .into(),
                    );
                }
            }
            ClientMessage::Ping { reference } => {
                self.queue(
                    ServerMessage::Pong {
                        reference,
                        server_time_ms: Some(unix_millis()),
                    }
                    .encode()
                    .into(),
                );
            }
            ClientMessage::Bye { .. } => {
                self.queue_close(close_code::NORMAL, "bye");
                return Flow::End;
            }
            ClientMessage::Unknown => {}
        }
        Flow::Continue
    }

    fn list_error(&self, e: ValidationError, reference: Option<String>) {
        let code = match e {
            ValidationError::TooManyUsers { .. } => ErrorCode::TooManyUsers,
            _ => ErrorCode::InvalidUserId,
        };
        self.error(code, e.to_string(), reference);
    }
}
