//! One connection, over WebSocket or the HTTP binding: the handshake, then a reader loop (this task) and a
//! writer task sharing a bounded queue and the sink (an [`Outlet`]): on an I/O thread, frames are written by the
//! task that queues them when nothing is ahead of them, and by the writer task otherwise. The transport is reduced to a stream of [`FromClient`] and a sink of
//! [`ToClient`]; everything else is the same on both.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use std::pin::Pin;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use presently_core::protocol::{
    self, Auto, Choice, ClientMessage, ErrorCode, MAX_REF_BYTES, MAX_USERS_PER_REQUEST,
    PROTOCOL_VERSION, Resume, ServerInfo, ServerMessage, ValidationError,
};
use tokio::time::{Instant, sleep_until, timeout};

use crate::Context;
use crate::auth::AuthError;
use crate::hub::{Attached, Conn, Intro, SessionControl, unix_millis};
use crate::outlet::Outlet;

/// WebSocket close codes used by the server (protocol sections 6 and 7).
mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// How long the server tries to deliver a last error frame to a client that is being dropped.
const LAST_WORDS_TIMEOUT: Duration = Duration::from_secs(1);

/// What arrives from the client. The stream ends when the connection does.
pub(crate) enum FromClient {
    /// A text frame (a message).
    Text(String),
    /// A binary frame: not used in v1.
    Binary,
    /// A control frame (WebSocket ping or pong): only a sign of life.
    Control,
}

/// A text frame's content, shared by every connection it goes to: cloning it copies no text.
pub(crate) type Frame = axum::extract::ws::Utf8Bytes;

/// What goes to the client.
pub(crate) enum ToClient {
    /// A message.
    Text(Frame),
    /// A keep-alive: a WebSocket ping, a comment line on an event stream.
    Ping,
    /// Close with this WebSocket close code and reason (an event stream just ends).
    Close(u16, &'static str),
}

/// The client's side of a connection, whatever the transport.
pub(crate) type Incoming = Pin<Box<dyn Stream<Item = FromClient> + Send>>;
/// Where the writer sends, whatever the transport; an error means the connection is gone.
pub(crate) type Outgoing = Pin<Box<dyn Sink<ToClient, Error = ()> + Send>>;

/// Which binding a connection uses, and what only that binding needs.
pub(crate) enum Binding {
    /// WebSocket: pings are control frames that browsers answer (announced in `welcome`).
    WebSocket,
    /// HTTP + Server-Sent Events: keep-alive comments, nothing to answer them; `Last-Event-ID`, if sent.
    Sse {
        /// The `Last-Event-ID` header of the opening request (protocol section 11.6).
        last_event_id: Option<u64>,
    },
}

/// Runs one WebSocket connection to its end.
pub(crate) async fn run_websocket(socket: WebSocket, ctx: Arc<Context>) {
    let (sink, stream) = socket.split();
    let incoming = stream
        .map(|message| match message {
            Ok(Message::Text(text)) => Some(FromClient::Text(text.as_str().to_owned())),
            Ok(Message::Binary(_)) => Some(FromClient::Binary),
            Ok(Message::Ping(_) | Message::Pong(_)) => Some(FromClient::Control),
            Ok(Message::Close(_)) | Err(_) => None,
        })
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready);
    let outgoing = sink.sink_map_err(|_| ()).with(|item: ToClient| {
        std::future::ready(Ok::<_, ()>(match item {
            ToClient::Text(text) => Message::Text(text),
            ToClient::Ping => Message::Ping(Default::default()),
            ToClient::Close(code, reason) => close_message(code, reason),
        }))
    });
    run(
        Box::pin(incoming),
        Box::pin(outgoing),
        ctx,
        Binding::WebSocket,
    )
    .await;
}

