//! A TCP proxy whose connections can be frozen (a half-open link), shared by the end-to-end suites of the
//! workspace (`tests/` and `wasm/tests/browser_e2e.rs` include this file).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy whose existing connections can be frozen: bytes stop flowing both ways but nothing is closed,
/// exactly like a link that went half-open. Connections made after a freeze flow normally.
pub struct FreezableProxy {
    pub addr: SocketAddr,
    frozen_before: watch::Sender<u64>,
    next_connection: Arc<AtomicU64>,
}

impl FreezableProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen_before, frozen_rx) = watch::channel(0u64);
        let next_connection = Arc::new(AtomicU64::new(1));
        let counter = next_connection.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, id, frozen_rx.clone()));
                tokio::spawn(pump(ro, wi, id, frozen_rx.clone()));
            }
        });
        FreezableProxy {
            addr,
            frozen_before,
            next_connection,
        }
    }

    /// Freezes every connection open now.
    pub fn freeze(&self) {
        let upto = self.next_connection.load(Ordering::SeqCst);
        self.frozen_before.send_replace(upto);
    }

    pub fn connections(&self) -> u64 {
        self.next_connection.load(Ordering::SeqCst) - 1
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    mut frozen_before: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if id < *frozen_before.borrow() {
            // Half-open: hold both sockets open and move nothing, for ever.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => { let _ = to.shutdown().await; return; }
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
            },
            _ = frozen_before.changed() => {}
        }
    }
}
