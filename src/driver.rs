//! The tokio driver: moves bytes and timers between a WebSocket and the sans-IO core. It decides nothing —
//! every decision (when to connect, ping, give up on a link, retry) is the core's.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::{Sink, SinkExt, StreamExt};
use presently_core::protocol::{HttpBindingUrls, SUBPROTOCOL};
use presently_core::{Event, Transport, TransportCommand};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::sse::{SseConnection, SseInput};
use crate::{EventListener, HARD_INBOUND_LIMIT, Shared};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// What an attempt opened: a WebSocket, or readiness for the HTTP binding's opening `POST`.
enum Opened {
    WebSocket(Box<Ws>),
    Sse(reqwest::Client),
}
/// A connection attempt: what it opened and, with a token provider, the fresh token for its `hello`.
type Opening = Pin<Box<dyn Future<Output = Result<(Opened, Option<String>), Failure>> + Send>>;

/// Frames waiting for the socket before the connection is considered stuck.
const WRITE_QUEUE: usize = 256;
/// How long a closing connection may take to flush `bye` and the close frame.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where to connect.
pub(crate) struct Target {
    pub(crate) url: String,
    #[cfg(feature = "rustls")]
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    #[cfg(not(feature = "rustls"))]
    pub(crate) tls: Option<()>,
    pub(crate) token_provider: Option<crate::TokenProvider>,
    /// The HTTP binding's URLs, beside the WebSocket endpoint.
    pub(crate) http_urls: HttpBindingUrls,
    /// Makes the HTTP client of one HTTP-binding connection (same TLS settings as the WebSocket).
    pub(crate) http: HttpClientFactory,
}

/// Makes an HTTP client, or says why it cannot.
pub(crate) type HttpClientFactory = Arc<dyn Fn() -> Result<reqwest::Client, String> + Send + Sync>;

/// An open connection on either transport.
enum Conn {
    WebSocket(Connection),
    Sse(SseConnection),
}

impl Conn {
    fn send(&mut self, frame: String) -> bool {
        match self {
            Conn::WebSocket(conn) => conn.send(frame),
            Conn::Sse(conn) => conn.send(frame),
        }
    }
}

/// The default TLS settings: rustls with the ring provider and the webpki root certificates. Made once per
/// process and shared by every client that has no settings of its own (each used to hold about 16 KB of it,
/// most of it the root store); sharing also shares rustls's session cache, so a second client to the same
/// server may resume.
#[cfg(feature = "rustls")]
pub(crate) fn default_tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    static DEFAULT: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, rustls::Error>> =
        std::sync::OnceLock::new();
    DEFAULT.get_or_init(make_default_tls_config).clone()
}

/// Makes the settings that [`default_tls_config`] shares.
#[cfg(feature = "rustls")]
fn make_default_tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An open WebSocket connection, read and written by the driver's own task: frames wait in a bounded queue only
/// while the socket cannot take them.
struct Connection {
    /// `None` only once the connection is being dropped (see its `Drop`).
    ws: Option<Box<Ws>>,
    /// Frames the socket could not take yet, oldest first.
    outbound: VecDeque<String>,
    /// Frames handed to the WebSocket's buffer and not yet flushed to the socket.
    unflushed: bool,
    /// Counts the connection among the writers `Client::close` waits for while it flushes on being dropped.
    shared: Arc<Shared>,
}

impl Connection {
    fn start(ws: Box<Ws>, shared: &Arc<Shared>) -> Self {
        Connection {
            ws: Some(ws),
            outbound: VecDeque::new(),
            unflushed: false,
            shared: shared.clone(),
        }
    }

    /// Queues a frame for the socket; `false` if the connection is stuck (`WRITE_QUEUE` frames already wait).
    fn send(&mut self, frame: String) -> bool {
        if self.outbound.len() >= WRITE_QUEUE {
            return false;
        }
        self.outbound.push_back(frame);
        true
    }

    /// Whether frames wait to be written or flushed.
    fn writing(&self) -> bool {
        self.unflushed || !self.outbound.is_empty()
    }

