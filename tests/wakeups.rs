//! Reading the client's state does not wake its driver: a plugin UI that polls the status from a timer many
//! times a second costs no wake-ups of the client's thread. (Linux: counts the thread's voluntary context
//! switches in `/proc`.)
#![cfg(target_os = "linux")]

use std::time::Duration;

use presently::Client;

/// Voluntary context switches of one thread of this process: each is the thread going to sleep.
fn voluntary_switches(task: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{task}/status"))
        .expect("the thread's status in /proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("voluntary_ctxt_switches in the thread's status")
}

#[test]
fn polling_the_status_does_not_wake_the_clients_thread() {
    // The client's driver on a runtime of its own thread, as a plugin host would run it.
    let (handed, client_and_task) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = Client::builder("ws://127.0.0.1:9/v1/ws")
                .token("t")
                .build()
                .unwrap();
            let task = std::fs::read_link("/proc/thread-self")
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            handed.send((client.clone(), task)).unwrap();
            let _ = stopped.await;
            drop(client);
        });
    });
    let (client, task) = client_and_task.recv().unwrap();
    // Wait until the driver has settled (it has nothing to do until a timer minutes away): no switch in 100 ms.
    let mut last = voluntary_switches(&task);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = voluntary_switches(&task);
        if now == last {
            break;
        }
        last = now;
    }

    let before = voluntary_switches(&task);
    for _ in 0..300 {
        // The user moving the mouse meanwhile: each read hands the new activity to the core, which moves the
        // idle deadline later; that needs no wake-up either.
        client.record_activity();
        std::thread::sleep(Duration::from_micros(1_100));
        let _ = client.effective_status();
        let _ = client.status_reason();
        let _ = client.dnd_state();
    }
    // A wake-up the reads asked for happens within this pause; one later than it would go uncounted, never
    // make the test fail by chance.
    std::thread::sleep(Duration::from_millis(200));
    let woken = voluntary_switches(&task) - before;
    assert!(
        woken <= 2,
        "900 reads and 300 activities woke the client's thread {woken} times"
    );

    stop.send(()).unwrap();
    runtime_thread.join().unwrap();
}
