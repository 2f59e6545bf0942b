//! A virtual-time driver for the sans-IO client: a fake transport that records what the client sends, and a
//! clock that fires every timer at the exact instant it is due.
#![allow(dead_code)]

use std::time::Duration;

use presently_core::protocol::{ErrorCode, MAX_FRAME_BYTES, ServerMessage};
use presently_core::{
    Availability, Client, ClientConfig, ConnectionState, Event, Instant, Presence, ServerInfo,
    Transport, TransportCommand,
};
use serde_json::Value;

pub const INTERVAL: u64 = 15_000;
pub const GRACE: u64 = 10_000;
pub const RESUME_GRACE: u64 = 30_000;

/// A virtual-time driver: a fake transport that records what the client sends.
pub struct Harness {
    pub client: Client,
    pub now: Instant,
    /// Frames sent on the current transport, decoded.
    pub sent: Vec<Value>,
    /// Transport opens requested so far.
    pub opens: u32,
    /// The transport of every open requested, in order.
    pub opened: Vec<Transport>,
    pub transport_open: bool,
    pub events: Vec<Event>,
    pub sessions: u32,
    /// How many times a timer fired (`handle_timeout` calls): proof that nothing polls.
    pub timer_fires: u64,
    /// What `welcome` announces as `ping_interval_ms`: how often the server sends WebSocket pings (none by
    /// default, so that the client's own heartbeat is what the tests see).
    pub server_ping_ms: Option<u64>,
    /// What `welcome` announces as `features` (none by default: a server of the version's baseline).
    pub server_features: Vec<String>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(config(), 1)
    }

    pub fn with_config(config: ClientConfig, seed: u64) -> Self {
        Harness {
            client: Client::new(config, seed),
            now: Instant::ZERO,
            sent: Vec::new(),
            opens: 0,
            opened: Vec::new(),
            transport_open: false,
            events: Vec::new(),
            sessions: 0,
            timer_fires: 0,
            server_ping_ms: None,
            server_features: Vec::new(),
        }
    }

    /// Drains every output of the client, as a driver would after each input.
    pub fn drain(&mut self) {
        while let Some(frame) = self.client.poll_transmit() {
            assert!(
                self.transport_open,
                "frame sent without an open transport: {frame}"
            );
            self.sent
                .push(serde_json::from_str(&frame).expect("client frames are JSON"));
        }
        while let Some(command) = self.client.poll_transport() {
            match command {
                TransportCommand::Open { transport } => {
                    self.opens += 1;
                    self.opened.push(transport);
                    self.transport_open = false;
                }
                TransportCommand::Close => self.transport_open = false,
            }
        }
        while let Some(event) = self.client.poll_event() {
            self.events.push(event);
        }
    }

    /// Moves virtual time forward by `ms`, firing every timer at the exact instant it is due.
    pub fn advance(&mut self, ms: u64) {
        let target = Instant::from_millis(self.now.as_millis() + ms);
        loop {
            self.drain();
            match self.client.poll_timeout() {
                Some(due) if due <= target => {
                    self.now = due.max(self.now);
                    self.timer_fires += 1;
                    self.client.handle_timeout(self.now);
                }
                _ => break,
            }
        }
        self.now = target;
        self.drain();
    }

    pub fn open_transport(&mut self) {
        self.transport_open = true;
        self.client.handle_transport_open(self.now);
        self.drain();
    }

    pub fn receive(&mut self, message: ServerMessage) {
        self.client.handle_frame(&message.encode(), self.now);
        self.drain();
    }

    /// The server refuses an update as over its rate limit: retry after `retry_after_ms`.
    pub fn rate_limited(&mut self, retry_after_ms: u64) {
        self.receive(ServerMessage::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            fatal: false,
            reference: None,
            retry_after_ms: Some(retry_after_ms),
        });
    }

    pub fn receive_text(&mut self, text: &str) {
        self.client.handle_frame(text, self.now);
        self.drain();
    }

    pub fn welcome(&mut self) {
        self.welcome_with(false, None);
    }

    /// `welcome`, resumed or not, with the user's current choice if the server reports one.
    pub fn welcome_with(&mut self, resumed: bool, choice: Option<presently_core::Choice>) {
        if !resumed {
            self.sessions += 1;
        }
        self.receive(ServerMessage::Welcome {
            protocol: 1,
            session_id: format!("s{}", self.sessions),
            user_id: "alice".into(),
            heartbeat_interval_ms: INTERVAL,
            session_ttl_ms: 45_000,
            max_frame_bytes: MAX_FRAME_BYTES as u64,
            server: ServerInfo {
                name: "test".into(),
                version: "0".into(),
            },
            resume_grace_ms: RESUME_GRACE,
            ping_interval_ms: self.server_ping_ms,
            resumed,
            choice,
            features: self.server_features.clone(),
        });
    }

    /// connect → open → welcome.
    pub fn connected() -> Self {
        Self::connected_with_server_pings(None)
    }

    /// [`Harness::connected`], to a server whose `welcome` announces WebSocket pings every `every_ms` (if any).
    pub fn connected_with_server_pings(every_ms: Option<u64>) -> Self {
        let mut h = Harness::new();
        h.server_ping_ms = every_ms;
        h.client.connect(h.now);
        h.drain();
        h.open_transport();
        h.welcome();
        h.sent.clear();
        h.events.clear();
        h
    }

    /// Waits out a reconnect delay (unless an attempt is already under way), opens the transport and completes
    /// the handshake.
    pub fn reconnect(&mut self) {
        if matches!(self.client.state(), ConnectionState::Connecting { .. }) {
            self.open_transport();
            self.welcome();
            return;
        }
        let retry_at = match self.client.state() {
            ConnectionState::Reconnecting { retry_at, .. } => *retry_at,
            other => panic!("not reconnecting: {other:?}"),
        };
        let opens = self.opens;
        self.advance(retry_at.as_millis() - self.now.as_millis());
        assert_eq!(self.opens, opens + 1, "a retry opens the transport");
        self.open_transport();
        self.welcome();
    }

    pub fn sent_types(&self) -> Vec<String> {
        self.sent
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    pub fn presence_events(&self) -> Vec<(String, Option<Availability>, Availability)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::PresenceChanged {
                    user_id,
                    previous,
                    current,
                } => Some((
                    user_id.clone(),
                    previous.as_ref().map(|p| p.availability),
                    current.availability,
                )),
                _ => None,
            })
            .collect()
    }
}

pub fn config() -> ClientConfig {
    let mut c = ClientConfig::new("secret-token");
    c.liveness_grace = Duration::from_millis(GRACE);
    // These tests are about the connection; idle detection has its own suite.
    c.automation.idle_timeout = None;
    c
}

pub fn record(user: &str, availability: Availability, version: u64) -> Presence {
    Presence {
        availability,
        version,
        since: Some(1_000),
        last_active_at: Some(1_000),
        ..Presence::unknown(user)
    }
}