fn error_frame(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Frame {
    error_frame_retry(code, message, reference, None)
}

fn error_frame_retry(
    code: ErrorCode,
    message: impl Into<String>,
    reference: Option<String>,
    retry_after_ms: Option<u64>,
) -> Frame {
    let fatal = code.is_fatal();
    ServerMessage::Error {
        code,
        message: message.into(),
        fatal,
        reference,
        retry_after_ms,
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
async fn reject(mut sink: Outgoing, code: ErrorCode, message: String, close: u16) {
    tracing::debug!(%code, %message, "rejecting connection");
    let _ = timeout(LAST_WORDS_TIMEOUT, async {
        sink.send(ToClient::Text(error_frame(code, message, None)))
            .await?;
        sink.send(ToClient::Close(close, "rejected")).await
    })
    .await;
}

/// Runs one connection to its end.
pub(crate) async fn run(mut stream: Incoming, sink: Outgoing, ctx: Arc<Context>, binding: Binding) {
    ctx.hub
        .connections_accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    if text.len() > ctx.config.max_frame_bytes {
        let message = format!(
            "a hello of {} bytes is larger than the frame limit",
            text.len()
        );
        return reject(sink, ErrorCode::FrameTooLarge, message, close_code::TOO_BIG).await;
    }
    let (hello, mut status_error) = match read_hello(&text) {
        Ok(hello) => hello,
        Err((code, message)) => return reject(sink, code, message, close_code::POLICY).await,
    };
    let ClientMessage::Hello {
        token,
        client,
        status,
        auto,
        mut resume,
        focus,
        ..
    } = hello
    else {
        let message = "the first frame must be hello".to_owned();
        return reject(sink, ErrorCode::HelloRequired, message, close_code::POLICY).await;
    };
    // Over the HTTP binding, `Last-Event-ID` is the resume's `last_version` when the hello gives none.
    let (sse, last_event_id) = match binding {
        Binding::WebSocket => (false, None),
        Binding::Sse { last_event_id } => (true, last_event_id),
    };
    if let (Some(resume), Some(id)) = (resume.as_mut(), last_event_id)
        && resume.last_version == 0
    {
        resume.last_version = id;
    }
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
    // An invalid initial status does not stop the session: it starts without it and the client is told why.
    let status = status.and_then(|c| match validate_choice(c) {
        Ok(c) => Some(c),
        Err(e) => {
            status_error = Some(e.to_string());
            None
        }
    });
    let auto = auto.and_then(|a| match validate_auto(a) {
        Ok(a) => Some(a),
        Err(e) => {
            status_error = Some(e.to_string());
            None
        }
    });

    let outlet = Outlet::new(sink, ctx.config.outbound_queue);
    // However this task ends (even dropped with its runtime), the transport closes with it, whoever still holds
    // the outlet (a session the hub keeps).
    let _close_outlet = CloseOnDrop(outlet.clone());
    let control = Arc::new(SessionControl::default());
    let conn = Conn {
        outlet: outlet.clone(),
        control: control.clone(),
    };
    let config = &ctx.config;
    let welcome = |session_id: &str, resumed: bool, choice: Option<Choice>| -> Frame {
        ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            session_id: session_id.to_owned(),
            user_id: user_id.clone(),
            heartbeat_interval_ms: millis(config.heartbeat_interval),
            session_ttl_ms: millis(config.session_ttl),
            max_frame_bytes: config.max_frame_bytes as u64,
            server: ServerInfo {
                name: "presently-server".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            resume_grace_ms: millis(config.resume_grace),
            // Nothing answers pings on an event stream: the client keeps its own heartbeat there.
            ping_interval_ms: config.ping_interval.filter(|_| !sse).map(millis),
            resumed,
            choice,
            features: vec![protocol::FEATURE_SET_STATUS_AUTO.to_owned()],
        }
        .encode()
        .into()
    };
    let focus = focus.filter(|f| match protocol::validate_focus(f) {
        Ok(()) => true,
        Err(e) => {
            status_error = Some(e.to_string());
            false
        }
    });
    let intro = Intro {
        choice: status,
        auto,
        focus,
    };
    if let Some(cluster) = &ctx.cluster {
        // The welcome carries the user's choice and privacy as the other nodes know them.
        cluster.load_users(std::slice::from_ref(&user_id)).await;
    }
    let resumed = resume.and_then(
        |Resume {
             session_id,
             last_version,
         }| {
            ctx.hub.resume(
                &user_id,
                &session_id,
                last_version,
                intro.clone(),
                conn.clone(),
                &welcome,
            )
        },
    );
    let client_name = printable(&client.name);
    let (client_version, client_platform) =
        (printable(&client.version), printable(&client.platform));
    let attached = match resumed {
        Some(attached) => attached,
        None => ctx.hub.join(&user_id, intro, conn.clone(), &welcome),
    };
    tracing::info!(
        %user_id, session_id = %attached.public_id, resumed = attached.resumed, client = %client_name,
        version = %client_version, platform = %client_platform, "session attached"
    );
    schedule_message_expiry(&ctx, &user_id);
    let mut connection = Connection {
        ctx: ctx.clone(),
        user_id: user_id.clone(),
        session: attached.key,
        conn,
        limiter: RateLimiter::new(ctx.config.status_burst, ctx.config.status_per_second),
    };
    if let Some(e) = status_error {
        connection.queue(error_frame(ErrorCode::InvalidStatus, e, None));
    }
    // An event stream gets a comment at least every heartbeat interval, so that the client hears from the
    // server when nothing else happens (protocol section 11.3).
    let keep_alive = if sse {
        let every = ctx.config.heartbeat_interval;
        Some(ctx.config.ping_interval.map_or(every, |p| p.min(every)))
    } else {
        ctx.config.ping_interval
    };
    let writer = tokio::spawn(write_loop(
        outlet.clone(),
        control,
        ctx.kill.clone(),
        keep_alive,
    ));
    let (last_inbound_at, end) = connection.read_loop(&mut stream).await;
    drop(connection);
    finish(&ctx, &attached, end, last_inbound_at);
    outlet.end();
    tracing::info!(%user_id, session_id = %attached.public_id, ?end, "connection ended");
    // Let the writer deliver what was queued (goaway, a last error, the close frame), but not for ever.
    let abort = writer.abort_handle();
    if timeout(LAST_WORDS_TIMEOUT * 2, writer).await.is_err() {
        abort.abort();
    }
}

/// Closes an outlet when dropped.
struct CloseOnDrop(Arc<Outlet>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// How a connection ended, which decides what happens to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `bye`: the session ends now.
    Bye,
    /// The server is draining or was killed: the session ends with it.
    ServerStopping,
    /// The connection dropped, timed out or was stopped: the session waits for a resume.
    Dropped,
}

fn finish(ctx: &Arc<Context>, attached: &Attached, end: End, last_inbound_at: u64) {
    let grace = ctx.config.resume_grace;
    match end {
        // With several nodes, a draining node leaves its sessions' part of their users' presence in the shared
        // store: the clients reconnect to other nodes within moments, and what is left expires with this
        // node's liveness key, so that watchers see no offline blip while clients move.
        End::ServerStopping if ctx.cluster.is_some() => {}
        End::Bye | End::ServerStopping => {
            ctx.hub
                .leave(attached.key, attached.generation, last_inbound_at)
        }
        End::Dropped if grace.is_zero() => {
            ctx.hub
                .leave(attached.key, attached.generation, last_inbound_at)
        }
        End::Dropped => {
            if ctx.hub.detach(attached.key, attached.generation) {
                let (ctx, key, generation) = (ctx.clone(), attached.key, attached.generation);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(grace) => ctx.hub.expire(key, generation, last_inbound_at),
                        _ = ctx.kill.cancelled() => {}
                    }
                });
            }
        }
    }
}

