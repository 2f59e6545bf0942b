//! Server frames read with the `json` pull reader: what [`ServerMessage::decode`] runs on every
//! platform. It follows the serde definitions in [`protocol`](crate::protocol) field for field (names, which
//! fields may be absent, `null` for optional ones, strict and lenient enumerations, unknown fields skipped,
//! duplicate fields refused); `ServerMessage::decode_with_serde` is the reference it is tested and fuzzed
//! against.

use crate::json::{Field, JsonError, Reader, nullable};
use crate::protocol::{
    Activity, Availability, Choice, ErrorCode, Presence, Privacy, ServerInfo, ServerMessage,
    Status, Visibility,
};

type Result<T> = std::result::Result<T, JsonError>;

/// Decodes the server frame `text` whose `type` is `kind` (size and `type` already checked by the caller).
pub(crate) fn server_message(text: &str, kind: &str) -> Result<ServerMessage> {
    let mut r = Reader::new(text);
    let message = match kind {
        "welcome" => welcome(&mut r)?,
        "choice" => {
            let mut status = Field::new("status");
            body(&mut r, |r, key| match key {
                "status" => status.read(r, choice),
                _ => Ok(false),
            })?;
            ServerMessage::Choice {
                status: status.required(&r)?,
            }
        }
        "privacy" => ServerMessage::Privacy {
            privacy: privacy(&mut r)?,
        },
        "channel_snapshot" => {
            let (mut channel, mut members, mut more) = (
                Field::new("channel"),
                Field::new("members"),
                Field::new("more"),
            );
            body(&mut r, |r, key| match key {
                "channel" => channel.read(r, Reader::string),
                "members" => members.read(r, presences),
                "more" => more.read(r, Reader::bool),
                _ => Ok(false),
            })?;
            ServerMessage::ChannelSnapshot {
                channel: channel.required(&r)?,
                members: members.required(&r)?,
                more: more.or_default(),
            }
        }
        "channel_members" => {
            let (mut channel, mut joined, mut left) = (
                Field::new("channel"),
                Field::new("joined"),
                Field::new("left"),
            );
            body(&mut r, |r, key| match key {
                "channel" => channel.read(r, Reader::string),
                "joined" => joined.read(r, presences),
                "left" => left.read(r, strings),
                _ => Ok(false),
            })?;
            ServerMessage::ChannelMembers {
                channel: channel.required(&r)?,
                joined: joined.or_default(),
                left: left.or_default(),
            }
        }
        "snapshot" => {
            let mut users = Field::new("users");
            body(&mut r, |r, key| match key {
                "users" => users.read(r, presences),
                _ => Ok(false),
            })?;
            ServerMessage::Snapshot {
                users: users.required(&r)?,
            }
        }
        "presence" => {
            let mut user = Field::new("user");
            body(&mut r, |r, key| match key {
                "user" => user.read(r, presence),
                _ => Ok(false),
            })?;
            ServerMessage::Presence {
                user: user.required(&r)?,
            }
        }
        "query_result" => {
            let (mut reference, mut users, mut more) =
                (Field::new("ref"), Field::new("users"), Field::new("more"));
            body(&mut r, |r, key| match key {
                "ref" => reference.read(r, Reader::string),
                "users" => users.read(r, presences),
                "more" => more.read(r, Reader::bool),
                _ => Ok(false),
            })?;
            ServerMessage::QueryResult {
                reference: reference.required(&r)?,
                users: users.required(&r)?,
                more: more.or_default(),
            }
        }
        "pong" => {
            let (mut reference, mut server_time_ms) =
                (Field::new("ref"), Field::new("server_time_ms"));
            body(&mut r, |r, key| match key {
                "ref" => reference.read(r, |r| nullable(r, Reader::string)),
                "server_time_ms" => server_time_ms.read(r, |r| nullable(r, Reader::u64)),
                _ => Ok(false),
            })?;
            ServerMessage::Pong {
                reference: reference.optional(),
                server_time_ms: server_time_ms.optional(),
            }
        }
        "error" => {
            let (mut code, mut message, mut fatal, mut reference, mut retry_after_ms) = (
                Field::new("code"),
                Field::new("message"),
                Field::new("fatal"),
                Field::new("ref"),
                Field::new("retry_after_ms"),
            );
            body(&mut r, |r, key| match key {
                "code" => code.read(r, |r| Ok(ErrorCode::from_wire(&r.str()?))),
                "message" => message.read(r, Reader::string),
                "fatal" => fatal.read(r, Reader::bool),
                "ref" => reference.read(r, |r| nullable(r, Reader::string)),
                "retry_after_ms" => retry_after_ms.read(r, |r| nullable(r, Reader::u64)),
                _ => Ok(false),
            })?;
            ServerMessage::Error {
                code: code.required(&r)?,
                message: message.required(&r)?,
                fatal: fatal.or_default(),
                reference: reference.optional(),
                retry_after_ms: retry_after_ms.optional(),
            }
        }
        "goaway" => {
            let (mut reconnect_after_ms, mut reason) =
                (Field::new("reconnect_after_ms"), Field::new("reason"));
            body(&mut r, |r, key| match key {
                "reconnect_after_ms" => reconnect_after_ms.read(r, Reader::u64),
                "reason" => reason.read(r, |r| nullable(r, Reader::string)),
                _ => Ok(false),
            })?;
            ServerMessage::Goaway {
                reconnect_after_ms: reconnect_after_ms.required(&r)?,
                reason: reason.optional(),
            }
        }
        // A type this version does not know: the frame must still be well-formed.
        _ => {
            frame_type(text)?;
            return Ok(ServerMessage::Unknown);
        }
    };
    r.finish()?;
    Ok(message)
}

