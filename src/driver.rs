//! The tokio driver: moves bytes and timers between a WebSocket and the sans-IO core. It decides nothing —
//! every decision (when to connect, ping, give up on a link, retry) is the core's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use presently_core::protocol::{HttpBindingUrls, SUBPROTOCOL};
use presently_core::{Event, Transport, TransportCommand};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::sse::{SseConnection, SseInput};
use crate::{HARD_INBOUND_LIMIT, Shared};

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
    fn send(&self, frame: String) -> bool {
        match self {
            Conn::WebSocket(conn) => conn.send(frame),
            Conn::Sse(conn) => conn.send(frame),
        }
    }
}

/// The default TLS settings: rustls with the ring provider and the webpki root certificates.
#[cfg(feature = "rustls")]
pub(crate) fn default_tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
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

/// An open connection: the read half here, the write half in its own task behind a bounded queue.
struct Connection {
    reader: SplitStream<Ws>,
    writer: mpsc::Sender<Message>,
    /// Dropped with the connection: tells the writer to flush what is queued, close, and stop, within
    /// `CLOSE_FLUSH_TIMEOUT`.
    _closing: tokio::sync::oneshot::Sender<()>,
    /// Resolves when the writer failed (the connection is unusable); `None` once it has resolved.
    writer_failed: Option<tokio::sync::oneshot::Receiver<String>>,
}

impl Connection {
    fn start(ws: Ws, shared: &Arc<Shared>) -> Self {
        let (mut sink, reader) = ws.split();
        let (writer, mut queue) = mpsc::channel::<Message>(WRITE_QUEUE);
        let (failed_tx, writer_failed) = tokio::sync::oneshot::channel();
        let (closing_tx, mut closing) = tokio::sync::oneshot::channel::<()>();
        shared.open_writers.send_modify(|n| *n += 1);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut failure = None;
            // Send until the driver drops the connection; a send stuck on a peer that stopped reading is
            // abandoned then too.
            loop {
                let message = tokio::select! {
                    biased;
                    message = queue.recv() => message,
                    _ = &mut closing => break,
                };
                let Some(message) = message else { break };
                tokio::select! {
                    biased;
                    sent = sink.send(message) => if let Err(e) = sent {
                        failure = Some(e.to_string());
                        break;
                    },
                    _ = &mut closing => break,
                }
            }
            match failure {
                Some(reason) => {
                    let _ = failed_tx.send(reason);
                }
                // Dropped by the driver: flush what was queued (a `bye`) and close politely, within a bound.
                None => {
                    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
                        while let Ok(message) = queue.try_recv() {
                            sink.send(message).await?;
                        }
                        sink.close().await
                    })
                    .await;
                }
            }
            shared.open_writers.send_modify(|n| *n -= 1);
        });
        Connection {
            reader,
            writer,
            _closing: closing_tx,
            writer_failed: Some(writer_failed),
        }
    }

    /// Queues a frame; `false` if the writer cannot take it (failed, or stuck behind a full queue).
    fn send(&self, frame: String) -> bool {
        self.writer.try_send(Message::Text(frame.into())).is_ok()
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
            // Presence frames are small: start with 8 KiB (it grows for a larger frame) rather than 128 KiB.
            .read_buffer_size(8 * 1024)
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
    // The wake-up stays registered from one turn to the next instead of being made anew for every frame. The
    // timer does not: a tokio timer moved to a later deadline still wakes the runtime at the earlier one, so a
    // timer kept across turns would wake an idle client's thread for every frame that moves its deadline.
    let wake = shared.wake.notified();
    tokio::pin!(wake);
    loop {
        // Act on everything the core wants, in order: frames, transport commands, events; then the timer.
        let (deadline, shutdown) = {
            let mut inner = shared.lock();
            shared.feed(&mut inner, shared.now());
            if inner.shutdown {
                let now = shared.now();
                inner.core.close(now);
            }
            while let Some(frame) = inner.core.poll_transmit() {
                if let Some(conn) = &connection
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
                        // Dropping the connection lets its writer flush (bye) and close.
                        connection = None;
                        opening = None;
                    }
                }
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
                        let _ = shared.events.send(Arc::new(event));
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
        if shutdown {
            return;
        }

        let input = tokio::select! {
            _ = std::future::ready(()), if recheck => Input::Wake,
            _ = wake.as_mut() => {
                wake.set(shared.wake.notified());
                Input::Wake
            }
            _ = sleep_until(deadline) => Input::Timeout,
            opened = maybe(opening.as_mut()) => Input::Opened(opened),
            input = connection_input(connection.as_mut()) => input,
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
                    Opened::WebSocket(ws) => Conn::WebSocket(Connection::start(*ws, &shared)),
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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn maybe(opening: Option<&mut Opening>) -> Result<(Opened, Option<String>), Failure> {
    match opening {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The next inbound message of the connection, or the failure of its writer.
async fn connection_input(connection: Option<&mut Conn>) -> Input {
    let conn = match connection {
        Some(Conn::WebSocket(conn)) => conn,
        Some(Conn::Sse(conn)) => return Input::Sse(conn.inbound.recv().await),
        None => return std::future::pending().await,
    };
    let Some(writer_failed) = conn.writer_failed.as_mut() else {
        return Input::Inbound(conn.reader.next().await);
    };
    let outcome = tokio::select! {
        inbound = conn.reader.next() => return Input::Inbound(inbound),
        failed = writer_failed => failed,
    };
    conn.writer_failed = None;
    match outcome {
        Ok(reason) => Input::WriterFailed(reason),
        // The writer ended without failing, which only happens once the connection is dropped: keep reading.
        Err(_) => Input::Inbound(conn.reader.next().await),
    }
}