/// Reads the first frame as a `hello` (protocol section 4). A hello whose only fault is its `status` or `auto`
/// is accepted without them, with the reason to report; anything else that is not a readable v1 hello is a fatal
/// error to send.
fn read_hello(text: &str) -> Result<(ClientMessage, Option<String>), (ErrorCode, String)> {
    let invalid = |e: &dyn std::fmt::Display| {
        (
            ErrorCode::HelloRequired,
            format!("the first frame must be a valid hello: {e}"),
        )
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| invalid(&e))?;
    if value.get("type").and_then(|t| t.as_str()) != Some("hello") {
        return Err((
            ErrorCode::HelloRequired,
            "the first frame must be hello".into(),
        ));
    }
    match value.get("protocol").and_then(|p| p.as_u64()) {
        Some(p) if p == u64::from(PROTOCOL_VERSION) => {}
        other => {
            let spoken = other.map_or_else(|| "no version".to_owned(), |p| format!("protocol {p}"));
            return Err((
                ErrorCode::UnsupportedProtocol,
                format!("{spoken} is not supported; this server speaks {PROTOCOL_VERSION}"),
            ));
        }
    }
    let decode = |value: serde_json::Value| ClientMessage::decode(&value.to_string(), usize::MAX);
    let (message, status_error) = match decode(value.clone()) {
        Ok(message) => (message, None),
        Err(first) => {
            let mut bare = value;
            if let Some(object) = bare.as_object_mut() {
                object.remove("status");
                object.remove("auto");
                object.remove("focus");
            }
            let message = decode(bare).map_err(|e| invalid(&e))?;
            (
                message,
                Some(format!("the hello's status was not accepted: {first}")),
            )
        }
    };
    match message {
        hello @ ClientMessage::Hello { .. } => Ok((hello, status_error)),
        _ => Err((
            ErrorCode::HelloRequired,
            "the first frame must be hello".into(),
        )),
    }
}