/// The `type` of a frame, found by reading the whole object (the caller tries the common case, `type` first,
/// without it). A second `type` is an error.
pub(crate) fn frame_type(text: &str) -> Result<String> {
    let mut r = Reader::new(text);
    let mut kind = Field::new("type");
    r.object(|r, key| match key {
        "type" => kind.read(r, Reader::string),
        _ => Ok(false),
    })?;
    r.finish()?;
    kind.required(&r)
}

/// Reads a frame's object with `member` for the variant's fields; the `type` member (checked by the caller) is
/// skipped, a second one refused.
fn body<'a>(
    r: &mut Reader<'a>,
    mut member: impl FnMut(&mut Reader<'a>, &str) -> Result<bool>,
) -> Result<()> {
    let mut kind = Field::new("type");
    r.object(|r, key| match key {
        "type" => kind.read(r, Reader::skip),
        _ => member(r, key),
    })
}

fn welcome(r: &mut Reader<'_>) -> Result<ServerMessage> {
    let mut protocol = Field::new("protocol");
    let mut session_id = Field::new("session_id");
    let mut user_id = Field::new("user_id");
    let mut heartbeat_interval_ms = Field::new("heartbeat_interval_ms");
    let mut session_ttl_ms = Field::new("session_ttl_ms");
    let mut max_frame_bytes = Field::new("max_frame_bytes");
    let mut server = Field::new("server");
    let mut resume_grace_ms = Field::new("resume_grace_ms");
    let mut ping_interval_ms = Field::new("ping_interval_ms");
    let mut resumed = Field::new("resumed");
    let mut choice_field = Field::new("choice");
    let mut features = Field::new("features");
    body(r, |r, key| match key {
        "protocol" => protocol.read(r, Reader::u32),
        "session_id" => session_id.read(r, Reader::string),
        "user_id" => user_id.read(r, Reader::string),
        "heartbeat_interval_ms" => heartbeat_interval_ms.read(r, Reader::u64),
        "session_ttl_ms" => session_ttl_ms.read(r, Reader::u64),
        "max_frame_bytes" => max_frame_bytes.read(r, Reader::u64),
        "server" => server.read(r, server_info),
        "resume_grace_ms" => resume_grace_ms.read(r, Reader::u64),
        "ping_interval_ms" => ping_interval_ms.read(r, |r| nullable(r, Reader::u64)),
        "resumed" => resumed.read(r, Reader::bool),
        "choice" => choice_field.read(r, |r| nullable(r, choice)),
        "features" => features.read(r, strings),
        _ => Ok(false),
    })?;
    Ok(ServerMessage::Welcome {
        protocol: protocol.required(r)?,
        session_id: session_id.required(r)?,
        user_id: user_id.required(r)?,
        heartbeat_interval_ms: heartbeat_interval_ms.required(r)?,
        session_ttl_ms: session_ttl_ms.required(r)?,
        max_frame_bytes: max_frame_bytes.required(r)?,
        server: server.required(r)?,
        resume_grace_ms: resume_grace_ms.or_default(),
        ping_interval_ms: ping_interval_ms.optional(),
        resumed: resumed.or_default(),
        choice: choice_field.optional(),
        features: features.or_default(),
    })
}

fn strings(r: &mut Reader<'_>) -> Result<Vec<String>> {
    r.array(Reader::string)
}

fn presences(r: &mut Reader<'_>) -> Result<Vec<Presence>> {
    r.array(presence)
}

