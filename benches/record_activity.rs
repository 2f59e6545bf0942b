//! `Client::record_activity`: what a host calls on every mouse move, key press or MIDI event, possibly from an
//! audio thread. Goal: ≤ 25 ns median on the reference machine (see BENCHMARKS.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use presently::Client;

fn client(runtime: &tokio::runtime::Runtime) -> Client {
    runtime.block_on(async {
        Client::builder("ws://127.0.0.1:9/v1/ws")
            .token("benchmark")
            .idle_timeout(Some(Duration::from_secs(300)))
            .build()
            .expect("client builds")
    })
}

fn record_activity(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let client = client(&runtime);
    c.bench_function("record_activity", |b| {
        b.iter(|| black_box(&client).record_activity())
    });

    // The same call while three other threads hammer it too (one cache line shared by all).
    let client = Arc::new(client);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let others: Vec<_> = (0..3)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    client.record_activity();
                }
            })
        })
        .collect();
    c.bench_function("record_activity, 3 other threads calling", |b| {
        b.iter(|| black_box(&client).record_activity())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in others {
        let _ = t.join();
    }
}

criterion_group!(benches, record_activity);
criterion_main!(benches);