    /// Writes and flushes what is queued, as far as the socket takes it now; the task is woken when it takes
    /// more. An error means the connection cannot be written.
    fn poll_write(&mut self, cx: &mut TaskContext<'_>) -> Result<(), String> {
        let Some(ws) = self.ws.as_deref_mut() else {
            return Ok(());
        };
        while !self.outbound.is_empty() {
            match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e.to_string()),
                Poll::Pending => return Ok(()),
            }
            let Some(frame) = self.outbound.pop_front() else {
                break;
            };
            Pin::new(&mut *ws)
                .start_send(Message::Text(frame.into()))
                .map_err(|e| e.to_string())?;
            self.unflushed = true;
        }
        if self.unflushed {
            match Pin::new(&mut *ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(e.to_string()),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// The next inbound message, or the failure of a write; writes what waits first.
    fn poll_input(&mut self, cx: &mut TaskContext<'_>) -> Poll<Input> {
        if let Err(reason) = self.poll_write(cx) {
            return Poll::Ready(Input::WriterFailed(reason));
        }
        match self.ws.as_deref_mut() {
            Some(ws) => ws.poll_next_unpin(cx).map(Input::Inbound),
            None => Poll::Pending,
        }
    }
}

impl Drop for Connection {
    /// Dropped by the driver (closed, replaced, failed): what is still queued (a `bye`) is flushed and the
    /// WebSocket closed politely, in a task of its own, within `CLOSE_FLUSH_TIMEOUT`.
    fn drop(&mut self) {
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let outbound = std::mem::take(&mut self.outbound);
        let flushing = FlushingWriter::new(&self.shared);
        runtime.spawn(async move {
            let _flushing = flushing;
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
                for frame in outbound {
                    ws.feed(Message::Text(frame.into())).await?;
                }
                ws.close().await
            })
            .await;
        });
    }
}

/// Counts a closing connection among the writers that `Client::close` waits for, for as long as it lives.
pub(crate) struct FlushingWriter(Arc<Shared>);

impl FlushingWriter {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        shared.open_writers.send_modify(|n| *n += 1);
        FlushingWriter(shared.clone())
    }
}

impl Drop for FlushingWriter {
    fn drop(&mut self) {
        self.0.open_writers.send_modify(|n| *n -= 1);
    }
}

fn open(target: &Target, transport: Transport) -> Opening {
    let url = target.url.clone();
    let http = target.http.clone();
    let tls = target.tls.clone();
    let token_provider = target.token_provider.clone();
    Box::pin(async move {
        let token = match token_provider {
            Some(provider) => Some(
                provider()
                    .await
                    .map_err(|e| format!("the token provider failed: {e}"))?,
            ),
            None => None,
        };
        if transport == Transport::Sse {
            // Nothing to open before the first frame: the opening POST carries the hello.
            return Ok((Opened::Sse(http()?), token));
        }
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("invalid request: {e}"))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let config = WebSocketConfig::default()
            // Presence frames are small: 2 KiB rather than 128 KiB (a larger frame still fits: the buffer grows to
            // hold it, read 2 KiB at a time). tungstenite zeroes the buffer's free part before every read, so a
            // small buffer is also less memory touched per frame.
            .read_buffer_size(2 * 1024)
            .max_message_size(Some(HARD_INBOUND_LIMIT))
            .max_frame_size(Some(HARD_INBOUND_LIMIT));
        #[cfg(feature = "rustls")]
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        #[cfg(not(feature = "rustls"))]
        let connector: Option<tokio_tungstenite::Connector> = {
            let _ = tls;
            None
        };
        let (ws, response) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            connector,
        )
        .await
        .map_err(describe)?;
        let selected = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        if selected != Some(SUBPROTOCOL) {
            return Err(Failure::reached(format!(
                "the server did not select the {SUBPROTOCOL} subprotocol"
            )));
        }
        Ok::<_, Failure>((Opened::WebSocket(Box::new(ws)), token))
    })
}

/// Why a transport failed, and whether it ever reached the server (see `Client::handle_transport_unreachable`).
pub(crate) struct Failure {
    /// For people.
    pub(crate) reason: String,
    /// The server was never reached: refused, no route, network down.
    pub(crate) unreachable: bool,
}

impl Failure {
    /// A failure after the server was reached (or that cannot be told apart).
    pub(crate) fn reached(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            unreachable: false,
        }
    }
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure::reached(reason)
    }
}

/// Whether an I/O error means nothing answered at the server's address.
pub(crate) fn is_unreachable(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | HostUnreachable | NetworkUnreachable | NetworkDown | AddrNotAvailable
    )
}

fn describe(e: tungstenite::Error) -> Failure {
    match e {
        tungstenite::Error::Io(io) => Failure {
            reason: format!("cannot reach the server: {io}"),
            unreachable: is_unreachable(&io),
        },
        tungstenite::Error::Http(response) => Failure::reached(format!(
            "the server answered HTTP {} instead of a WebSocket",
            response.status()
        )),
        other => Failure::reached(other.to_string()),
    }
}