fn server_info(r: &mut Reader<'_>) -> Result<ServerInfo> {
    let (mut name, mut version) = (Field::new("name"), Field::new("version"));
    r.object(|r, key| match key {
        "name" => name.read(r, Reader::string),
        "version" => version.read(r, Reader::string),
        _ => Ok(false),
    })?;
    Ok(ServerInfo {
        name: name.required(r)?,
        version: version.required(r)?,
    })
}

fn activity(r: &mut Reader<'_>) -> Result<Activity> {
    let (mut kind, mut detail) = (Field::new("kind"), Field::new("detail"));
    r.object(|r, key| match key {
        "kind" => kind.read(r, Reader::string),
        "detail" => detail.read(r, |r| nullable(r, Reader::string)),
        _ => Ok(false),
    })?;
    Ok(Activity {
        kind: kind.required(r)?,
        detail: detail.optional(),
    })
}

/// A record's availability, read leniently: values a later protocol version may add show as online.
fn lenient_availability(r: &mut Reader<'_>) -> Result<Availability> {
    Ok(Availability::from_wire_lenient(&r.str()?))
}

/// A chosen availability, read strictly.
fn availability(r: &mut Reader<'_>) -> Result<Availability> {
    let name = r.str()?;
    Availability::from_wire(&name).ok_or_else(|| r.error("unknown availability"))
}

fn presence(r: &mut Reader<'_>) -> Result<Presence> {
    let mut user_id = Field::new("user_id");
    let mut availability = Field::new("availability");
    let mut message = Field::new("message");
    let mut activity_field = Field::new("activity");
    let mut last_active_at = Field::new("last_active_at");
    let mut since = Field::new("since");
    let mut version = Field::new("version");
    let mut focus = Field::new("focus");
    r.object(|r, key| match key {
        "user_id" => user_id.read(r, Reader::string),
        "availability" => availability.read(r, lenient_availability),
        "message" => message.read(r, |r| nullable(r, Reader::string)),
        "activity" => activity_field.read(r, |r| nullable(r, activity)),
        "last_active_at" => last_active_at.read(r, |r| nullable(r, Reader::u64)),
        "since" => since.read(r, |r| nullable(r, Reader::u64)),
        "version" => version.read(r, Reader::u64),
        "focus" => focus.read(r, strings),
        _ => Ok(false),
    })?;
    Ok(Presence {
        user_id: user_id.required(r)?,
        availability: availability.required(r)?,
        message: message.optional(),
        activity: activity_field.optional(),
        last_active_at: last_active_at.optional(),
        since: since.optional(),
        version: version.required(r)?,
        focus: focus.or_default(),
    })
}

/// A choice: the status fields and `chosen_at` in one flat object.
fn choice(r: &mut Reader<'_>) -> Result<Choice> {
    let mut availability_field = Field::new("availability");
    let mut message = Field::new("message");
    let mut activity_field = Field::new("activity");
    let mut message_expires_at = Field::new("message_expires_at");
    let mut chosen_at = Field::new("chosen_at");
    r.object(|r, key| match key {
        "availability" => availability_field.read(r, availability),
        "message" => message.read(r, |r| nullable(r, Reader::string)),
        "activity" => activity_field.read(r, |r| nullable(r, activity)),
        "message_expires_at" => message_expires_at.read(r, |r| nullable(r, Reader::u64)),
        "chosen_at" => chosen_at.read(r, |r| nullable(r, Reader::u64)),
        _ => Ok(false),
    })?;
    Ok(Choice {
        status: Status {
            availability: availability_field.required(r)?,
            message: message.optional(),
            activity: activity_field.optional(),
            message_expires_at: message_expires_at.optional(),
        },
        chosen_at: chosen_at.optional(),
    })
}

/// Privacy settings, read from the whole frame (its `type` is an unknown field to the record).
fn privacy(r: &mut Reader<'_>) -> Result<Privacy> {
    let (mut visibility, mut hide_last_seen) =
        (Field::new("visibility"), Field::new("hide_last_seen"));
    r.object(|r, key| match key {
        "visibility" => visibility.read(r, |r| {
            Ok(match r.str()?.as_ref() {
                "everyone" => Visibility::Everyone,
                "contacts" => Visibility::Contacts,
                "nobody" => Visibility::Nobody,
                _ => return Err(r.error("unknown visibility")),
            })
        }),
        "hide_last_seen" => hide_last_seen.read(r, Reader::bool),
        _ => Ok(false),
    })?;
    Ok(Privacy {
        visibility: visibility.or_default(),
        hide_last_seen: hide_last_seen.or_default(),
    })
}
