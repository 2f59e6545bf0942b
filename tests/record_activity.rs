//! `record_activity` is safe on a real-time thread: no allocation, ever, including the call that wakes the
//! client after the user was idle. Allocations are counted per thread by a wrapping global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use futures_util::StreamExt;
use presently::{Availability, Client, Event, StatusReason};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches only a const-initialised
// thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `calls` on a fresh thread (an "audio thread") and returns how many allocations that thread made.
fn allocations_on_another_thread(client: &Client, calls: u32) -> u64 {
    let client = client.clone();
    std::thread::spawn(move || {
        let before = ALLOCATIONS.with(Cell::get);
        for _ in 0..calls {
            client.record_activity();
        }
        ALLOCATIONS.with(Cell::get) - before
    })
    .join()
    .unwrap()
}

fn idle_client(timeout: Duration) -> Client {
    Client::builder("ws://127.0.0.1:9/v1/ws")
        .token("t")
        .idle_timeout(Some(timeout))
        .build()
        .unwrap()
}

#[test]
fn the_counter_sees_allocations() {
    let allocations = std::thread::spawn(|| {
        let before = ALLOCATIONS.with(Cell::get);
        let v: Vec<u64> = std::hint::black_box(vec![1, 2, 3]);
        drop(v);
        ALLOCATIONS.with(Cell::get) - before
    })
    .join()
    .unwrap();
    assert_eq!(allocations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_activity_never_allocates() {
    let client = idle_client(Duration::from_secs(300));
    assert_eq!(allocations_on_another_thread(&client, 100_000), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_that_ends_idleness_does_not_allocate_either_and_restores_the_status() {
    let client = idle_client(Duration::from_millis(100));
    let mut events = client.events();
    // Idle after 100 ms: away.
    assert_eq!(
        next_own_status(&mut events).await,
        (Availability::Away, StatusReason::Idle)
    );
    // The first call wakes the client's thread; none of the calls allocates.
    assert_eq!(allocations_on_another_thread(&client, 10_000), 0);
    assert_eq!(
        next_own_status(&mut events).await,
        (Availability::Online, StatusReason::Manual)
    );
}

/// The next change of the client's own effective status.
async fn next_own_status(events: &mut presently::EventStream) -> (Availability, StatusReason) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap();
        if let Event::OwnStatusChanged { effective, reason } = event {
            return (effective.availability, reason);
        }
    }
}
