//! The floor of the fan-out scenario on this machine: the same traffic as `fanout` (N connections on loopback,
//! user `i` watched by the K users before it, changes at a steady rate, one frame in and K frames out per change)
//! carried by two minimal processes that do nothing but move fixed 16-byte frames with `epoll` (mio), one
//! thread each. No WebSocket, no JSON, no state: what is left is the kernel's part (loopback TCP, wake-ups,
//! context switches) and the least user-space work that can carry it. Neither an SDK nor a peer on this
//! machine can deliver a change faster than this; it shows how much of a peer's latency is its own.
//!
//! `floor` is the load generator; it starts `floor-relay` (this same binary) as its server process.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rand::seq::SliceRandom;
use serde_json::json;

use crate::{Result, percentile};

/// A change on the wire: the instant it was made (ns since the load generator's origin, little-endian) and the
/// index of the user who made it.
const FRAME: usize = 16;
/// The relay's listening socket's token (connections use their index).
const LISTENER: Token = Token(usize::MAX);
/// How long the load generator waits for the last deliveries once every change is made.
const DRAIN: Duration = Duration::from_secs(5);

fn io_error(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// One connection of either process: its socket, the bytes read but not yet a whole frame, and the bytes not
/// yet written.
struct Link {
    socket: TcpStream,
    inbound: Vec<u8>,
    outbound: Vec<u8>,
}

impl Link {
    fn new(socket: TcpStream) -> Self {
        Link {
            socket,
            inbound: Vec::with_capacity(FRAME),
            outbound: Vec::new(),
        }
    }

    /// Reads what the socket holds; returns `false` once the peer has closed it.
    fn read(&mut self) -> io::Result<bool> {
        let mut buffer = [0u8; 4096];
        loop {
            match self.socket.read(&mut buffer) {
                Ok(0) => return Ok(false),
                Ok(n) => self.inbound.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `bytes` after anything still queued; what the socket cannot take now waits for `flush`.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.outbound.is_empty() {
            match self.socket.write(bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => self.outbound.extend_from_slice(&bytes[n..]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.outbound.extend_from_slice(bytes)
                }
                Err(e) => return Err(e),
            }
        } else {
            self.outbound.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// Writes what was queued, as far as the socket takes it.
    fn flush(&mut self) -> io::Result<()> {
        while !self.outbound.is_empty() {
            match self.socket.write(&self.outbound) {
                Ok(n) => {
                    self.outbound.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Takes the next whole frame read, if any.
    fn next_frame(&mut self) -> Option<[u8; FRAME]> {
        if self.inbound.len() < FRAME {
            return None;
        }
        let mut frame = [0u8; FRAME];
        frame.copy_from_slice(&self.inbound[..FRAME]);
        self.inbound.drain(..FRAME);
        Some(frame)
    }
}

/// The relay process: accepts `clients` connections (each first sends its index as a 4-byte little-endian
/// number), prints `LISTENING <port>` once bound and `READY` once all are in, then writes every frame a connection sends to the `watch`
/// connections before it (the users watching it). Ends when the load generator's connections close.
pub(crate) fn relay(clients: usize, watch: usize) -> Result<()> {
    let mut poll = Poll::new().map_err(io_error("epoll"))?;
    let mut listener =
        TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(io_error("bind"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("local address"))?
        .port();
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(io_error("register"))?;
    println!("LISTENING {port}");
    io::stdout().flush().map_err(io_error("stdout"))?;

    // Accepted connections wait here until their index arrives.
    let mut pending: Vec<Option<Link>> = Vec::new();
    let mut links: Vec<Option<Link>> = (0..clients).map(|_| None).collect();
    let mut identified = 0usize;
    let mut events = Events::with_capacity(1024);
    let pending_base = clients;
    loop {
        poll.poll(&mut events, None).map_err(io_error("poll"))?;
        for event in &events {
            match event.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut socket, _)) => {
                            socket.set_nodelay(true).map_err(io_error("nodelay"))?;
                            let token = Token(pending_base + pending.len());
                            poll.registry()
                                .register(
                                    &mut socket,
                                    token,
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .map_err(io_error("register"))?;
                            pending.push(Some(Link::new(socket)));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(format!("accept: {e}")),
                    }
                },
                Token(t) if t >= pending_base => {
                    let Some(link) = pending.get_mut(t - pending_base).and_then(Option::as_mut)
                    else {
                        continue;
                    };
                    if !link.read().map_err(io_error("read"))? {
                        return Ok(());
                    }
                    if link.inbound.len() < 4 {
                        continue;
                    }
                    let index = u32::from_le_bytes([
                        link.inbound[0],
                        link.inbound[1],
                        link.inbound[2],
                        link.inbound[3],
                    ]) as usize;
                    let Some(mut link) = pending[t - pending_base].take() else {
                        continue;
                    };
                    if index >= clients || links[index].is_some() {
                        return Err(format!("a connection said it was client {index}"));
                    }
                    link.inbound.drain(..4);
                    poll.registry()
                        .reregister(
                            &mut link.socket,
                            Token(index),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .map_err(io_error("reregister"))?;
                    links[index] = Some(link);
                    identified += 1;
                    if identified == clients {
                        println!("READY");
                        io::stdout().flush().map_err(io_error("stdout"))?;
                    }
                }
                Token(index) => {
                    let Some(link) = links.get_mut(index).and_then(Option::as_mut) else {
                        continue;
                    };
                    if event.is_writable() {
                        link.flush().map_err(io_error("write"))?;
                    }
                    if !event.is_readable() {
                        continue;
                    }
                    if !link.read().map_err(io_error("read"))? {
                        return Ok(());
                    }
                    while let Some(frame) = links[index].as_mut().and_then(Link::next_frame) {
                        for k in 1..=watch {
                            let watcher = (index + clients - k) % clients;
                            if let Some(link) = links[watcher].as_mut() {
                                link.write(&frame).map_err(io_error("write"))?;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The relay child process, killed when dropped.
struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The load generator: `clients` connections to a relay child process, `rate` changes a second for `duration`
/// seconds, each change at its due instant from a client taken in a shuffled order; the latency from writing a
/// change to reading each of its `watch` deliveries.
pub(crate) fn floor(
    clients: usize,
    watch: usize,
    rate: u64,
    duration: u64,
) -> Result<serde_json::Value> {
    if clients == 0 || watch == 0 || watch >= clients || rate == 0 {
        return Err(
            "--clients and --rate must be positive and --watch at least 1 and less than --clients"
                .into(),
        );
    }
    let exe = std::env::current_exe().map_err(io_error("this program's path"))?;
    let mut child = Command::new(exe)
        .args([
            "floor-relay",
            "--clients",
            &clients.to_string(),
            "--watch",
            &watch.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(io_error("start the relay"))?;
    let stdout = child.stdout.take().ok_or("the relay's output")?;
    let _relay = RelayProcess(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut line = || -> Result<String> {
        lines
            .next()
            .ok_or("the relay ended early")?
            .map_err(io_error("the relay's output"))
    };
    let port: u16 = line()?
        .strip_prefix("LISTENING ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or("the relay did not say its port")?;

    let mut poll = Poll::new().map_err(io_error("epoll"))?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut links = Vec::with_capacity(clients);
    for index in 0..clients {
        let socket = std::net::TcpStream::connect(address).map_err(io_error("connect"))?;
        socket.set_nodelay(true).map_err(io_error("nodelay"))?;
        (&socket)
            .write_all(&(index as u32).to_le_bytes())
            .map_err(io_error("hello"))?;
        socket
            .set_nonblocking(true)
            .map_err(io_error("nonblocking"))?;
        let mut socket = TcpStream::from_std(socket);
        poll.registry()
            .register(
                &mut socket,
                Token(index),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(io_error("register"))?;
        links.push(Link::new(socket));
    }
    if line()? != "READY" {
        return Err("the relay did not say it was ready".into());
    }

    let origin = Instant::now();
    let total = rate * duration;
    let expected = total * watch as u64;
    let mut order: Vec<usize> = (0..clients).collect();
    order.shuffle(&mut rand::rng());
    let mut latencies: Vec<u64> = Vec::with_capacity(expected as usize);
    let mut events = Events::with_capacity(1024);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut drain_until = None;
    while (latencies.len() as u64) < expected {
        let now = Instant::now();
        if sent < total {
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            if now >= due {
                let who = order[(sent % clients as u64) as usize];
                let mut frame = [0u8; FRAME];
                let stamp = origin.elapsed().as_nanos() as u64;
                frame[..8].copy_from_slice(&stamp.to_le_bytes());
                frame[8..12].copy_from_slice(&(who as u32).to_le_bytes());
                links[who].write(&frame).map_err(io_error("write"))?;
                links[who].flush().map_err(io_error("write"))?;
                sent += 1;
                continue;
            }
        } else if drain_until.is_none() {
            drain_until = Some(now + DRAIN);
        }
        let wake_at = match drain_until {
            Some(until) if now >= until => break,
            Some(until) => until,
            None => started + Duration::from_secs_f64(sent as f64 / rate as f64),
        };
        poll.poll(&mut events, Some(wake_at.saturating_duration_since(now)))
            .map_err(io_error("poll"))?;
        for event in &events {
            let link = &mut links[event.token().0];
            if event.is_writable() {
                link.flush().map_err(io_error("write"))?;
            }
            if !event.is_readable() {
                continue;
            }
            if !link.read().map_err(io_error("read"))? {
                return Err("the relay closed a connection".into());
            }
            while let Some(frame) = link.next_frame() {
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&frame[..8]);
                let made = u64::from_le_bytes(stamp);
                let now = origin.elapsed().as_nanos() as u64;
                latencies.push(now.saturating_sub(made) / 1_000);
            }
        }
    }
    let received = latencies.len();
    latencies.sort_unstable();
    Ok(json!({
        "peer": "floor",
        "clients": clients,
        "watch": watch,
        "rate": rate,
        "duration_s": duration,
        "changes": sent,
        "expected": expected,
        "received": received,
        "p50_us": percentile(&latencies, 50.0),
        "p99_us": percentile(&latencies, 99.0),
        "max_us": latencies.last().copied().unwrap_or(0),
    }))
}