/// A client-supplied string made safe for one log line: at most 64 characters, control characters escaped.
fn printable(s: &str) -> String {
    s.chars().take(64).flat_map(char::escape_debug).collect()
}

/// If the user's choice has a message that expires, clears it at that instant (one timer per choice; a timer for
/// a choice that has since changed does nothing).
fn schedule_message_expiry(ctx: &Arc<Context>, user_id: &str) {
    let Some((chosen_at, expires_at)) = ctx.hub.message_expiry(user_id) else {
        return;
    };
    let wait = Duration::from_millis(expires_at.saturating_sub(unix_millis()));
    let (ctx, user_id) = (ctx.clone(), user_id.to_owned());
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(wait) => ctx.hub.expire_message(&user_id, chosen_at),
            _ = ctx.kill.cancelled() => {}
        }
    });
}

fn validate_choice(mut choice: Choice) -> Result<Choice, ValidationError> {
    choice.status = protocol::normalize_status(choice.status);
    protocol::validate_status(&choice.status)?;
    protocol::validate_times(&choice, Some(unix_millis()))?;
    Ok(choice)
}

fn validate_auto(mut auto: Auto) -> Result<Auto, ValidationError> {
    auto.message = auto.message.filter(|m| !m.is_empty());
    if let Some(message) = &auto.message {
        let check = presently_core::Status::new(presently_core::Availability::Busy)
            .with_message(message.clone());
        protocol::validate_status(&check)?;
    }
    Ok(auto)
}

