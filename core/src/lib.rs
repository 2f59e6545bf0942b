//! # presently-core
//!
//! The sans-IO heart of Presently: protocol v1 types ([`protocol`]) and the presence client state machine
//! ([`Client`]). It performs no I/O, starts no thread and reads no clock: time comes in as an [`Instant`]
//! argument and everything the client wants done comes out of `poll_*` methods. This is what lets the same
//! logic run under tokio, in a browser and behind a C ABI, and be tested on virtual time.
//!
//! ```
//! use presently_core::{Client, ClientConfig, Instant, Transport, TransportCommand};
//!
//! let mut client = Client::new(ClientConfig::new("token"), 42);
//! client.connect(Instant::ZERO);
//! assert_eq!(
//!     client.poll_transport(),
//!     Some(TransportCommand::Open { transport: Transport::WebSocket })
//! );
//! client.handle_transport_open(Instant::from_millis(20));
//! let hello = client.poll_transmit().unwrap();
//! assert!(hello.contains(r#""type":"hello""#));
//! ```
#![warn(missing_docs)]

pub mod backoff;
pub mod client;
mod decode;
pub mod dnd;
mod json;
pub mod json_text;
pub mod own_status;
pub mod protocol;
pub mod sse;
pub mod time;

pub use backoff::ReconnectPolicy;
pub use chrono;
#[cfg(feature = "tzdb")]
pub use chrono_tz;
pub use client::{
    Client, ClientConfig, ConnectionState, Event, QueryError, QueryId, SessionInfo, Stats,
    Transport, TransportCommand, TransportPolicy,
};
pub use dnd::{
    DaySet, DndSchedule, DndWindow, LocalTime, OffsetFn, ScheduleError, ScheduleState, Zone,
};
pub use own_status::{AutomationConfig, DndSource, DndState, StatusReason};
pub use protocol::{
    Activity, Auto, AutoState, Availability, Choice, ClientInfo, ErrorCode, Presence, Privacy,
    ServerInfo, Status, ValidationError, Visibility,
};
pub use time::Instant;
