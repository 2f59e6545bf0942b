//! Presently protocol v1: the messages of `docs/protocol.md` as Rust types, their JSON encoding and the
//! validation rules both sides apply.
//!
//! Decoding follows the forward-compatibility rules of the protocol: unknown fields are ignored and an unknown
//! `type` decodes to the `Unknown` variant instead of failing.

use core::fmt;

use crate::json_text::Quoted;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The protocol version this crate speaks, sent in `hello.protocol` and `welcome.protocol`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The feature, announced in `welcome.features`, of a server that accepts `auto` in `set_status` and applies it
/// together with the choice (protocol section 7, `set_status`).
pub const FEATURE_SET_STATUS_AUTO: &str = "set_status_auto";
/// The WebSocket subprotocol a client offers and a server selects.
pub const SUBPROTOCOL: &str = "presently.v1";
/// The largest message, in bytes of UTF-8, that either side may send.
pub const MAX_FRAME_BYTES: usize = 65_536;
/// The longest user id, in bytes of UTF-8.
pub const MAX_USER_ID_BYTES: usize = 128;
/// The longest custom status message, in Unicode scalar values (code points).
pub const MAX_MESSAGE_CHARS: usize = 200;
/// The longest activity kind, in bytes (`[a-z0-9_]`).
pub const MAX_ACTIVITY_KIND_BYTES: usize = 32;
/// The longest activity detail, in Unicode scalar values (code points).
pub const MAX_ACTIVITY_DETAIL_CHARS: usize = 100;
/// The most users one `subscribe`, `unsubscribe` or `query` may list.
pub const MAX_USERS_PER_REQUEST: usize = 1_000;
/// The most users one session may watch.
pub const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 10_000;
/// The longest `ref`, in bytes.
pub const MAX_REF_BYTES: usize = 64;
/// The longest `client.name`, `client.version` or `client.platform`, in bytes.
pub const MAX_CLIENT_INFO_BYTES: usize = 64;
/// The longest focus context, in bytes.
pub const MAX_FOCUS_BYTES: usize = 128;
/// The most contacts one user may have.
pub const MAX_CONTACTS: usize = 10_000;
/// The most channels one session may subscribe to.
pub const MAX_CHANNELS_PER_SESSION: usize = 100;
/// The most members one channel may have.
pub const MAX_CHANNEL_MEMBERS: usize = 10_000;

/// What watchers should show for a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Availability {
    /// Connected and available. A v1 receiver also decodes availabilities it does not know as `Online`.
    Online,
    /// Connected but away (idle, or set away by hand).
    Away,
    /// Connected and not to be disturbed.
    Busy,
    /// No session: not connected.
    Offline,
    /// Chosen by a user to appear offline while still seeing others; watchers see `Offline`, only the user
    /// sees `Invisible`.
    Invisible,
}

impl Availability {
    /// The wire name: `"online"`, `"away"`, `"busy"` or `"offline"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Online => "online",
            Availability::Away => "away",
            Availability::Busy => "busy",
            Availability::Offline => "offline",
            Availability::Invisible => "invisible",
        }
    }

    /// The availability named `name` on the wire, or `None` for a name this version does not know.
    pub fn from_wire(name: &str) -> Option<Self> {
        Some(match name {
            "online" => Availability::Online,
            "away" => Availability::Away,
            "busy" => Availability::Busy,
            "offline" => Availability::Offline,
            "invisible" => Availability::Invisible,
            _ => return None,
        })
    }

    /// The availability named `name` in a record, read leniently: names a later protocol version may add show
    /// as online (protocol section 3).
    pub(crate) fn from_wire_lenient(name: &str) -> Self {
        Availability::from_wire(name).unwrap_or(Availability::Online)
    }
}

impl Serialize for Availability {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Availability {
    /// Strict: what a client sets must be a value this version knows (records are read leniently, see
    /// [`Presence`]).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Availability::from_wire(&name).ok_or_else(|| {
            serde::de::Error::unknown_variant(
                &name,
                &["online", "away", "busy", "offline", "invisible"],
            )
        })
    }
}

/// Reads an availability in a record leniently: values a later protocol version may add show as online
/// (protocol section 3).
fn lenient_availability<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Availability, D::Error> {
    let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    Ok(Availability::from_wire_lenient(&name))
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a user is doing, e.g. kind `in_studio` with detail `"Ableton Live 12"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Activity {
    /// A short machine-readable kind from `[a-z0-9_]`, at most [`MAX_ACTIVITY_KIND_BYTES`] bytes.
    pub kind: String,
    /// Free text for people, at most [`MAX_ACTIVITY_DETAIL_CHARS`] code points.
    #[serde(default)]
    pub detail: Option<String>,
}

impl Activity {
    /// An activity of `kind` with a human-readable `detail`.
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> Self {
        Activity {
            kind: kind.into(),
            detail: Some(detail.into()),
        }
    }
}

/// The status a user sets for themselves: availability, custom message and activity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Status {
    /// `Online`, `Away` or `Busy` (`Offline` is not something a client sets).
    pub availability: Availability,
    /// Custom message, at most [`MAX_MESSAGE_CHARS`] code points; `None` for no message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the user is doing; `None` for nothing in particular.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
    /// When the message clears itself, Unix time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_expires_at: Option<u64>,
}

impl Status {
    /// A status with this availability, no message and no activity.
    pub fn new(availability: Availability) -> Self {
        Status {
            availability,
            message: None,
            activity: None,
            message_expires_at: None,
        }
    }

    /// The same status with a custom message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The same status with a message that clears itself at `expires_at` (Unix time in milliseconds).
    pub fn with_message_until(mut self, message: impl Into<String>, expires_at: u64) -> Self {
        self.message = Some(message.into());
        self.message_expires_at = Some(expires_at);
        self
    }

    /// The same status with an activity.
    pub fn with_activity(mut self, activity: Activity) -> Self {
        self.activity = Some(activity);
        self
    }
}

impl Default for Status {
    /// `Online`, no message, no activity: what a session has unless it says otherwise.
    fn default() -> Self {
        Status::new(Availability::Online)
    }
}

/// A user's explicit choice with the moment it was made (protocol section 6.1): the choice with the latest
/// `chosen_at` wins across the user's devices.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Choice {
    /// The chosen status.
    #[serde(flatten)]
    pub status: Status,
    /// When the user made the choice, Unix time in milliseconds; `None` lets the server use its receipt time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_at: Option<u64>,
}

impl<'de> Deserialize<'de> for Choice {
    /// Reads the status fields and `chosen_at` from one flat object (what `#[serde(flatten)]` would do, without
    /// buffering the object first).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Flat {
            availability: Availability,
            #[serde(default)]
            message: Option<String>,
            #[serde(default)]
            activity: Option<Activity>,
            #[serde(default)]
            message_expires_at: Option<u64>,
            #[serde(default)]
            chosen_at: Option<u64>,
        }
        let flat = Flat::deserialize(deserializer)?;
        Ok(Choice {
            status: Status {
                availability: flat.availability,
                message: flat.message,
                activity: flat.activity,
                message_expires_at: flat.message_expires_at,
            },
            chosen_at: flat.chosen_at,
        })
    }
}

/// A session's automatic state (protocol section 6.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AutoState {
    /// The user is active on this device.
    #[default]
    Active,
    /// No local activity for the idle timeout.
    Idle,
    /// The app is in the background.
    Background,
    /// Do not disturb.
    Dnd,
}

