//! A connection's way out: the frames queued for it and the sink they go to, shared between the connection's
//! writer task and the tasks that make changes.
//!
//! On an I/O thread (`ServerConfig::io_threads`), a task that fans a change out writes each watcher's frame
//! itself, straight after the hub's lock is released ([`Outlet::write_now`]), when nothing is ahead of it: no
//! writer task is woken, and the change reaches its watchers within the one task poll that read it. On a
//! multi-threaded runtime the writer tasks are woken instead ([`Outlet::wake_writer`]) and write in parallel.
//! Whatever the sink cannot take at once stays queued, in order, and the writer task takes over: the sink keeps
//! the writer task's waker, so it is woken when the socket can take more. Every poll of the sink happens under the outlet's lock, so frames go out in the order they were
//! queued, whoever writes them. As before, one frame at a time is handed to the sink and flushed, so what waits
//! for a slow reader is bounded by the queue's capacity.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use crate::session::{Outgoing, ToClient};

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds its capacity: the client does not read fast enough.
    Full,
    /// The connection is ending or ended: nothing more goes out.
    Closed,
}

/// What one connection sends, and the sink it goes to (see the module's documentation).
pub(crate) struct Outlet {
    state: Mutex<State>,
    /// The most messages the queue holds (keep-alives aside).
    capacity: usize,
    /// When the outlet was made: the instant `heard_ms` counts from.
    origin: Instant,
    /// When the last frame from the client arrived, in milliseconds since `origin`; `u64::MAX` before any.
    heard_ms: AtomicU64,
}

struct State {
    /// Dropped once nothing more will be written, which closes the connection's transport.
    sink: Option<Outgoing>,
    queue: VecDeque<ToClient>,
    /// The writer task's waker, known once it has run: the sink is always polled with it, so that whatever the
    /// sink cannot do at once wakes the writer task.
    writer: Option<Waker>,
    /// Whether more messages are accepted (no longer once the connection ends or is stopped).
    accepting: bool,
    /// A close message went to the sink: nothing follows it.
    closing: bool,
    /// Nothing more will be written: everything went out and the connection ended, a close went out, or the sink
    /// failed.
    finished: bool,
    /// When the last message was handed to the sink.
    wrote_at: Option<Instant>,
}

impl std::fmt::Debug for Outlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never waits for the lock: whoever holds it must be writing (see `write_now`).
        let mut debug = f.debug_struct("Outlet");
        debug.field("capacity", &self.capacity);
        if let Ok(state) = self.state.try_lock() {
            debug
                .field("queued", &state.queue.len())
                .field("accepting", &state.accepting)
                .field("finished", &state.finished);
        }
        debug.finish()
    }
}

impl Outlet {
    /// An outlet to `sink` whose queue holds at most `capacity` messages.
    pub(crate) fn new(sink: Outgoing, capacity: usize) -> Arc<Self> {
        Arc::new(Outlet {
            state: Mutex::new(State {
                sink: Some(sink),
                queue: VecDeque::new(),
                writer: None,
                accepting: true,
                closing: false,
                finished: false,
                wrote_at: None,
            }),
            capacity,
            origin: Instant::now(),
            heard_ms: AtomicU64::new(u64::MAX),
        })
    }