/// An event waiting for the listener: its own, or shared with the streams.
// Not boxed: the queue is reused from turn to turn, a box would be an allocation per event.
#[allow(clippy::large_enum_variant)]
enum ForListener {
    Owned(Event),
    Shared(Arc<Event>),
}

/// Calls the app's event listener; a panic in it is reported and delivery goes on.
fn hand_to_listener(listener: &EventListener, event: &ForListener) {
    let event = match event {
        ForListener::Owned(event) => event,
        ForListener::Shared(event) => event,
    };
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| listener(event))).is_err() {
        tracing::error!("the event listener panicked; the next events still go to it");
    }
}

/// What the driver waits for next.
enum Input {
    Wake,
    Timeout,
    Opened(Result<(Opened, Option<String>), Failure>),
    Inbound(Option<Result<Message, tungstenite::Error>>),
    Sse(Option<SseInput>),
    WriterFailed(String),
}

/// The driver task: runs until every client handle is dropped.
pub(crate) async fn run(shared: Arc<Shared>, target: Target) {
    let mut connection: Option<Conn> = None;
    let mut opening: Option<Opening> = None;
    let mut recheck: bool;
    // The wake-up stays registered from one turn to the next instead of being made anew for every frame. So does
    // the timer, for as long as the core's deadline stays where it is (the core moves it rarely: see
    // `Client::poll_timeout`); a new deadline gets a new timer rather than a moved one, since a tokio timer moved
    // to a later deadline still wakes the runtime at the earlier one.
    let wake = shared.wake.notified();
    tokio::pin!(wake);
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    // The deadline `timer` is armed for; `None` when it is not armed (none wanted, or it fired).
    let mut armed: Option<tokio::time::Instant> = None;
    // The app's event listener, copied from the shared state when it changes.
    let mut listener: Option<EventListener> = None;
    // Events for the listener, handed to it once the core's lock is released (kept: its capacity is reused).
    let mut pending: Vec<ForListener> = Vec::new();
    loop {
        // A listener the app replaced, dropped once the lock is released: it may hold the last client handle,
        // whose drop takes the lock.
        let mut retired: Option<EventListener> = None;
        // Act on everything the core wants, in order: frames, transport commands, events; then the timer.
        let (deadline, shutdown) = {
            let mut inner = shared.lock();
            shared.feed(&mut inner, shared.now());
            if inner.shutdown {
                let now = shared.now();
                inner.core.close(now);
            }
            while let Some(frame) = inner.core.poll_transmit() {
                if let Some(conn) = connection.as_mut()
                    && !conn.send(frame)
                {
                    let now = shared.now();
                    connection = None;
                    inner
                        .core
                        .handle_transport_closed("the connection stopped accepting writes", now);
                }
            }
            while let Some(command) = inner.core.poll_transport() {
                match command {
                    TransportCommand::Open { transport } => {
                        connection = None;
                        opening = Some(open(&target, transport));
                    }
                    TransportCommand::Close => {
                        // Dropping the connection flushes what is queued (bye) and closes it, in the background.
                        connection = None;
                        opening = None;
                    }
                }
            }
            if inner.listener_changed {
                inner.listener_changed = false;
                retired = std::mem::replace(&mut listener, inner.listener.clone());
            }
            while let Some(event) = inner.core.poll_event() {
                match event {
                    Event::QueryCompleted { query_id, result } => {
                        if let Some(reply) = inner.queries.remove(&query_id) {
                            let _ = reply.send(result);
                        }
                    }
                    event => {
                        if let Event::StateChanged { current, .. } = &event {
                            shared.state.send_replace(current.clone());
                        }
                        // Streams get the event under the lock, as the state watch does, so that a stream
                        // made after a state was published never hears of it.
                        match (shared.events.get(), listener.is_some()) {
                            (Some(streams), true) => {
                                let event = Arc::new(event);
                                let _ = streams.send(event.clone());
                                pending.push(ForListener::Shared(event));
                            }
                            (Some(streams), false) => {
                                let _ = streams.send(Arc::new(event));
                            }
                            (None, true) => pending.push(ForListener::Owned(event)),
                            (None, false) => {}
                        }
                    }
                }
            }
            let wanted = inner.core.wants_activity();
            shared.activity.set_wanted(wanted);
            // Activity recorded between `feed` and `set_wanted` saw "not wanted" and woke nobody: look again.
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            recheck = wanted && shared.activity.last_raw() != inner.activity_fed;
            let deadline = inner.core.poll_timeout().map(|t| shared.deadline(t));
            (deadline, inner.shutdown)
        };
        // Out of the lock, so that the listener may call the client.
        drop(retired);
        if let Some(listener) = &listener {
            for event in pending.drain(..) {
                hand_to_listener(listener, &event);
            }
        }
        if shutdown {
            return;
        }

        if deadline != armed {
            // Replacing the timer unregisters the old one; with no deadline, the new one is never polled, so
            // never registered.
            timer.set(tokio::time::sleep_until(
                deadline.unwrap_or_else(tokio::time::Instant::now),
            ));
            armed = deadline;
        }

        let written = write_now(connection.as_mut()).await;
        let input = if let Some(failed) = written {
            failed
        } else {
            tokio::select! {
            _ = std::future::ready(()), if recheck => Input::Wake,
            _ = wake.as_mut() => {
                wake.set(shared.wake.notified());
                Input::Wake
            }
            _ = timer.as_mut(), if armed.is_some() => {
                armed = None;
                Input::Timeout
            }
            opened = maybe(opening.as_mut()) => Input::Opened(opened),
            input = connection_input(connection.as_mut()) => input,
            }
        };

        let now = shared.now();
        let mut inner = shared.lock();
        let core = &mut inner.core;
        // A command taken while we waited (close, reconnect) means this input is about a transport the core has
        // given up: drop it and let the top of the loop apply the commands.
        let stale = core.transport_pending();
        match input {
            Input::Opened(_) if stale => opening = None,
            Input::Inbound(_) | Input::WriterFailed(_) | Input::Sse(_) if stale => {}
            Input::Wake => {}
            Input::Timeout => {
                // Activity that arrived since the last look counts before an idle deadline is judged.
                shared.feed(&mut inner, now);
                inner.core.handle_timeout(now);
            }
            Input::Opened(Ok((opened, token))) => {
                opening = None;
                if let Some(token) = token {
                    core.set_token(token);
                }
                connection = Some(match opened {
                    Opened::WebSocket(ws) => Conn::WebSocket(Connection::start(ws, &shared)),
                    Opened::Sse(http) => Conn::Sse(SseConnection::start(
                        http,
                        target.http_urls.clone(),
                        core.resume_version(),
                        CLOSE_FLUSH_TIMEOUT,
                        &shared,
                    )),
                });
                core.handle_transport_open(now);
            }
            Input::Sse(Some(SseInput::Chunk(bytes))) => core.handle_stream_bytes(&bytes, now),
            Input::Sse(Some(SseInput::Ended(failure))) => {
                connection = None;
                if failure.unreachable {
                    core.handle_transport_unreachable(&failure.reason, now);
                } else {
                    core.handle_transport_closed(&failure.reason, now);
                }
            }
            Input::Sse(None) => {
                connection = None;
                core.handle_transport_closed("the HTTP connection ended", now);
            }
            Input::Opened(Err(failure)) => {
                opening = None;
                if failure.unreachable {
                    core.handle_transport_unreachable(&failure.reason, now);
                } else {
                    core.handle_transport_closed(&failure.reason, now);
                }
            }
            Input::Inbound(Some(Ok(Message::Text(text)))) => core.handle_frame(text.as_str(), now),
            Input::Inbound(Some(Ok(Message::Close(frame)))) => {
                connection = None;
                let reason = frame.map_or_else(
                    || "the server closed the connection".to_owned(),
                    |f| {
                        format!(
                            "the server closed the connection ({}: {})",
                            u16::from(f.code),
                            f.reason
                        )
                    },
                );
                core.handle_transport_closed(&reason, now);
            }
            Input::Inbound(Some(Ok(_))) => core.handle_inbound_activity(now),
            Input::Inbound(Some(Err(e))) => {
                connection = None;
                core.handle_transport_closed(&format!("connection error: {e}"), now);
            }
            Input::Inbound(None) => {
                connection = None;
                core.handle_transport_closed("the connection ended", now);
            }
            Input::WriterFailed(reason) => {
                connection = None;
                core.handle_transport_closed(&format!("write failed: {reason}"), now);
            }
        }
    }
}