impl AutoState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoState::Active => "active",
            AutoState::Idle => "idle",
            AutoState::Background => "background",
            AutoState::Dnd => "dnd",
        }
    }
}

impl Serialize for AutoState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AutoState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(match name.as_ref() {
            "idle" => AutoState::Idle,
            "background" => AutoState::Background,
            "dnd" => AutoState::Dnd,
            // "active", and states a later version may add.
            _ => AutoState::Active,
        })
    }
}

/// A session's automatic state with the DND message, as sent in `hello.auto` and `set_auto`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Auto {
    /// The state.
    pub state: AutoState,
    /// With `Dnd`: the message watchers see instead of the choice's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a client sends to resume a dropped session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resume {
    /// The session to resume.
    pub session_id: String,
    /// The greatest record version received on that session (0 if none).
    #[serde(default)]
    pub last_version: u64,
}

/// A user's presence as the server describes it (protocol section 3).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Presence {
    /// Whose presence this is.
    pub user_id: String,
    /// What watchers should show.
    #[serde(deserialize_with = "lenient_availability")]
    pub availability: Availability,
    /// Custom status message.
    #[serde(default)]
    pub message: Option<String>,
    /// What the user is doing.
    #[serde(default)]
    pub activity: Option<Activity>,
    /// The last time the user was known to be active, Unix time in milliseconds.
    #[serde(default)]
    pub last_active_at: Option<u64>,
    /// When the current availability began, Unix time in milliseconds.
    #[serde(default)]
    pub since: Option<u64>,
    /// Per-user version, strictly increasing with every change of this record.
    pub version: u64,
    /// What the user's devices are looking at (e.g. `"conversation:42"`), sorted; empty for nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub focus: Vec<String>,
}

impl Presence {
    /// The record of a user the server has never seen: offline, everything else empty, version 0.
    pub fn unknown(user_id: impl Into<String>) -> Self {
        Presence {
            user_id: user_id.into(),
            availability: Availability::Offline,
            message: None,
            activity: None,
            last_active_at: None,
            since: None,
            version: 0,
            focus: Vec::new(),
        }
    }

    /// Whether the user's devices are looking at `context`.
    pub fn is_focused_on(&self, context: &str) -> bool {
        self.focus.iter().any(|f| f == context)
    }

    /// True when everything but the version is equal: a real change for an application is one where this is
    /// false.
    pub fn same_content(&self, other: &Presence) -> bool {
        self.user_id == other.user_id
            && self.availability == other.availability
            && self.message == other.message
            && self.activity == other.activity
            && self.last_active_at == other.last_active_at
            && self.since == other.since
            && self.focus == other.focus
    }
}

/// Name, version and platform of the application, sent in `hello` for logs and support.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Application name, e.g. `"Sidechain"`.
    pub name: String,
    /// Application version, e.g. `"2.3.0"`.
    pub version: String,
    /// Platform, e.g. `"vst3-macos"`, `"ios"`, `"web"`.
    pub platform: String,
}

impl ClientInfo {
    /// Client info from its three parts.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        platform: impl Into<String>,
    ) -> Self {
        ClientInfo {
            name: name.into(),
            version: version.into(),
            platform: platform.into(),
        }
    }
}

impl Default for ClientInfo {
    /// `presently-rust`, this crate's version, and the compile target's OS.
    fn default() -> Self {
        ClientInfo::new(
            "presently-rust",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
        )
    }
}

/// Name and version of the server software, from `welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Server software name.
    pub name: String,
    /// Server software version.
    pub version: String,
}

/// An error code from the server (protocol section 7, `error`). Codes this crate does not know are kept in
/// [`ErrorCode::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Fatal: the token is missing, malformed or not accepted.
    InvalidToken,
    /// Fatal: the token's validity has ended.
    TokenExpired,
    /// Fatal: the protocol version is not spoken by the other side.
    UnsupportedProtocol,
    /// Fatal: the first frame was not `hello`.
    HelloRequired,
    /// No `hello` within the server's hello timeout.
    HelloTimeout,
    /// A malformed message.
    InvalidMessage,
    /// `set_status` or `hello.status` failed validation.
    InvalidStatus,
    /// A user id broke the rules.
    InvalidUserId,
    /// Too many users in one request.
    TooManyUsers,
    /// The session would watch too many users.
    TooManySubscriptions,
    /// Too many status updates; retry after the delay the error carries.
    RateLimited,
    /// A channel subscription by a user who is not a member.
    NotAMember,
    /// A message larger than the frame limit.
    FrameTooLarge,
    /// The client did not read fast enough.
    SlowConsumer,
    /// The session's TTL ran out.
    SessionExpired,
    /// An internal failure on the server.
    ServerError,
    /// A code this version does not know.
    Other(String),
}

impl ErrorCode {
    /// The wire name of the code, e.g. `"invalid_token"`.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::HelloTimeout => "hello_timeout",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::InvalidStatus => "invalid_status",
            ErrorCode::InvalidUserId => "invalid_user_id",
            ErrorCode::TooManyUsers => "too_many_users",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::ServerError => "server_error",
            ErrorCode::Other(code) => code,
        }
    }

    /// The code for a wire name; unknown names become [`ErrorCode::Other`].
    pub fn from_wire(code: &str) -> Self {
        match code {
            "invalid_token" => ErrorCode::InvalidToken,
            "token_expired" => ErrorCode::TokenExpired,
            "unsupported_protocol" => ErrorCode::UnsupportedProtocol,
            "hello_required" => ErrorCode::HelloRequired,
            "hello_timeout" => ErrorCode::HelloTimeout,
            "invalid_message" => ErrorCode::InvalidMessage,
            "invalid_status" => ErrorCode::InvalidStatus,
            "invalid_user_id" => ErrorCode::InvalidUserId,
            "too_many_users" => ErrorCode::TooManyUsers,
            "too_many_subscriptions" => ErrorCode::TooManySubscriptions,
            "rate_limited" => ErrorCode::RateLimited,
            "not_a_member" => ErrorCode::NotAMember,
            "frame_too_large" => ErrorCode::FrameTooLarge,
            "slow_consumer" => ErrorCode::SlowConsumer,
            "session_expired" => ErrorCode::SessionExpired,
            "server_error" => ErrorCode::ServerError,
            other => ErrorCode::Other(other.to_owned()),
        }
    }

    /// Whether the protocol defines this code as fatal (the client must not reconnect by itself).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ErrorCode::InvalidToken
                | ErrorCode::TokenExpired
                | ErrorCode::UnsupportedProtocol
                | ErrorCode::HelloRequired
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(ErrorCode::from_wire(&code))
    }
}

/// Who may see a user's presence (protocol section 7, `set_privacy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Everyone who watches.
    #[default]
    Everyone,
    /// Only the user's contacts.
    Contacts,
    /// Nobody.
    Nobody,
}

impl Visibility {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Everyone => "everyone",
            Visibility::Contacts => "contacts",
            Visibility::Nobody => "nobody",
        }
    }
}

/// A user's privacy settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Privacy {
    /// Who may see the user's presence.
    #[serde(default)]
    pub visibility: Visibility,
    /// Hide `last_active_at` from everyone but the user.
    #[serde(default)]
    pub hide_last_seen: bool,
}