    /// Notes that a frame from the client arrived at `at` (see [`Outlet::queue_ping`]).
    pub(crate) fn heard(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.origin).as_millis();
        self.heard_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX - 1), Ordering::Relaxed);
    }

    /// Whether a frame from the client arrived within `within` before `now`.
    fn heard_within(&self, now: Instant, within: Duration) -> bool {
        match self.heard_ms.load(Ordering::Relaxed) {
            u64::MAX => false,
            ms => {
                let at = self.origin + Duration::from_millis(ms);
                now.saturating_duration_since(at) <= within
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic inside a sink leaves a queue that is still in order.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message without writing it: [`Outlet::write_now`] or the writer task writes it.
    pub(crate) fn queue(&self, message: ToClient) -> Result<(), Refused> {
        let mut state = self.lock();
        if !state.accepting {
            return Err(Refused::Closed);
        }
        if state.queue.len() >= self.capacity {
            return Err(Refused::Full);
        }
        state.queue.push_back(message);
        Ok(())
    }

    /// Queues a keep-alive due at `now`, unless one is already waiting (a client that never reads does not pile
    /// them up) or the link is known to be alive both ways: within `recent` before `now`, a frame from the client
    /// arrived ([`Outlet::heard`]) and a message was written to it (protocol section 5). Returns whether it was
    /// queued.
    pub(crate) fn queue_ping(&self, now: Instant, recent: Duration) -> bool {
        let heard = self.heard_within(now, recent);
        let mut state = self.lock();
        let wrote = state
            .wrote_at
            .is_some_and(|at| now.saturating_duration_since(at) <= recent);
        if (heard && wrote)
            || !state.accepting
            || state.queue.iter().any(|m| matches!(m, ToClient::Ping))
        {
            return false;
        }
        state.queue.push_back(ToClient::Ping);
        true
    }

    /// Writes what is queued, as far as the sink takes it without waiting, from the calling task. Does nothing
    /// when another task is writing to this outlet (that one writes what is queued) or before the writer task
    /// first ran (it writes what is queued when it does).
    pub(crate) fn write_now(&self) {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let Some(writer) = state.writer.take() else {
            return;
        };
        let written = state.write(&mut Context::from_waker(&writer));
        if written.is_ready() {
            // Finished: let the writer task see it and end.
            writer.wake_by_ref();
        }
        state.writer = Some(writer);
    }

    /// Wakes the writer task to write what is queued.
    pub(crate) fn wake_writer(&self) {
        if let Some(writer) = &self.lock().writer {
            writer.wake_by_ref();
        }
    }

    /// No more messages: the writer task finishes once what is queued has gone out.
    pub(crate) fn end(&self) {
        let mut state = self.lock();
        state.accepting = false;
        if let Some(writer) = &state.writer {
            writer.wake_by_ref();
        }
    }

    /// Writes nothing more: drops what is queued and the sink (which closes the transport). For when the
    /// connection is over, so that no holder of the outlet keeps its socket open.
    pub(crate) fn close(&self) {
        let _ = self.lock().finish();
    }

    /// Replaces what is queued by `last`, and accepts nothing more.
    pub(crate) fn last_words(&self, last: impl IntoIterator<Item = ToClient>) {
        let mut state = self.lock();
        state.accepting = false;
        state.queue.clear();
        state.queue.extend(last);
    }

    /// For the writer task: writes what is queued as the sink allows, and completes when nothing more will be
    /// written (everything went out after [`Outlet::end`], a close went out, or the sink failed).
    pub(crate) async fn written(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if !state
                .writer
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.writer = Some(cx.waker().clone());
            }
            state.write(cx)
        })
        .await;
    }
}