/// A token bucket: `burst` updates at once, refilled at `per_second`.
struct RateLimiter {
    tokens: f64,
    burst: f64,
    per_second: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    fn new(burst: u32, per_second: f64) -> Self {
        RateLimiter {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: per_second.max(0.001),
            refilled_at: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The first text frame, skipping control frames; `Err` for a binary first frame, `None` if the connection
/// ended.
async fn first_text(stream: &mut Incoming) -> Option<Result<String, ()>> {
    loop {
        match stream.next().await? {
            FromClient::Text(text) => return Some(Ok(text)),
            FromClient::Control => continue,
            FromClient::Binary => return Some(Err(())),
        }
    }
}

/// The connection's writer task: keep-alives, and whatever the tasks that queue frames could not write themselves
/// (see [`Outlet`]); when the connection is stopped from outside, a last error and a close.
async fn write_loop(
    outlet: Arc<Outlet>,
    control: Arc<SessionControl>,
    kill: tokio_util::sync::CancellationToken,
    ping_interval: Option<Duration>,
) {
    // WebSocket pings: browsers answer them without running page code (protocol section 5). The first one comes at
    // a random point of the interval, so that connections opened together (every client of a node, after a
    // restart) do not ping together for ever after: bursts of thousands of pings held up changes behind them.
    let mut pings = ping_interval.map(|every| {
        let first = every
            .mul_f64(rand::random::<f64>())
            .max(Duration::from_millis(1));
        tokio::time::interval_at(Instant::now() + first, every)
    });
    // A link that carried frames both ways within the last half interval is known to be alive: no ping.
    let recent = ping_interval.unwrap_or_default() / 2;
    // Made once, not per turn (see `read_loop`): every session waits on the server's kill signal.
    let killed = kill.cancelled();
    let stopped = control.stopped();
    tokio::pin!(killed, stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut killed => return,
            _ = &mut stopped => break,
            // Queued here, written by `written` on the next turn of the loop.
            _ = tick(pings.as_mut()) => {
                outlet.queue_ping(Instant::now(), recent);
            }
            () = outlet.written() => return,
        }
    }
    // Stopped from outside: a connection taken over by a resume just goes; otherwise say why, then close.
    let code = control.reason().cloned().unwrap_or(ErrorCode::ServerError);
    if code == crate::hub::replaced() {
        outlet.close();
        return;
    }
    let message = match code {
        ErrorCode::SlowConsumer => {
            "the client did not read fast enough; reconnect to get fresh snapshots"
        }
        _ => "session stopped",
    };
    outlet.last_words([
        ToClient::Text(error_frame(code, message, None)),
        ToClient::Close(close_code::POLICY, "stopped"),
    ]);
    let _ = timeout(LAST_WORDS_TIMEOUT, outlet.written()).await;
}

async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

struct Connection {
    ctx: Arc<Context>,
    user_id: String,
    session: u64,
    conn: Conn,
    limiter: RateLimiter,
}

/// Whether the reader loop goes on after a message.
enum Flow {
    Continue,
    /// The client said `bye`.
    Bye,
    /// The connection must close (a protocol limit was broken); the session waits for a resume.
    Drop,
}

impl Connection {
    fn queue(&self, frame: Frame) {
        self.ctx.hub.push(&self.conn, frame);
    }

    fn queue_close(&self, code: u16, reason: &'static str) {
        // A close that does not fit means the queue is full: the connection is being stopped anyway.
        if self
            .conn
            .outlet
            .queue(ToClient::Close(code, reason))
            .is_ok()
        {
            crate::hub::write_soon(&self.conn.outlet);
        }
    }

    /// Whether a status update may go through now; if not, the client is told when to retry.
    fn allow_update(&mut self, reference: Option<String>) -> bool {
        match self.limiter.take() {
            Ok(()) => true,
            Err(wait) => {
                let retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                self.queue(error_frame_retry(
                    ErrorCode::RateLimited,
                    format!(
                        "too many status updates; send the latest again in {retry_after_ms} ms"
                    ),
                    reference,
                    Some(retry_after_ms),
                ));
                false
            }
        }
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>, reference: Option<String>) {
        self.queue(error_frame(code, message, reference));
    }

    /// Reads until the connection ends; returns when the last frame arrived (Unix ms) and how it ended.
    async fn read_loop(&mut self, stream: &mut Incoming) -> (u64, End) {
        let ttl = self.ctx.config.session_ttl;
        // The hello has just arrived.
        let mut last_inbound = Instant::now();
        let mut last_inbound_at = unix_millis();
        self.conn.outlet.heard(last_inbound);
        let control = self.conn.control.clone();
        // Made once, not per frame: the server's kill and drain signals are waited on by every session, so a
        // registration made and dropped per frame meant unlinking from lists thousands long, and a timer made per
        // frame meant a removal from the timer wheel. A frame now just moves the expiry (a later deadline is
        // stored, not re-sorted: the wheel looks at it again when the old one comes).
        let killed = self.ctx.kill.clone().cancelled_owned();
        let drained = self.ctx.drain.clone().cancelled_owned();
        let stopped = control.stopped();
        let expiry = sleep_until(last_inbound + ttl);
        tokio::pin!(killed, drained, stopped, expiry);
        let end = loop {
            tokio::select! {
                biased;
                _ = &mut killed => break End::ServerStopping,
                _ = &mut stopped => break End::Dropped,
                _ = &mut drained => {
                    self.queue(ServerMessage::Goaway {
                        reconnect_after_ms: millis(self.ctx.config.goaway_reconnect_after),
                        reason: Some("server shutting down".into()),
                    }.encode().into());
                    self.queue_close(close_code::GOING_AWAY, "server shutting down");
                    break End::ServerStopping;
                }
                _ = &mut expiry => {
                    self.error(ErrorCode::SessionExpired, format!("no frame for {} ms", ttl.as_millis()), None);
                    self.queue_close(close_code::POLICY, "session expired");
                    break End::Dropped;
                }
                message = stream.next() => {
                    let Some(message) = message else { break End::Dropped };
                    last_inbound = Instant::now();
                    expiry.as_mut().reset(last_inbound + ttl);
                    self.conn.outlet.heard(last_inbound);
                    last_inbound_at = unix_millis();
                    match message {
                        FromClient::Text(text) => match self.handle_text(&text).await {
                            Flow::Continue => {}
                            Flow::Bye => break End::Bye,
                            Flow::Drop => break End::Dropped,
                        },
                        // Binary frames are not used in v1 and are ignored; control frames only count as life.
                        FromClient::Binary | FromClient::Control => {}
                    }
                }
            }
        };
        (last_inbound_at, end)
    }

    async fn handle_text(&mut self, text: &str) -> Flow {
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
            return Flow::Drop;
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
            ClientMessage::SetStatus {
                reference,
                choice,
                auto,
            } => match validate_choice(choice).and_then(|choice| {
                let auto = auto.map(validate_auto).transpose()?;
                Ok((choice, auto))
            }) {
                Ok((choice, auto)) => {
                    if self.allow_update(reference) {
                        let expires = choice.status.message_expires_at.is_some();
                        crate::hub::on_behalf_of(&self.conn.outlet, || {
                            self.ctx.hub.set_choice(self.session, choice, auto)
                        });
                        if expires {
                            schedule_message_expiry(&self.ctx, &self.user_id);
                        }
                    }
                }
                Err(e) => self.error(ErrorCode::InvalidStatus, e.to_string(), reference),
            },
            ClientMessage::SetAuto { reference, auto } => match validate_auto(auto) {
                Ok(auto) => {
                    if self.allow_update(reference) {
                        crate::hub::on_behalf_of(&self.conn.outlet, || {
                            self.ctx.hub.set_auto(self.session, auto)
                        });
                    }
                }
                Err(e) => self.error(ErrorCode::InvalidStatus, e.to_string(), reference),
            },
            ClientMessage::SetFocus { reference, context } => {
                match context.as_deref().map(protocol::validate_focus).transpose() {
                    Ok(_) => {
                        if self.allow_update(reference) {
                            crate::hub::on_behalf_of(&self.conn.outlet, || {
                                self.ctx.hub.set_focus(self.session, context)
                            });
                        }
                    }
                    Err(e) => self.error(ErrorCode::InvalidMessage, e.to_string(), reference),
                }
            }
            ClientMessage::SetPrivacy { reference, privacy } => {
                if self.allow_update(reference) {
                    crate::hub::on_behalf_of(&self.conn.outlet, || {
                        self.ctx.hub.set_privacy(self.session, privacy)
                    });
                }
            }
            ClientMessage::Subscribe { users } => {
                if let Err(e) = protocol::validate_user_list(&users) {
                    self.list_error(e, None);
                } else if let Some(code) = {
                    if let Some(cluster) = &self.ctx.cluster {
                        cluster.load_users(&users).await;
                    }
                    self.ctx.hub.subscribe(self.session, users)
                } {
                    self.error(
                        code,
                        "this session would watch more than 10000 users; the excess was not added",
                        None,
                    );
                }
            }
            ClientMessage::SubscribeChannels { channels } => {
                if let Err(e) = protocol::validate_user_list(&channels) {
                    self.list_error(e, None);
                } else {
                    if let Some(cluster) = &self.ctx.cluster {
                        for channel in &channels {
                            cluster.load_channel(channel).await;
                        }
                    }
                    for (channel, code) in self.ctx.hub.subscribe_channels(self.session, channels) {
                        let message = match code {
                            ErrorCode::NotAMember => format!("not a member of channel {channel:?}"),
                            _ => format!(
                                "channel {channel:?} would exceed 100 channels for this session"
                            ),
                        };
                        // The error's ref names the channel (protocol section 7).
                        self.error(code, message, Some(channel));
                    }
                }
            }
            ClientMessage::UnsubscribeChannels { channels } => {
                if channels.len() > MAX_USERS_PER_REQUEST {
                    self.list_error(
                        ValidationError::TooManyUsers {
                            count: channels.len(),
                        },
                        None,
                    );
                } else {
                    self.ctx.hub.unsubscribe_channels(self.session, &channels);
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
                    if let Some(cluster) = &self.ctx.cluster {
                        cluster.load_users(&users).await;
                    }
                    let users = self.ctx.hub.query(self.session, &users);
                    let limit = self.ctx.config.max_frame_bytes;
                    for part in protocol::split_records(users, limit, |users, more| {
                        ServerMessage::QueryResult {
                            reference: reference.clone(),
                            users,
                            more,
                        }
                    }) {
                        self.queue(part.into());
                    }
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
                return Flow::Bye;
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