/// A message from client to server.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The first frame: credentials, client info and the session's initial status.
    Hello {
        /// Protocol version, [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The credential.
        token: String,
        /// Who is connecting.
        client: ClientInfo,
        /// The user's explicit choice, if this device made one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<Choice>,
        /// This session's automatic state; absent means active.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auto: Option<Auto>,
        /// Resume a dropped session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
        /// What this session is looking at.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        focus: Option<String>,
    },
    /// Set the user's explicit choice.
    SetStatus {
        /// Correlates an `error` with this request.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// The choice.
        #[serde(flatten)]
        choice: Choice,
        /// This session's automatic state, applied together with the choice; only to a server that announces
        /// [`FEATURE_SET_STATUS_AUTO`] (others ignore it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auto: Option<Auto>,
    },
    /// Set this session's automatic state.
    SetAuto {
        /// Correlates an `error` with this request.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// The state and DND message.
        #[serde(flatten)]
        auto: Auto,
    },
    /// What this session is looking at (`None`: nothing in particular).
    SetFocus {
        /// Correlates an `error` with this request.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// The context, e.g. `"conversation:42"`.
        context: Option<String>,
    },
    /// The user's privacy settings.
    SetPrivacy {
        /// Correlates an `error` with this request.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// The settings.
        #[serde(flatten)]
        privacy: Privacy,
    },
    /// Watch users: the server answers with a snapshot, then updates.
    Subscribe {
        /// Users to watch.
        users: Vec<String>,
    },
    /// Stop watching users.
    Unsubscribe {
        /// Users to stop watching.
        users: Vec<String>,
    },
    /// Watch the members of channels: the server answers with a channel snapshot each, then updates.
    SubscribeChannels {
        /// Channels to watch.
        channels: Vec<String>,
    },
    /// Stop watching channels.
    UnsubscribeChannels {
        /// Channels to stop watching.
        channels: Vec<String>,
    },
    /// Read users' presence once.
    Query {
        /// Correlates the `query_result`.
        #[serde(rename = "ref")]
        reference: String,
        /// Users to read.
        users: Vec<String>,
    },
    /// Heartbeat; answered by `pong`.
    Ping {
        /// Echoed in the `pong`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// End the session now.
    Bye {
        /// Why, for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A message type this version does not know (forward compatibility): ignored.
    #[serde(skip_serializing)]
    Unknown,
}

/// A message from server to client.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to a valid `hello`.
    Welcome {
        /// Protocol version, [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Opaque session id.
        session_id: String,
        /// The authenticated user.
        user_id: String,
        /// The client must send a frame at least this often, in milliseconds.
        heartbeat_interval_ms: u64,
        /// The server ends the session after this long without a frame from the client, in milliseconds.
        session_ttl_ms: u64,
        /// The largest message the server accepts, in bytes.
        max_frame_bytes: u64,
        /// Server software.
        server: ServerInfo,
        /// How long the server keeps the session after its connection drops, in milliseconds (0: no resume).
        #[serde(default)]
        resume_grace_ms: u64,
        /// How often the server sends WebSocket pings, in milliseconds, if it does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ping_interval_ms: Option<u64>,
        /// Whether the hello resumed an existing session.
        #[serde(default)]
        resumed: bool,
        /// The user's current explicit choice across their devices, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        choice: Option<Choice>,
        /// Optional behaviour the server has, such as [`FEATURE_SET_STATUS_AUTO`]; unknown ones are ignored.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    /// The user's explicit choice changed (here or on another device).
    Choice {
        /// The choice.
        status: Choice,
    },
    /// The user's privacy settings now in force.
    Privacy {
        /// The settings.
        #[serde(flatten)]
        privacy: Privacy,
    },
    /// The members of a subscribed channel, or one part of them.
    ChannelSnapshot {
        /// The channel.
        channel: String,
        /// The members' records (in this part).
        members: Vec<Presence>,
        /// More parts follow.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// A subscribed channel's membership changed.
    ChannelMembers {
        /// The channel.
        channel: String,
        /// New members' records.
        #[serde(default)]
        joined: Vec<Presence>,
        /// Members who left.
        #[serde(default)]
        left: Vec<String>,
    },
    /// Full records of users listed in a `subscribe`.
    Snapshot {
        /// One record per user.
        users: Vec<Presence>,
    },
    /// A watched user's record changed.
    Presence {
        /// The new record.
        user: Presence,
    },
    /// The answer to a `query`, or one part of it.
    QueryResult {
        /// The query's `ref`.
        #[serde(rename = "ref")]
        reference: String,
        /// One record per distinct listed user (in this part).
        users: Vec<Presence>,
        /// More parts follow.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// The answer to a `ping`.
    Pong {
        /// The ping's `ref`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// The server's clock, Unix time in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_time_ms: Option<u64>,
    },
    /// Something went wrong.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// For people.
        message: String,
        /// When true the server closes and the client must not reconnect by itself.
        #[serde(default)]
        fatal: bool,
        /// The request this error is about, if any.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// With `rate_limited`: when to send again, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The server is draining: reconnect later.
    Goaway {
        /// Do not reconnect before this many milliseconds.
        reconnect_after_ms: u64,
        /// Why, for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A message type this version does not know (forward compatibility): ignored.
    #[serde(skip_serializing)]
    Unknown,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is larger than the limit in force.
    TooLarge {
        /// The frame's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// Not JSON, or a known message type with missing or mistyped fields.
    Malformed(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { size, limit } => {
                write!(
                    f,
                    "frame of {size} bytes is larger than the limit of {limit} bytes"
                )
            }
            DecodeError::Malformed(why) => write!(f, "malformed message: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn check_size(text: &str, limit: usize) -> Result<(), DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    Ok(())
}

fn from_json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The `type` of a frame, read without buffering the rest (every other field is skipped).
#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

/// The frame's `type` when it is the first member, as every encoder here writes it and as it is read off the
/// front without a pass over the whole frame (the variant's own pass then checks the whole frame). `None` for
/// any other frame, which takes the general path.
fn leading_type(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('{')?.trim_start();
    let rest = rest
        .strip_prefix("\"type\"")?
        .trim_start()
        .strip_prefix(':')?;
    let rest = rest.trim_start().strip_prefix('"')?;
    // Escapes and control characters take the general path.
    let end = rest.find(|c: char| c == '"' || c == '\\' || c.is_control())?;
    (rest.as_bytes()[end] == b'"').then(|| &rest[..end])
}

/// The frame's `type`, read with serde (see [`leading_type`] for the common case).
fn frame_type(text: &str) -> Result<std::borrow::Cow<'_, str>, DecodeError> {
    match leading_type(text) {
        Some(kind) => Ok(std::borrow::Cow::Borrowed(kind)),
        None => Ok(from_json::<Kind>(text)?.kind),
    }
}

/// The optional `ref` of a request whose other fields belong to a flattened struct.
#[derive(Deserialize)]
struct Reference {
    #[serde(rename = "ref", default)]
    reference: Option<String>,
}

/// The fields of a `set_status` frame: its optional `ref` and `auto`, and the fields of its choice (as
/// [`Choice`]'s own deserializer reads them), so that the frame is read in one pass.
#[derive(Deserialize)]
struct SetStatusBody {
    #[serde(rename = "ref", default)]
    reference: Option<String>,
    availability: Availability,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    activity: Option<Activity>,
    #[serde(default)]
    message_expires_at: Option<u64>,
    #[serde(default)]
    chosen_at: Option<u64>,
    #[serde(default)]
    auto: Option<Auto>,
}

/// Decodes the frame `text` as the body of one variant: a struct with the variant's fields (the `type` field and
/// any unknown field are skipped), then builds the variant from it.
///
/// Frames are decoded in two passes, `type` first and then the variant's own struct, instead of with serde's
/// internally tagged enums: those buffer every frame into an intermediate tree, which costs time and, in the
/// browser package, about a third of its size.
macro_rules! variant {
    ($text:expr, $enum:ident :: $variant:ident { $( $(#[$attr:meta])* $field:ident : $ty:ty ),* $(,)? }) => {{
        #[derive(Deserialize)]
        struct Body {
            // Read (and dropped) so that a second `type` member is an error, as it is for the first pass: a
            // frame must not mean one thing here and another to a parser that keeps the last duplicate.
            #[serde(rename = "type", default)]
            _kind: serde::de::IgnoredAny,
            $( $(#[$attr])* $field: $ty, )*
        }
        let body: Body = from_json($text)?;
        $enum::$variant { $( $field: body.$field ),* }
    }};
}

impl ClientMessage {
    /// Decodes a client frame no larger than `limit` bytes.
    pub fn decode(text: &str, limit: usize) -> Result<Self, DecodeError> {
        check_size(text, limit)?;
        let kind = frame_type(text)?;
        Ok(match kind.as_ref() {
            "hello" => variant!(text, ClientMessage::Hello {
                protocol: u32,
                token: String,
                client: ClientInfo,
                #[serde(default)]
                status: Option<Choice>,
                #[serde(default)]
                auto: Option<Auto>,
                #[serde(default)]
                resume: Option<Resume>,
                #[serde(default)]
                focus: Option<String>,
            }),
            "set_status" => {
                // The choice's fields, flat, with `ref` and `auto` beside them: read in one pass.
                let body: SetStatusBody = from_json(text)?;
                ClientMessage::SetStatus {
                    reference: body.reference,
                    choice: Choice {
                        status: Status {
                            availability: body.availability,
                            message: body.message,
                            activity: body.activity,
                            message_expires_at: body.message_expires_at,
                        },
                        chosen_at: body.chosen_at,
                    },
                    auto: body.auto,
                }
            }
            "set_auto" => ClientMessage::SetAuto {
                reference: from_json::<Reference>(text)?.reference,
                auto: from_json(text)?,
            },
            "set_focus" => variant!(text, ClientMessage::SetFocus {
                #[serde(rename = "ref", default)]
                reference: Option<String>,
                context: Option<String>,
            }),
            "set_privacy" => ClientMessage::SetPrivacy {
                reference: from_json::<Reference>(text)?.reference,
                privacy: from_json(text)?,
            },
            "subscribe" => variant!(text, ClientMessage::Subscribe { users: Vec<String> }),
            "unsubscribe" => variant!(text, ClientMessage::Unsubscribe { users: Vec<String> }),
            "subscribe_channels" => {
                variant!(text, ClientMessage::SubscribeChannels { channels: Vec<String> })
            }
            "unsubscribe_channels" => {
                variant!(text, ClientMessage::UnsubscribeChannels { channels: Vec<String> })
            }
            "query" => variant!(text, ClientMessage::Query {
                #[serde(rename = "ref")]
                reference: String,
                users: Vec<String>,
            }),
            "ping" => variant!(text, ClientMessage::Ping {
                #[serde(rename = "ref", default)]
                reference: Option<String>,
            }),
            "bye" => variant!(text, ClientMessage::Bye {
                #[serde(default)]
                reason: Option<String>,
            }),
            _ => {
                // Not read further, but still a JSON object with a `type`.
                from_json::<Kind>(text)?;
                ClientMessage::Unknown
            }
        })
    }

    /// Encodes the message as a JSON text frame.
    ///
    /// Written field by field with [`crate::json_text`] rather than serde's serializers (smaller in the browser
    /// package, and faster); the output is byte for byte what serde writes from this type's definition, the
    /// reference [`ClientMessage::encode_with_serde`] is tested against. `Unknown` is not sent; it encodes as
    /// `{"type":"invalid"}`.
    pub fn encode(&self) -> String {
        use crate::json_text::JsonObject;
        let mut text = String::with_capacity(128);
        let mut frame = JsonObject::new(&mut text);
        match self {
            ClientMessage::Hello {
                protocol,
                token,
                client,
                status,
                auto,
                resume,
                focus,
            } => {
                frame
                    .str("type", "hello")
                    .u64("protocol", u64::from(*protocol))
                    .str("token", token)
                    .object("client", |object| {
                        object
                            .str("name", &client.name)
                            .str("version", &client.version)
                            .str("platform", &client.platform);
                    });
                if let Some(choice) = status {
                    frame.object("status", |object| write_choice(object, choice));
                }
                if let Some(auto) = auto {
                    frame.object("auto", |object| write_auto(object, auto));
                }
                if let Some(resume) = resume {
                    frame.object("resume", |object| {
                        object
                            .str("session_id", &resume.session_id)
                            .u64("last_version", resume.last_version);
                    });
                }
                frame.opt_str("focus", focus.as_deref());
            }
            ClientMessage::SetStatus {
                reference,
                choice,
                auto,
            } => {
                frame
                    .str("type", "set_status")
                    .opt_str("ref", reference.as_deref());
                write_choice(&mut frame, choice);
                if let Some(auto) = auto {
                    frame.object("auto", |object| write_auto(object, auto));
                }
            }
            ClientMessage::SetAuto { reference, auto } => {
                frame
                    .str("type", "set_auto")
                    .opt_str("ref", reference.as_deref());
                write_auto(&mut frame, auto);
            }
            ClientMessage::SetFocus { reference, context } => {
                frame
                    .str("type", "set_focus")
                    .opt_str("ref", reference.as_deref())
                    .str_or_null("context", context.as_deref());
            }
            ClientMessage::SetPrivacy { reference, privacy } => {
                frame
                    .str("type", "set_privacy")
                    .opt_str("ref", reference.as_deref())
                    .str("visibility", privacy.visibility.as_str())
                    .bool("hide_last_seen", privacy.hide_last_seen);
            }
            ClientMessage::Subscribe { users } => {
                frame.str("type", "subscribe").str_array("users", users);
            }
            ClientMessage::Unsubscribe { users } => {
                frame.str("type", "unsubscribe").str_array("users", users);
            }
            ClientMessage::SubscribeChannels { channels } => {
                frame
                    .str("type", "subscribe_channels")
                    .str_array("channels", channels);
            }
            ClientMessage::UnsubscribeChannels { channels } => {
                frame
                    .str("type", "unsubscribe_channels")
                    .str_array("channels", channels);
            }
            ClientMessage::Query { reference, users } => {
                frame
                    .str("type", "query")
                    .str("ref", reference)
                    .str_array("users", users);
            }
            ClientMessage::Ping { reference } => {
                frame
                    .str("type", "ping")
                    .opt_str("ref", reference.as_deref());
            }
            ClientMessage::Bye { reason } => {
                frame
                    .str("type", "bye")
                    .opt_str("reason", reason.as_deref());
            }
            ClientMessage::Unknown => {
                frame.str("type", "invalid");
            }
        }
        frame.end();
        text
    }

    /// Encodes the message with serde's derived serializer: the reference [`ClientMessage::encode`] is tested
    /// against.
    #[doc(hidden)]
    pub fn encode_with_serde(&self) -> String {
        encode(self)
    }
}

/// The fields of `choice` (its status, flattened, then `chosen_at`), as `Choice`'s serde definition writes them.
fn write_choice(object: &mut crate::json_text::JsonObject<'_>, choice: &Choice) {
    let status = &choice.status;
    object
        .str("availability", status.availability.as_str())
        .opt_str("message", status.message.as_deref());
    if let Some(activity) = &status.activity {
        object.object("activity", |object| {
            object
                .str("kind", &activity.kind)
                .str_or_null("detail", activity.detail.as_deref());
        });
    }
    object
        .opt_u64("message_expires_at", status.message_expires_at)
        .opt_u64("chosen_at", choice.chosen_at);
}

/// The fields of `auto`, as `Auto`'s serde definition writes them.
fn write_auto(object: &mut crate::json_text::JsonObject<'_>, auto: &Auto) {
    object
        .str("state", auto.state.as_str())
        .opt_str("message", auto.message.as_deref());
}

impl ServerMessage {
    /// Decodes a server frame no larger than `limit` bytes.
    ///
    /// Frames are read with a small JSON pull reader that follows this module's serde definitions field for
    /// field, instead of serde's derived decoders: it is faster, and it keeps the browser package small (a
    /// third smaller than with serde). [`ServerMessage::decode_with_serde`] is the reference it is tested and
    /// fuzzed against.
    #[inline(never)]
    pub fn decode(text: &str, limit: usize) -> Result<Self, DecodeError> {
        check_size(text, limit)?;
        let malformed = |e: crate::json::JsonError| DecodeError::Malformed(e.to_string());
        let kind = match leading_type(text) {
            Some(kind) => std::borrow::Cow::Borrowed(kind),
            None => std::borrow::Cow::Owned(crate::decode::frame_type(text).map_err(malformed)?),
        };
        crate::decode::server_message(text, &kind).map_err(malformed)
    }

    /// Decodes a server frame with serde's derived decoders: the reference that [`ServerMessage::decode`] is
    /// tested and fuzzed against. Not for use in clients (it is what makes the browser package large).
    #[doc(hidden)]
    pub fn decode_with_serde(text: &str, limit: usize) -> Result<Self, DecodeError> {
        check_size(text, limit)?;
        let kind = frame_type(text)?;
        Ok(match kind.as_ref() {
            "welcome" => variant!(text, ServerMessage::Welcome {
                protocol: u32,
                session_id: String,
                user_id: String,
                heartbeat_interval_ms: u64,
                session_ttl_ms: u64,
                max_frame_bytes: u64,
                server: ServerInfo,
                #[serde(default)]
                resume_grace_ms: u64,
                #[serde(default)]
                ping_interval_ms: Option<u64>,
                #[serde(default)]
                resumed: bool,
                #[serde(default)]
                choice: Option<Choice>,
                #[serde(default)]
                features: Vec<String>,
            }),
            "choice" => variant!(text, ServerMessage::Choice { status: Choice }),
            "privacy" => ServerMessage::Privacy {
                privacy: from_json(text)?,
            },
            "channel_snapshot" => variant!(text, ServerMessage::ChannelSnapshot {
                channel: String,
                members: Vec<Presence>,
                #[serde(default)]
                more: bool,
            }),
            "channel_members" => variant!(text, ServerMessage::ChannelMembers {
                channel: String,
                #[serde(default)]
                joined: Vec<Presence>,
                #[serde(default)]
                left: Vec<String>,
            }),
            "snapshot" => variant!(text, ServerMessage::Snapshot { users: Vec<Presence> }),
            "presence" => variant!(text, ServerMessage::Presence { user: Presence }),
            "query_result" => variant!(text, ServerMessage::QueryResult {
                #[serde(rename = "ref")]
                reference: String,
                users: Vec<Presence>,
                #[serde(default)]
                more: bool,
            }),
            "pong" => variant!(text, ServerMessage::Pong {
                #[serde(rename = "ref", default)]
                reference: Option<String>,
                #[serde(default)]
                server_time_ms: Option<u64>,
            }),
            "error" => variant!(text, ServerMessage::Error {
                code: ErrorCode,
                message: String,
                #[serde(default)]
                fatal: bool,
                #[serde(rename = "ref", default)]
                reference: Option<String>,
                #[serde(default)]
                retry_after_ms: Option<u64>,
            }),
            "goaway" => variant!(text, ServerMessage::Goaway {
                reconnect_after_ms: u64,
                #[serde(default)]
                reason: Option<String>,
            }),
            _ => {
                from_json::<Kind>(text)?;
                ServerMessage::Unknown
            }
        })
    }

    /// Encodes the message as a JSON text frame.
    pub fn encode(&self) -> String {
        encode(self)
    }
}

/// Splits `records` into groups whose frames, made by `frame`, each fit in `limit` bytes (a record that does not
/// fit alone still gets a frame of its own). Always at least one group, possibly empty.
pub fn split_records(
    records: Vec<Presence>,
    limit: usize,
    frame: impl Fn(Vec<Presence>, bool) -> ServerMessage,
) -> Vec<String> {
    let overhead = frame(Vec::new(), true).encode().len() + 2;
    let budget = limit.saturating_sub(overhead);
    let mut groups: Vec<Vec<Presence>> = vec![Vec::new()];
    let mut size = 0;
    for record in records {
        let len = serde_json::to_string(&record).map_or(limit, |s| s.len()) + 1;
        let current = groups.last().map_or(0, Vec::len);
        if current > 0 && size + len > budget {
            groups.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(group) = groups.last_mut() {
            group.push(record);
        }
    }
    let last = groups.len() - 1;
    groups
        .into_iter()
        .enumerate()
        .map(|(i, group)| frame(group, i < last).encode())
        .collect()
}

fn encode<T: Serialize>(message: &T) -> String {
    // Serializing these types cannot fail: every map key is a string and no custom Serialize impl errors.
    serde_json::to_string(message).unwrap_or_else(|_| String::from("{\"type\":\"invalid\"}"))
}

/// The two URLs of the HTTP binding beside a WebSocket endpoint (protocol section 11.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpBindingUrls {
    /// `POST` here with the `hello` to open a connection and get its event stream.
    pub open: String,
    /// `POST` here every other client message of the connection.
    pub send: String,
}

/// The HTTP binding's URLs for the WebSocket URL `websocket_url`: scheme `https` for `wss` (`http` for `ws`),
/// same host and port, the path's last segment `ws` replaced by `sse` (or `/sse` appended when it is not `ws`),
/// the query kept. `None` when the URL is not `ws://` or `wss://`.
pub fn http_binding_urls(websocket_url: &str) -> Option<HttpBindingUrls> {
    let (scheme, rest) = if let Some(rest) = websocket_url.strip_prefix("wss://") {
        ("https://", rest)
    } else if let Some(rest) = websocket_url.strip_prefix("ws://") {
        ("http://", rest)
    } else {
        return None;
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, format!("?{query}")),
        None => (rest, String::new()),
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return None;
    }
    let path = path.trim_end_matches('/');
    let base = match path.strip_suffix("/ws") {
        Some(parent) => format!("{parent}/sse"),
        None => format!("{path}/sse"),
    };
    Some(HttpBindingUrls {
        open: format!("{scheme}{authority}{base}{query}"),
        send: format!("{scheme}{authority}{base}/send{query}"),
    })
}

/// Why a value breaks the protocol's rules (section 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationError {
    /// A user id that is empty, too long or holds control characters.
    InvalidUserId {
        /// The offending id, shortened for display.
        user_id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// `Offline` was given as a status to set.
    OfflineNotSettable,
    /// The custom message is too long, in code points.
    MessageTooLong {
        /// Its length in code points.
        chars: usize,
    },
    /// The custom message holds control characters.
    MessageHasControlCharacters,
    /// The activity kind is empty, too long or not `[a-z0-9_]`.
    InvalidActivityKind(String),
    /// The activity detail is too long or holds control characters.
    InvalidActivityDetail(&'static str),
    /// More users in one request than allowed.
    TooManyUsers {
        /// How many were listed.
        count: usize,
    },
    /// The watch list would exceed the per-session limit.
    TooManySubscriptions {
        /// How many users would be watched.
        count: usize,
    },
    /// A client info field is too long.
    ClientInfoTooLong(&'static str),
    /// A focus context that is empty, too long or holds control characters.
    InvalidFocus(String),
    /// A time too far in the future (or beyond 2^53 − 1).
    TimeOutOfRange(&'static str),
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValidationError::InvalidUserId { user_id, reason } => {
                write!(f, "invalid user id {}: {reason}", Quoted(user_id))
            }
            ValidationError::OfflineNotSettable => write!(
                f,
                "availability \"offline\" cannot be set: it follows from having no session"
            ),
            ValidationError::MessageTooLong { chars } => write!(
                f,
                "message is {chars} characters long; the limit is {MAX_MESSAGE_CHARS} characters (Unicode code points)"
            ),
            ValidationError::MessageHasControlCharacters => {
                write!(f, "message holds control characters")
            }
            ValidationError::InvalidActivityKind(kind) => write!(
                f,
                "activity kind {} must be 1 to {MAX_ACTIVITY_KIND_BYTES} characters from [a-z0-9_]",
                Quoted(kind)
            ),
            ValidationError::InvalidActivityDetail(reason) => {
                write!(f, "activity detail {reason}")
            }
            ValidationError::TooManyUsers { count } => write!(
                f,
                "{count} users in one request; the limit is {MAX_USERS_PER_REQUEST}"
            ),
            ValidationError::TooManySubscriptions { count } => write!(
                f,
                "watching {count} users would exceed the limit of {MAX_SUBSCRIPTIONS_PER_SESSION} per session"
            ),
            ValidationError::TimeOutOfRange(field) => {
                write!(f, "{field} is too far in the future")
            }
            ValidationError::InvalidFocus(context) => write!(
                f,
                "focus context {} must be 1 to {MAX_FOCUS_BYTES} bytes without control characters",
                Quoted(context)
            ),
            ValidationError::ClientInfoTooLong(field) => {
                write!(
                    f,
                    "client {field} is longer than {MAX_CLIENT_INFO_BYTES} bytes"
                )
            }
        }
    }
}

impl std::error::Error for ValidationError {}

fn is_control(c: char) -> bool {
    c.is_control()
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Checks a user id against section 2: 1 to [`MAX_USER_ID_BYTES`] bytes, no control characters.
pub fn validate_user_id(user_id: &str) -> Result<(), ValidationError> {
    let reason = if user_id.is_empty() {
        "it is empty"
    } else if user_id.len() > MAX_USER_ID_BYTES {
        "it is longer than 128 bytes"
    } else if user_id.chars().any(is_control) {
        "it holds control characters"
    } else {
        return Ok(());
    };
    Err(ValidationError::InvalidUserId {
        user_id: shorten(user_id),
        reason,
    })
}

/// Checks a list of user ids for one request: at most [`MAX_USERS_PER_REQUEST`], each valid.
pub fn validate_user_list<S: AsRef<str>>(users: &[S]) -> Result<(), ValidationError> {
    if users.len() > MAX_USERS_PER_REQUEST {
        return Err(ValidationError::TooManyUsers { count: users.len() });
    }
    users.iter().try_for_each(|u| validate_user_id(u.as_ref()))
}

/// Checks a status to set against section 2 and section 7 (`set_status`).
pub fn validate_status(status: &Status) -> Result<(), ValidationError> {
    if status.availability == Availability::Offline {
        return Err(ValidationError::OfflineNotSettable);
    }
    if let Some(message) = &status.message {
        let chars = message.chars().count();
        if chars > MAX_MESSAGE_CHARS {
            return Err(ValidationError::MessageTooLong { chars });
        }
        if message.chars().any(is_control) {
            return Err(ValidationError::MessageHasControlCharacters);
        }
    }
    if let Some(activity) = &status.activity {
        let kind = &activity.kind;
        if kind.is_empty()
            || kind.len() > MAX_ACTIVITY_KIND_BYTES
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ValidationError::InvalidActivityKind(shorten(kind)));
        }
        if let Some(detail) = &activity.detail {
            if detail.chars().count() > MAX_ACTIVITY_DETAIL_CHARS {
                return Err(ValidationError::InvalidActivityDetail(
                    "is longer than 100 characters (Unicode code points)",
                ));
            }
            if detail.chars().any(is_control) {
                return Err(ValidationError::InvalidActivityDetail(
                    "holds control characters",
                ));
            }
        }
    }
    Ok(())
}

/// Checks a focus context: 1 to [`MAX_FOCUS_BYTES`] bytes, no control characters.
pub fn validate_focus(context: &str) -> Result<(), ValidationError> {
    if context.is_empty() || context.len() > MAX_FOCUS_BYTES || context.chars().any(is_control) {
        return Err(ValidationError::InvalidFocus(shorten(context)));
    }
    Ok(())
}

/// Checks the times a choice carries: within 2^53 − 1, `chosen_at` at most a day ahead of `now_ms` (clock skew)
/// and `message_expires_at` at most a year ahead. `now_ms` is the caller's wall clock in Unix milliseconds (this
/// crate reads no clock); without it only the 2^53 − 1 bound is checked.
pub fn validate_times(choice: &Choice, now_ms: Option<u64>) -> Result<(), ValidationError> {
    const MAX_WIRE_INTEGER: u64 = (1 << 53) - 1;
    const DAY_MS: u64 = 86_400_000;
    let too_late = |t: u64, ahead: u64| {
        t > MAX_WIRE_INTEGER || now_ms.is_some_and(|now| t > now.saturating_add(ahead))
    };
    if choice.chosen_at.is_some_and(|t| too_late(t, DAY_MS)) {
        return Err(ValidationError::TimeOutOfRange("chosen_at"));
    }
    if choice
        .status
        .message_expires_at
        .is_some_and(|t| too_late(t, 365 * DAY_MS))
    {
        return Err(ValidationError::TimeOutOfRange("message_expires_at"));
    }
    Ok(())
}

/// Checks client info: each field at most [`MAX_CLIENT_INFO_BYTES`] bytes.
pub fn validate_client_info(info: &ClientInfo) -> Result<(), ValidationError> {
    for (field, value) in [
        ("name", &info.name),
        ("version", &info.version),
        ("platform", &info.platform),
    ] {
        if value.len() > MAX_CLIENT_INFO_BYTES {
            return Err(ValidationError::ClientInfoTooLong(field));
        }
    }
    Ok(())
}

/// Normalises a status before it is stored or sent: an empty message or detail means none.
pub fn normalize_status(mut status: Status) -> Status {
    if status.message.as_deref() == Some("") {
        status.message = None;
    }
    if let Some(activity) = &mut status.activity
        && activity.detail.as_deref() == Some("")
    {
        activity.detail = None;
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str, availability: Availability, version: u64) -> Presence {
        Presence {
            availability,
            version,
            ..Presence::unknown(user)
        }
    }

    #[test]
    fn client_messages_round_trip() {
        let messages = vec![
            ClientMessage::Hello {
                protocol: 1,
                token: "t".into(),
                client: ClientInfo::new("n", "1", "linux"),
                status: Some(Choice {
                    status: Status::new(Availability::Busy)
                        .with_message("Mixing")
                        .with_activity(Activity::new("in_studio", "Ableton Live 12")),
                    chosen_at: Some(17),
                }),
                auto: Some(Auto {
                    state: AutoState::Dnd,
                    message: Some("quiet".into()),
                }),
                resume: Some(Resume {
                    session_id: "s".into(),
                    last_version: 9,
                }),
                focus: Some("conversation:1".into()),
            },
            ClientMessage::SetFocus {
                reference: None,
                context: None,
            },
            ClientMessage::SubscribeChannels {
                channels: vec!["studio".into()],
            },
            ClientMessage::UnsubscribeChannels {
                channels: vec!["studio".into()],
            },
            ClientMessage::SetPrivacy {
                reference: None,
                privacy: Privacy {
                    visibility: Visibility::Contacts,
                    hide_last_seen: true,
                },
            },
            ClientMessage::SetStatus {
                reference: Some("s1".into()),
                choice: Choice {
                    status: Status::new(Availability::Away),
                    chosen_at: None,
                },
                auto: None,
            },
            ClientMessage::SetStatus {
                reference: None,
                choice: Choice {
                    status: Status::new(Availability::Busy).with_message("Mixing"),
                    chosen_at: Some(1_763_794_790_000),
                },
                auto: Some(Auto {
                    state: AutoState::Active,
                    message: None,
                }),
            },
            ClientMessage::SetAuto {
                reference: None,
                auto: Auto {
                    state: AutoState::Idle,
                    message: None,
                },
            },
            ClientMessage::Subscribe {
                users: vec!["bob".into()],
            },
            ClientMessage::Unsubscribe {
                users: vec!["bob".into()],
            },
            ClientMessage::Query {
                reference: "q".into(),
                users: vec!["a".into(), "b".into()],
            },
            ClientMessage::Ping { reference: None },
            ClientMessage::Bye { reason: None },
        ];
        for m in messages {
            let text = m.encode();
            assert_eq!(
                ClientMessage::decode(&text, MAX_FRAME_BYTES),
                Ok(m),
                "{text}"
            );
        }
    }

    #[test]
    fn server_messages_round_trip() {
        let messages = vec![
            ServerMessage::Welcome {
                protocol: 1,
                session_id: "s".into(),
                user_id: "alice".into(),
                heartbeat_interval_ms: 15_000,
                session_ttl_ms: 45_000,
                max_frame_bytes: 65_536,
                server: ServerInfo {
                    name: "x".into(),
                    version: "1".into(),
                },
                resume_grace_ms: 30_000,
                ping_interval_ms: Some(15_000),
                resumed: true,
                choice: Some(Choice {
                    status: Status::new(Availability::Busy),
                    chosen_at: Some(5),
                }),
                features: vec![FEATURE_SET_STATUS_AUTO.into(), "something_later".into()],
            },
            ServerMessage::Choice {
                status: Choice {
                    status: Status::new(Availability::Online),
                    chosen_at: Some(6),
                },
            },
            ServerMessage::Snapshot {
                users: vec![record("bob", Availability::Online, 3)],
            },
            ServerMessage::ChannelSnapshot {
                channel: "studio".into(),
                members: vec![record("bob", Availability::Online, 3)],
                more: false,
            },
            ServerMessage::ChannelMembers {
                channel: "studio".into(),
                joined: vec![record("dave", Availability::Busy, 4)],
                left: vec!["carol".into()],
            },
            ServerMessage::Presence {
                user: record("bob", Availability::Busy, 4),
            },
            ServerMessage::QueryResult {
                reference: "q".into(),
                users: vec![Presence::unknown("dave")],
                more: true,
            },
            ServerMessage::Pong {
                reference: Some("p".into()),
                server_time_ms: Some(5),
            },
            ServerMessage::Error {
                code: ErrorCode::InvalidToken,
                message: "no".into(),
                fatal: true,
                reference: None,
                retry_after_ms: None,
            },
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                fatal: false,
                reference: None,
                retry_after_ms: Some(200),
            },
            ServerMessage::Goaway {
                reconnect_after_ms: 1000,
                reason: Some("bye".into()),
            },
        ];
        for m in messages {
            let text = m.encode();
            assert_eq!(
                ServerMessage::decode(&text, MAX_FRAME_BYTES),
                Ok(m),
                "{text}"
            );
        }
    }

    #[test]
    fn wire_shapes_match_the_spec() {
        let set = ClientMessage::SetStatus {
            reference: None,
            choice: Choice {
                status: Status::new(Availability::Busy).with_message("m"),
                chosen_at: None,
            },
            auto: None,
        };
        assert_eq!(
            set.encode(),
            r#"{"type":"set_status","availability":"busy","message":"m"}"#
        );
        let together = ClientMessage::SetStatus {
            reference: None,
            choice: Choice {
                status: Status::new(Availability::Away),
                chosen_at: None,
            },
            auto: Some(Auto::default()),
        };
        assert_eq!(
            together.encode(),
            r#"{"type":"set_status","availability":"away","auto":{"state":"active"}}"#
        );
        // A server without the feature reads the same frame as a plain choice (unknown fields are ignored).
        let ClientMessage::SetStatus { choice, .. } =
            ClientMessage::decode(&together.encode(), 65_536).expect("decodes")
        else {
            panic!("not a set_status");
        };
        assert_eq!(choice.status, Status::new(Availability::Away));
        let presence = ServerMessage::Presence {
            user: Presence::unknown("dave"),
        };
        assert_eq!(
            presence.encode(),
            r#"{"type":"presence","user":{"user_id":"dave","availability":"offline","message":null,"activity":null,"last_active_at":null,"since":null,"version":0}}"#
        );
    }

    #[test]
    fn the_type_is_read_the_same_way_wherever_it_stands() {
        let presence =
            r#"{"user":{"user_id":"b","availability":"busy","version":7},"type":"presence"}"#;
        let fast =
            r#"{"type":"presence","user":{"user_id":"b","availability":"busy","version":7}}"#;
        let spaced = "{ \"type\" : \"presence\" ,\"user\":{\"user_id\":\"b\",\"availability\":\"busy\",\"version\":7}}";
        let escaped =
            r#"{"type":"pres\u0065nce","user":{"user_id":"b","availability":"busy","version":7}}"#;
        let expected = ServerMessage::Presence {
            user: record("b", Availability::Busy, 7),
        };
        for text in [presence, fast, spaced, escaped] {
            assert_eq!(
                ServerMessage::decode(text, MAX_FRAME_BYTES),
                Ok(expected.clone()),
                "{text}"
            );
        }
        // A second `type` is an error whichever pass reads the frame.
        for text in [
            r#"{"type":"presence","type":"welcome","user":{"user_id":"b","availability":"busy","version":7}}"#,
            r#"{"type":"telemetry","type":"other"}"#,
        ] {
            assert!(
                ServerMessage::decode(text, MAX_FRAME_BYTES).is_err(),
                "{text}"
            );
        }
        // Broken JSON after a readable type is still broken.
        assert!(ServerMessage::decode(r#"{"type":"telemetry","#, MAX_FRAME_BYTES).is_err());
        assert!(ServerMessage::decode(r#"{"type":"presence","user":"#, MAX_FRAME_BYTES).is_err());
    }

    #[test]
    fn unknown_types_fields_and_values_are_tolerated() {
        assert_eq!(
            ServerMessage::decode(r#"{"type":"telemetry","x":1}"#, MAX_FRAME_BYTES),
            Ok(ServerMessage::Unknown)
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"future_thing"}"#, MAX_FRAME_BYTES),
            Ok(ClientMessage::Unknown)
        );
        let m = ServerMessage::decode(
            r#"{"type":"presence","extra":true,"user":{"user_id":"b","availability":"streaming","version":7,"new_field":[1]}}"#,
            MAX_FRAME_BYTES,
        )
        .unwrap();
        assert_eq!(
            m,
            ServerMessage::Presence {
                user: record("b", Availability::Online, 7)
            }
        );
        let e = ServerMessage::decode(
            r#"{"type":"error","code":"brand_new","message":"m"}"#,
            MAX_FRAME_BYTES,
        )
        .unwrap();
        assert_eq!(
            e,
            ServerMessage::Error {
                code: ErrorCode::Other("brand_new".into()),
                message: "m".into(),
                fatal: false,
                reference: None,
                retry_after_ms: None,
            }
        );
    }

    #[test]
    fn malformed_and_oversized_frames_are_errors() {
        assert!(matches!(
            ServerMessage::decode("not json", MAX_FRAME_BYTES),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            ServerMessage::decode(r#"{"no_type":1}"#, MAX_FRAME_BYTES),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            ServerMessage::decode(r#"{"type":"presence","user":5}"#, MAX_FRAME_BYTES),
            Err(DecodeError::Malformed(_))
        ));
        let big = format!(r#"{{"type":"pong","pad":"{}"}}"#, "x".repeat(100));
        assert_eq!(
            ServerMessage::decode(&big, 50),
            Err(DecodeError::TooLarge {
                size: big.len(),
                limit: 50
            })
        );
    }

    #[test]
    fn what_a_client_sets_is_read_strictly_and_records_leniently() {
        assert!(
            ClientMessage::decode(
                r#"{"type":"set_status","availability":"sparkling"}"#,
                MAX_FRAME_BYTES
            )
            .is_err()
        );
        let record = ServerMessage::decode(
            r#"{"type":"presence","user":{"user_id":"b","availability":"sparkling","version":1}}"#,
            MAX_FRAME_BYTES,
        );
        assert!(
            matches!(record, Ok(ServerMessage::Presence { user }) if user.availability == Availability::Online)
        );
    }

    #[test]
    fn large_snapshots_are_split_to_fit_the_frame_limit() {
        let records: Vec<Presence> = (0..1_000)
            .map(|i| Presence {
                message: Some("m".repeat(200)),
                ..Presence::unknown(format!("user-{i:04}-{}", "x".repeat(100)))
            })
            .collect();
        let frames = split_records(records, MAX_FRAME_BYTES, |users, _| {
            ServerMessage::Snapshot { users }
        });
        assert!(frames.len() > 5);
        let mut total = 0;
        for f in &frames {
            assert!(f.len() <= MAX_FRAME_BYTES, "{}", f.len());
            match ServerMessage::decode(f, MAX_FRAME_BYTES) {
                Ok(ServerMessage::Snapshot { users }) => total += users.len(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(total, 1_000);
        let parts = split_records(vec![], MAX_FRAME_BYTES, |users, more| {
            ServerMessage::QueryResult {
                reference: "q".into(),
                users,
                more,
            }
        });
        assert_eq!(parts, [r#"{"type":"query_result","ref":"q","users":[]}"#]);
    }

    #[test]
    fn validation_rules() {
        assert!(validate_user_id("alice").is_ok());
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id(&"a".repeat(129)).is_err());
        assert!(validate_user_id("a\nb").is_err());
        assert!(validate_user_list(&vec!["u"; 1_001]).is_err());

        let ok = Status::new(Availability::Busy)
            .with_message("é".repeat(200))
            .with_activity(Activity::new("in_studio", "Ableton Live 12"));
        assert_eq!(validate_status(&ok), Ok(()));
        let long = Status::new(Availability::Busy).with_message("é".repeat(201));
        assert_eq!(
            validate_status(&long),
            Err(ValidationError::MessageTooLong { chars: 201 })
        );
        assert_eq!(
            validate_status(&Status::new(Availability::Offline)),
            Err(ValidationError::OfflineNotSettable)
        );
        let bad_kind =
            Status::new(Availability::Online).with_activity(Activity::new("In Studio", ""));
        assert!(validate_status(&bad_kind).is_err());
        let ctrl = Status::new(Availability::Online).with_message("a\u{0007}");
        assert_eq!(
            validate_status(&ctrl),
            Err(ValidationError::MessageHasControlCharacters)
        );
        assert!(
            ValidationError::MessageTooLong { chars: 201 }
                .to_string()
                .contains("200 characters")
        );
    }

    #[test]
    fn times_are_bounded_against_the_callers_clock() {
        let now = 1_800_000_000_000;
        let choice = |chosen_at, expires| Choice {
            status: Status {
                message_expires_at: expires,
                ..Status::new(Availability::Busy).with_message("m")
            },
            chosen_at,
        };
        assert!(validate_times(&choice(Some(now + 3_600_000), None), Some(now)).is_ok());
        assert!(validate_times(&choice(Some(now + 2 * 86_400_000), None), Some(now)).is_err());
        assert!(validate_times(&choice(None, Some(now + 400 * 86_400_000)), Some(now)).is_err());
        // Without a wall clock only the wire bound applies.
        assert!(validate_times(&choice(Some(now + 2 * 86_400_000), None), None).is_ok());
        assert!(validate_times(&choice(Some(1 << 53), None), None).is_err());
    }

    #[test]
    fn http_binding_urls_sit_beside_the_websocket_endpoint() {
        let urls = http_binding_urls("wss://presence.example.com/v1/ws").unwrap();
        assert_eq!(urls.open, "https://presence.example.com/v1/sse");
        assert_eq!(urls.send, "https://presence.example.com/v1/sse/send");
        let urls = http_binding_urls("ws://127.0.0.1:7000/presence/?tenant=a#x").unwrap();
        assert_eq!(urls.open, "http://127.0.0.1:7000/presence/sse?tenant=a");
        assert_eq!(
            urls.send,
            "http://127.0.0.1:7000/presence/sse/send?tenant=a"
        );
        assert_eq!(
            http_binding_urls("ws://host").unwrap().open,
            "http://host/sse"
        );
        assert_eq!(http_binding_urls("https://host/v1/ws"), None);
        assert_eq!(http_binding_urls("ws:///v1/ws"), None);
    }

    #[test]
    fn empty_message_means_none() {
        let s = normalize_status(Status::new(Availability::Online).with_message(""));
        assert_eq!(s.message, None);
    }
}
