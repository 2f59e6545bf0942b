//! A TCP fault proxy for tests: it forwards a listening port to a target and injects the faults of real
//! networks on demand — delay, dropped and reset connections, a black hole, a side that stops reading, a slow
//! reader, refused connections. Faults apply to open connections and new ones alike, and can change at any
//! time during a test.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The faults in force. The default forwards everything at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Every chunk is held this long before it is forwarded, in each direction (one-way latency).
    pub delay: Duration,
    /// Nothing moves either way and nothing is closed: a link that went half-open, or a black hole.
    pub black_hole: bool,
    /// The server side stops reading: the client's bytes stay unread in the proxy's socket buffers.
    pub server_stops_reading: bool,
    /// The client side stops reading: the server's bytes stay unread (its send queue fills).
    pub client_stops_reading: bool,
    /// Bytes per second the proxy reads from the server: a slow reader on the client's side.
    pub client_read_rate: Option<u32>,
    /// New connections are accepted and closed at once, before any byte is forwarded (a port that turns
    /// connections away, as an overloaded load balancer does; a refused connection is a port with no listener).
    pub refuse: bool,
}

/// How [`FaultProxy`] ends the connections open now.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kill {
    /// A clean close (FIN) of both sides.
    Drop,
    /// An abortive close (RST) of both sides.
    Reset,
}

/// A TCP proxy that injects faults (see the module documentation).
pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: watch::Sender<Faults>,
    /// (connections with an id below this one, how to end them).
    kill: watch::Sender<(u64, Option<Kill>)>,
    next_connection: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl FaultProxy {
    /// A proxy on a free loopback port to `target`, with no fault.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (faults, faults_rx) = watch::channel(Faults::default());
        let (kill, kill_rx) = watch::channel((0u64, None));
        let next_connection = Arc::new(AtomicU64::new(1));
        let open = Arc::new(AtomicU64::new(0));
        let (counter, open_count) = (next_connection.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if faults_rx.borrow().refuse {
                    drop(inbound);
                    continue;
                }
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                open_count.fetch_add(1, Ordering::SeqCst);
                let open = open_count.clone();
                let (faults, kill) = (faults_rx.clone(), kill_rx.clone());
                tokio::spawn(async move {
                    connection(inbound, outbound, id, faults, kill).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        FaultProxy {
            addr,
            faults,
            kill,
            next_connection,
            open,
        }
    }

    /// `ws://` URL of the WebSocket endpoint through the proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Replaces the faults in force.
    pub fn set(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// Changes the faults in force.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(change);
    }

    /// Lifts every fault.
    pub fn heal(&self) {
        self.set(Faults::default());
    }

    /// Closes every connection open now, cleanly (FIN both ways).
    pub fn drop_connections(&self) {
        self.end_connections(Kill::Drop);
    }

    /// Aborts every connection open now (RST both ways).
    pub fn reset_connections(&self) {
        self.end_connections(Kill::Reset);
    }

    fn end_connections(&self, how: Kill) {
        let upto = self.next_connection.load(Ordering::SeqCst);
        self.kill.send_replace((upto, Some(how)));
    }

    /// Connections accepted and forwarded since the start.
    pub fn connections(&self) -> u64 {
        self.next_connection.load(Ordering::SeqCst) - 1
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    ToServer,
    ToClient,
}

impl Side {
    /// Whether this direction's reader must stop under `faults`.
    fn held(self, faults: &Faults) -> bool {
        faults.black_hole
            || match self {
                Side::ToServer => faults.server_stops_reading,
                Side::ToClient => faults.client_stops_reading,
            }
    }
}

/// Forwards both directions of one connection until both sides have closed or the connection is killed.
async fn connection(
    mut inbound: TcpStream,
    mut outbound: TcpStream,
    id: u64,
    faults: watch::Receiver<Faults>,
    mut kill: watch::Receiver<(u64, Option<Kill>)>,
) {
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let killed = {
        let (client_read, client_write) = inbound.split();
        let (server_read, server_write) = outbound.split();
        let up = direction(client_read, server_write, Side::ToServer, faults.clone());
        let down = direction(server_read, client_write, Side::ToClient, faults);
        let killed = async {
            loop {
                if let (upto, Some(how)) = *kill.borrow_and_update()
                    && id < upto
                {
                    return how;
                }
                if kill.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = async { tokio::join!(up, down) } => None,
            how = killed => Some(how),
        }
    };
    match killed {
        Some(Kill::Reset) => {
            // Linger 0: closing sends RST instead of FIN.
            let _ = inbound.set_zero_linger();
            let _ = outbound.set_zero_linger();
        }
        Some(Kill::Drop) => {
            // A clean close: FIN both ways, then read what is still unread for a moment, because closing a
            // socket with unread bytes sends RST instead.
            let _ = inbound.shutdown().await;
            let _ = outbound.shutdown().await;
            let drain = async {
                let (mut one, mut two) = ([0u8; 4096], [0u8; 4096]);
                let (mut a, mut b) = (false, false);
                while !(a && b) {
                    tokio::select! {
                        read = inbound.read(&mut one), if !a => a = !matches!(read, Ok(n) if n > 0),
                        read = outbound.read(&mut two), if !b => b = !matches!(read, Ok(n) if n > 0),
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
        }
        None => {}
    }
}

/// Forwards one direction until its reader sees the end, then passes the close on.
async fn direction(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    side: Side,
    faults: watch::Receiver<Faults>,
) {
    // The reader stamps every chunk with the time it may leave; the writer holds it until then.
    let (chunks, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = {
        let mut faults = faults.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                if faults.wait_for(|f| !side.held(f)).await.is_err() {
                    return;
                }
                let rate = match side {
                    Side::ToClient => faults.borrow().client_read_rate,
                    Side::ToServer => None,
                };
                // A slow reader takes a twentieth of its rate every 50 ms.
                let want = rate.map_or(buf.len(), |r| (r as usize / 20).clamp(1, buf.len()));
                let read = tokio::select! {
                    read = from.read(&mut buf[..want]) => read,
                    // A change of faults while waiting for bytes applies at once (a read is cancel-safe).
                    changed = faults.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => return, // the proxy is gone
                    },
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let delay = faults.borrow().delay;
                        if chunks
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                if rate.is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let writer = {
        let mut faults = faults;
        async move {
            while let Some((due, bytes)) = queued.recv().await {
                tokio::time::sleep_until(due).await;
                if faults.wait_for(|f| !f.black_hole).await.is_err() {
                    break;
                }
                if to.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = to.shutdown().await;
        }
    };
    tokio::join!(reader, writer);
}
