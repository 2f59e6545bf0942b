//! The HTTP binding's connection (protocol section 11) for the tokio driver: the opening `POST` with the
//! `hello`, its event stream read in chunks, and every later frame sent as its own `POST`, one at a time so that
//! they keep their order. Like the WebSocket connection it decides nothing: the core parses and judges.

use crate::driver::{Failure, is_unreachable};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use presently_core::protocol::HttpBindingUrls;
use tokio::sync::{mpsc, oneshot};

/// The header naming the connection in every `POST /send`.
const CONNECTION_HEADER: &str = "Presently-Connection";
/// Frames waiting to be sent before the connection is considered stuck.
const WRITE_QUEUE: usize = 256;
/// Chunks of the event stream waiting for the driver.
const READ_QUEUE: usize = 64;
/// How long one message's request may take before the connection counts as lost (a request stuck on a dead
/// socket would otherwise hold back every later message, pings included).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What the connection's task reports to the driver.
pub(crate) enum SseInput {
    /// A chunk of the event stream.
    Chunk(bytes::Bytes),
    /// The connection ended (the stream ended or failed, a request failed).
    Ended(Failure),
}

/// An open HTTP-binding connection, seen from the driver.
pub(crate) struct SseConnection {
    frames: mpsc::Sender<String>,
    pub(crate) inbound: mpsc::Receiver<SseInput>,
    /// Dropped with the connection: the task sends what is queued (a `bye`) within the flush timeout and stops.
    _closing: oneshot::Sender<()>,
}

impl SseConnection {
    /// Starts the connection's task; the first frame queued is the `hello` of the opening `POST`.
    pub(crate) fn start(
        http: reqwest::Client,
        urls: HttpBindingUrls,
        last_event_id: Option<u64>,
        flush_timeout: Duration,
        shared: &std::sync::Arc<crate::Shared>,
    ) -> Self {
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let (report, inbound) = mpsc::channel(READ_QUEUE);
        let (closing_tx, closing) = oneshot::channel();
        // `Client::close` waits for this task too, so that a `bye` is sent before it returns.
        let flushing = crate::driver::FlushingWriter::new(shared);
        tokio::spawn(async move {
            let _flushing = flushing;
            let outcome = run(
                &http,
                &urls,
                last_event_id,
                queue,
                &report,
                closing,
                flush_timeout,
            )
            .await;
            if let Err(failure) = outcome {
                let _ = report.send(SseInput::Ended(failure)).await;
            }
        });
        SseConnection {
            frames,
            inbound,
            _closing: closing_tx,
        }
    }

    /// Queues a frame; `false` if the connection cannot take it (ended, or stuck behind a full queue).
    pub(crate) fn send(&self, frame: String) -> bool {
        self.frames.try_send(frame).is_ok()
    }
}

type Sending = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

async fn run(
    http: &reqwest::Client,
    urls: &HttpBindingUrls,
    last_event_id: Option<u64>,
    mut queue: mpsc::Receiver<String>,
    report: &mpsc::Sender<SseInput>,
    mut closing: oneshot::Receiver<()>,
    flush_timeout: Duration,
) -> Result<(), Failure> {
    let hello = tokio::select! {
        biased;
        _ = &mut closing => return Ok(()),
        hello = queue.recv() => match hello {
            Some(hello) => hello,
            None => return Ok(()),
        },
    };
    let mut request = http
        .post(&urls.open)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .body(hello);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = tokio::select! {
        biased;
        _ = &mut closing => return Ok(()),
        response = request.send() => response.map_err(|e| Failure {
            reason: format!("cannot reach the server over HTTP: {}", chain(&e)),
            unreachable: e.is_connect() && io_cause(&e).is_some_and(is_unreachable),
        })?,
    };
    let status = response.status();
    let is_stream = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if status != reqwest::StatusCode::OK || !is_stream {
        return Err(Failure::reached(format!(
            "the server answered HTTP {status} instead of an event stream"
        )));
    }
    let connection_id = response
        .headers()
        .get(CONNECTION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("the event stream came without a {CONNECTION_HEADER} header"))?;
    let mut body = response.bytes_stream();
    let mut sending: Option<Sending> = None;
    let post = |frame: String| -> Sending {
        Box::pin(send_one(
            http.clone(),
            urls.send.clone(),
            connection_id.clone(),
            frame,
        ))
    };
    loop {
        tokio::select! {
            biased;
            _ = &mut closing => {
                // Dropped by the driver: finish what is in flight, send what is queued (a `bye`), within a bound.
                let _ = tokio::time::timeout(flush_timeout, async {
                    if let Some(in_flight) = sending.take() {
                        in_flight.await?;
                    }
                    while let Ok(frame) = queue.try_recv() {
                        post(frame).await?;
                    }
                    Ok::<(), String>(())
                })
                .await;
                return Ok(());
            }
            done = in_flight(sending.as_mut()) => {
                sending = None;
                done?;
            }
            frame = queue.recv(), if sending.is_none() => match frame {
                Some(frame) => sending = Some(post(frame)),
                None => return Ok(()),
            },
            chunk = body.next() => match chunk {
                Some(Ok(bytes)) => {
                    if report.send(SseInput::Chunk(bytes)).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(Failure::reached(format!("the event stream failed: {e}"))),
                None => return Err(Failure::reached("the server ended the event stream")),
            },
        }
    }
}

async fn in_flight(sending: Option<&mut Sending>) -> Result<(), String> {
    match sending {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// `POST /send` of one frame.
async fn send_one(
    http: reqwest::Client,
    url: String,
    connection_id: String,
    frame: String,
) -> Result<(), String> {
    let request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(CONNECTION_HEADER, connection_id)
        .body(frame)
        .send();
    let response = tokio::time::timeout(SEND_TIMEOUT, request)
        .await
        .map_err(|_| {
            format!(
                "a message got no answer within {} s",
                SEND_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("sending over HTTP failed: {}", chain(&e)))?;
    match response.status() {
        status if status.is_success() => Ok(()),
        reqwest::StatusCode::NOT_FOUND => Err("the server no longer knows this connection".into()),
        status => Err(format!("the server answered HTTP {status} to a message")),
    }
}

/// The I/O error at the root of `error`, if there is one.
fn io_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = cause.source();
    }
    None
}

/// An error with its causes (reqwest's own message leaves out why a request failed, e.g. the certificate).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