impl State {
    /// Hands queued messages to the sink one at a time, each flushed before the next. Ready when finished;
    /// pending when the sink must wait (it then wakes `cx`) or when the queue is empty.
    fn write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(sink) = self.sink.as_mut().filter(|_| !self.finished) else {
                return Poll::Ready(());
            };
            match sink.as_mut().poll_flush(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(())) => return self.finish(),
                Poll::Ready(Ok(())) => {}
            }
            if self.closing || (self.queue.is_empty() && !self.accepting) {
                return self.finish();
            }
            if self.queue.is_empty() {
                return Poll::Pending;
            }
            match sink.as_mut().poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(())) => return self.finish(),
                Poll::Ready(Ok(())) => {}
            }
            let Some(message) = self.queue.pop_front() else {
                continue;
            };
            self.closing = matches!(message, ToClient::Close(..));
            if sink.as_mut().start_send(message).is_err() {
                return self.finish();
            }
            self.wrote_at = Some(Instant::now());
        }
    }

    fn finish(&mut self) -> Poll<()> {
        self.finished = true;
        self.accepting = false;
        self.queue.clear();
        self.sink = None;
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::Sink;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A sink that records what it gets and can be told to make writers wait.
    #[derive(Clone, Default)]
    struct Recorder {
        inner: Arc<Mutex<Recorded>>,
    }

    #[derive(Default)]
    struct Recorded {
        sent: Vec<String>,
        blocked: bool,
        waiting: Option<Waker>,
        fail: bool,
    }

    impl Recorder {
        fn sent(&self) -> Vec<String> {
            self.inner.lock().unwrap().sent.clone()
        }
        fn block(&self, blocked: bool) {
            let mut inner = self.inner.lock().unwrap();
            inner.blocked = blocked;
            if !blocked && let Some(w) = inner.waiting.take() {
                w.wake();
            }
        }
    }

    impl Sink<ToClient> for Recorder {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            let mut inner = self.inner.lock().unwrap();
            if inner.fail {
                return Poll::Ready(Err(()));
            }
            if inner.blocked {
                inner.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: ToClient) -> Result<(), ()> {
            let text = match item {
                ToClient::Text(t) => t.to_string(),
                ToClient::Ping => "ping".into(),
                ToClient::Close(code, _) => format!("close {code}"),
            };
            self.inner.lock().unwrap().sent.push(text);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            self.poll_ready(cx)
        }
        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn text(s: &str) -> ToClient {
        ToClient::Text(s.into())
    }

    /// Counts wake-ups of a fake writer task.
    struct Counter(AtomicUsize);
    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn outlet(capacity: usize) -> (Arc<Outlet>, Recorder) {
        let recorder = Recorder::default();
        (Outlet::new(Box::pin(recorder.clone()), capacity), recorder)
    }

    /// Polls the writer's future once with a counting waker, as the writer task would.
    fn poll_writer(outlet: &Outlet, wakes: &Arc<Counter>) -> Poll<()> {
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut written = std::pin::pin!(outlet.written());
        written.as_mut().poll(&mut cx)
    }

    use std::future::Future;

    #[test]
    fn before_the_writer_ran_frames_wait_for_it() {
        let (outlet, sink) = outlet(8);
        outlet.queue(text("welcome")).unwrap();
        outlet.write_now();
        assert!(sink.sent().is_empty(), "no waker to write with yet");
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        assert!(poll_writer(&outlet, &wakes).is_pending());
        assert_eq!(sink.sent(), ["welcome"]);
    }

    #[test]
    fn frames_are_written_by_the_task_that_queued_them_in_order() {
        let (outlet, sink) = outlet(8);
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        assert!(poll_writer(&outlet, &wakes).is_pending());
        for s in ["a", "b", "c"] {
            outlet.queue(text(s)).unwrap();
        }
        outlet.write_now();
        assert_eq!(sink.sent(), ["a", "b", "c"]);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            0,
            "the writer task is not woken"
        );
    }

    #[test]
    fn a_waiting_sink_wakes_the_writer_task_which_writes_the_rest_in_order() {
        let (outlet, sink) = outlet(8);
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        assert!(poll_writer(&outlet, &wakes).is_pending());
        outlet.queue(text("a")).unwrap();
        outlet.write_now();
        sink.block(true);
        outlet.queue(text("b")).unwrap();
        outlet.write_now();
        outlet.queue(text("c")).unwrap();
        outlet.write_now();
        assert_eq!(sink.sent(), ["a"]);
        sink.block(false);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "the sink woke the writer task"
        );
        assert!(poll_writer(&outlet, &wakes).is_pending());
        assert_eq!(sink.sent(), ["a", "b", "c"]);
    }

    #[test]
    fn a_full_queue_refuses_and_an_ended_outlet_finishes_after_writing_what_it_holds() {
        let (outlet, sink) = outlet(2);
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        assert!(poll_writer(&outlet, &wakes).is_pending());
        sink.block(true);
        outlet.queue(text("a")).unwrap();
        outlet.queue(text("b")).unwrap();
        assert_eq!(outlet.queue(text("c")), Err(Refused::Full));
        outlet.end();
        assert_eq!(outlet.queue(text("d")), Err(Refused::Closed));
        assert!(poll_writer(&outlet, &wakes).is_pending());
        sink.block(false);
        assert!(poll_writer(&outlet, &wakes).is_ready());
        assert_eq!(sink.sent(), ["a", "b"]);
    }

    #[test]
    fn nothing_follows_a_close_and_last_words_replace_the_queue() {
        let (outlet, sink) = outlet(8);
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        sink.block(true);
        assert!(poll_writer(&outlet, &wakes).is_pending());
        outlet.queue(text("a")).unwrap();
        outlet.queue(ToClient::Close(1000, "bye")).unwrap();
        outlet.queue(text("after")).unwrap();
        sink.block(false);
        assert!(poll_writer(&outlet, &wakes).is_ready());
        assert_eq!(sink.sent(), ["a", "close 1000"]);

        let (outlet, sink) = outlet_with_queue(&["x", "y"]);
        outlet.last_words([text("error"), ToClient::Close(1008, "stopped")]);
        ping(&outlet);
        assert!(poll_writer(&outlet, &wakes).is_ready());
        assert_eq!(sink.sent(), ["error", "close 1008"]);
    }

    /// A keep-alive due now, whatever the link carried.
    fn ping(outlet: &Outlet) -> bool {
        outlet.queue_ping(Instant::now(), Duration::ZERO)
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_alive_both_ways_in_the_recent_window_is_not_pinged() {
        let recent = Duration::from_millis(7_500);
        let (outlet, sink) = outlet(8);
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        assert!(poll_writer(&outlet, &wakes).is_pending());

        // Nothing either way yet: pinged.
        assert!(outlet.queue_ping(Instant::now(), recent));
        assert!(poll_writer(&outlet, &wakes).is_pending());
        assert_eq!(sink.sent(), ["ping"]);

        // Written to (the ping) and heard from within the window: skipped, up to the window's end.
        outlet.heard(Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!outlet.queue_ping(Instant::now(), recent));
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert!(!outlet.queue_ping(Instant::now(), recent));
        // Both longer ago than the window: pinged.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(outlet.queue_ping(Instant::now(), recent));
        assert!(poll_writer(&outlet, &wakes).is_pending());
        assert_eq!(sink.sent(), ["ping", "ping"]);

        // Written to lately (the ping just now), heard from long ago: pinged.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(outlet.queue_ping(Instant::now(), recent));
        assert!(poll_writer(&outlet, &wakes).is_pending());

        // Heard from lately, written to long ago: pinged.
        tokio::time::advance(Duration::from_secs(10)).await;
        outlet.heard(Instant::now());
        assert!(outlet.queue_ping(Instant::now(), recent));
        assert!(poll_writer(&outlet, &wakes).is_pending());
        assert_eq!(sink.sent(), ["ping", "ping", "ping", "ping"]);

        // A data frame counts as written to, like a ping.
        outlet.queue(text("a")).unwrap();
        assert!(poll_writer(&outlet, &wakes).is_pending());
        outlet.heard(Instant::now());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!outlet.queue_ping(Instant::now(), recent));
        assert_eq!(sink.sent(), ["ping", "ping", "ping", "ping", "a"]);
    }

    fn outlet_with_queue(frames: &[&str]) -> (Arc<Outlet>, Recorder) {
        let (outlet, sink) = outlet(8);
        for f in frames {
            outlet.queue(text(f)).unwrap();
        }
        (outlet, sink)
    }

    #[test]
    fn keep_alives_do_not_pile_up_and_a_closed_outlet_lets_its_sink_go() {
        let (outlet, sink) = outlet(8);
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        sink.block(true);
        assert!(poll_writer(&outlet, &wakes).is_pending());
        assert!(ping(&outlet));
        assert!(!ping(&outlet), "one is waiting already");
        outlet.queue(text("a")).unwrap();
        assert!(!ping(&outlet));
        sink.block(false);
        assert!(poll_writer(&outlet, &wakes).is_pending());
        assert_eq!(sink.sent(), ["ping", "a"]);

        assert_eq!(
            Arc::strong_count(&sink.inner),
            2,
            "the outlet holds the sink"
        );
        outlet.close();
        assert_eq!(
            Arc::strong_count(&sink.inner),
            1,
            "closed: the sink is gone"
        );
        assert_eq!(outlet.queue(text("b")), Err(Refused::Closed));
        assert!(poll_writer(&outlet, &wakes).is_ready());
    }

    #[test]
    fn a_failed_sink_finishes_the_outlet() {
        let (outlet, sink) = outlet_with_queue(&["a"]);
        sink.inner.lock().unwrap().fail = true;
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        assert!(poll_writer(&outlet, &wakes).is_ready());
        assert_eq!(outlet.queue(text("b")), Err(Refused::Closed));
        assert!(sink.sent().is_empty());
    }

    #[test]
    fn a_finish_seen_by_an_inline_write_wakes_the_writer_task() {
        let (outlet, sink) = outlet(8);
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        assert!(poll_writer(&outlet, &wakes).is_pending());
        outlet.queue(ToClient::Close(1000, "bye")).unwrap();
        outlet.write_now();
        assert_eq!(sink.sent(), ["close 1000"]);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(poll_writer(&outlet, &wakes).is_ready());
    }
}