async fn maybe(opening: Option<&mut Opening>) -> Result<(Opened, Option<String>), Failure> {
    match opening {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The next inbound message of the connection, or the failure of a write.
async fn connection_input(connection: Option<&mut Conn>) -> Input {
    match connection {
        Some(Conn::WebSocket(conn)) => std::future::poll_fn(|cx| conn.poll_input(cx)).await,
        Some(Conn::Sse(conn)) => Input::Sse(conn.inbound.recv().await),
        None => std::future::pending().await,
    }
}

/// Writes what the WebSocket connection has queued, as far as the socket takes it now, before the driver waits;
/// the failure of a write if one failed.
async fn write_now(connection: Option<&mut Conn>) -> Option<Input> {
    let Some(Conn::WebSocket(conn)) = connection else {
        return None;
    };
    if !conn.writing() {
        return None;
    }
    std::future::poll_fn(|cx| Poll::Ready(conn.poll_write(cx).err().map(Input::WriterFailed))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpSocket;

    /// A WebSocket pair on loopback with small socket buffers: the client's end as the driver holds it, and the
    /// server's end.
    async fn pair() -> (Ws, WebSocketStream<TcpStream>) {
        let listening = TcpSocket::new_v4().expect("socket");
        listening
            .set_recv_buffer_size(16 * 1024)
            .expect("SO_RCVBUF");
        listening
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = listening.listen(1).expect("listen");
        let addr = listener.local_addr().expect("address");
        let accepting = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            tokio_tungstenite::accept_async(stream)
                .await
                .expect("server handshake")
        });
        let connecting = TcpSocket::new_v4().expect("socket");
        connecting
            .set_send_buffer_size(16 * 1024)
            .expect("SO_SNDBUF");
        let stream = connecting.connect(addr).await.expect("connect");
        let (client, _) =
            tokio_tungstenite::client_async(format!("ws://{addr}/"), MaybeTlsStream::Plain(stream))
                .await
                .expect("client handshake");
        (client, accepting.await.expect("accepted"))
    }

    /// The shared state of a client that is never connected, for a connection made by hand.
    fn shared(client: &crate::Client) -> Arc<Shared> {
        client.handle.shared.clone()
    }

    #[cfg(feature = "rustls")]
    #[test]
    fn clients_without_tls_settings_share_one_default_configuration() {
        let first = default_tls_config().expect("default TLS settings");
        let second = default_tls_config().expect("default TLS settings");
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[tokio::test]
    async fn frames_wait_while_the_socket_is_full_then_go_out_whole_and_in_order() {
        let client = crate::Client::builder("ws://127.0.0.1:9/v1/ws")
            .build()
            .expect("client");
        let (ws, mut server) = pair().await;
        let mut conn = Connection::start(Box::new(ws), &shared(&client));
        // Far more than the socket buffers hold: the writes back up while the server does not read.
        let frames: Vec<String> = (0..200)
            .map(|i| format!("{i:04}{}", "x".repeat(16 * 1024)))
            .collect();
        for frame in &frames {
            assert!(
                conn.send(frame.clone()),
                "the queue takes {WRITE_QUEUE} frames"
            );
        }
        std::future::poll_fn(|cx| Poll::Ready(conn.poll_write(cx)))
            .await
            .expect("writes");
        assert!(conn.writing(), "a full socket leaves frames queued");

        // The server reads; the connection writes the rest as the socket drains, while it waits for input.
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 200 {
                match server.next().await {
                    Some(Ok(Message::Text(text))) => got.push(text.as_str().to_owned()),
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
            (got, server)
        });
        let (got, mut server) = tokio::select! {
            read = reading => read.expect("reader"),
            input = std::future::poll_fn(|cx| conn.poll_input(cx)) => match input {
                Input::WriterFailed(reason) => panic!("write failed: {reason}"),
                _ => panic!("unexpected input"),
            },
        };
        assert_eq!(got, frames);
        assert!(!conn.writing(), "everything written and flushed");

        // Dropped with a frame queued: it is flushed, then the connection is closed politely.
        assert!(conn.send("bye".to_owned()));
        drop(conn);
        match server.next().await {
            Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "bye"),
            other => panic!("expected the queued frame, got {other:?}"),
        }
        assert!(
            matches!(server.next().await, Some(Ok(Message::Close(_)))),
            "then a close frame"
        );
    }

    #[tokio::test]
    async fn a_queue_full_of_frames_the_socket_cannot_take_means_a_stuck_connection() {
        let client = crate::Client::builder("ws://127.0.0.1:9/v1/ws")
            .build()
            .expect("client");
        let (ws, _server) = pair().await;
        let mut conn = Connection::start(Box::new(ws), &shared(&client));
        let frame = "x".repeat(16 * 1024);
        // The queue takes frames until it holds WRITE_QUEUE of them; what the socket took leaves it.
        let mut taken = 0;
        while conn.send(frame.clone()) {
            taken += 1;
            assert!(taken <= 10 * WRITE_QUEUE, "the queue never fills");
            std::future::poll_fn(|cx| Poll::Ready(conn.poll_write(cx)))
                .await
                .expect("writes");
        }
        assert_eq!(conn.outbound.len(), WRITE_QUEUE);
    }
}
