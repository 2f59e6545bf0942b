//! The hand-written wire code every client runs against the serde definitions it follows:
//!
//! - `ServerMessage::decode` (the pull reader) against `ServerMessage::decode_with_serde`: the same frames
//!   accepted, the same messages out, on generated messages, on hand-picked edge cases of JSON and of each record,
//!   and on random mutations of real frames;
//! - `ClientMessage::encode` (the `json_text` writer) against `ClientMessage::encode_with_serde`: the same bytes
//!   for generated messages of every type, and what it writes decodes back to the same message on the server.

use presently_core::protocol::{
    Activity, Auto, AutoState, Availability, Choice, ClientInfo, ClientMessage, DecodeError,
    ErrorCode, Presence, Privacy, Resume, ServerInfo, ServerMessage, Status, Visibility,
};
use proptest::prelude::*;

const LIMIT: usize = 1 << 20;

/// Both decoders on `text`: same verdict, same message.
///
/// One difference is by design: serde also takes a JSON array in place of a record (its fields by position),
/// which the protocol does not allow (every frame and record is an object) and the pull reader refuses.
fn assert_parity(text: &str) {
    let ours = ServerMessage::decode(text, LIMIT);
    let reference = ServerMessage::decode_with_serde(text, LIMIT);
    match (&ours, &reference) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "different messages from {text}"),
        (Err(_), Err(_)) => {}
        (Err(DecodeError::Malformed(why)), Ok(_)) if why.starts_with("expected an object") => {}
        _ => panic!(
            "decoders disagree on {text}:\n  pull reader: {ours:?}\n  serde:       {reference:?}"
        ),
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_:]{0,12}",
        any::<String>(),
        Just("quote \" backslash \\ slash / tab \t nul \u{0} bell \u{7} del \u{7f}".to_owned()),
        Just("emoji 🎛️ and 𝄞, astral".to_owned()),
    ]
}

fn activity() -> impl Strategy<Value = Activity> {
    (text(), proptest::option::of(text())).prop_map(|(kind, detail)| Activity { kind, detail })
}

fn availability() -> impl Strategy<Value = Availability> {
    prop_oneof![
        Just(Availability::Online),
        Just(Availability::Away),
        Just(Availability::Busy),
        Just(Availability::Offline),
        Just(Availability::Invisible),
    ]
}

fn presence() -> impl Strategy<Value = Presence> {
    (
        text(),
        availability(),
        proptest::option::of(text()),
        proptest::option::of(activity()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
        proptest::collection::vec(text(), 0..3),
    )
        .prop_map(
            |(user_id, availability, message, activity, last_active_at, since, version, focus)| {
                Presence {
                    user_id,
                    availability,
                    message,
                    activity,
                    last_active_at,
                    since,
                    version,
                    focus,
                }
            },
        )
}

fn choice() -> impl Strategy<Value = Choice> {
    (
        availability(),
        proptest::option::of(text()),
        proptest::option::of(activity()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(availability, message, activity, message_expires_at, chosen_at)| Choice {
                status: Status {
                    availability,
                    message,
                    activity,
                    message_expires_at,
                },
                chosen_at,
            },
        )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::SessionExpired),
        Just(ErrorCode::InvalidToken),
        "[a-z_]{1,12}".prop_map(|code| ErrorCode::from_wire(&code)),
    ]
}

fn message() -> impl Strategy<Value = ServerMessage> {
    let presences = || proptest::collection::vec(presence(), 0..3);
    prop_oneof![
        (
            (
                any::<u32>(),
                text(),
                text(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            ),
            (
                text(),
                text(),
                any::<u64>(),
                proptest::option::of(any::<u64>())
            ),
            (
                any::<bool>(),
                proptest::option::of(choice()),
                proptest::collection::vec(text(), 0..3)
            ),
        )
            .prop_map(
                |(
                    (protocol, session_id, user_id, heartbeat, ttl, max_frame),
                    (name, version, grace, ping),
                    (resumed, choice, features),
                )| ServerMessage::Welcome {
                    protocol,
                    session_id,
                    user_id,
                    heartbeat_interval_ms: heartbeat,
                    session_ttl_ms: ttl,
                    max_frame_bytes: max_frame,
                    server: ServerInfo { name, version },
                    resume_grace_ms: grace,
                    ping_interval_ms: ping,
                    resumed,
                    choice,
                    features,
                }
            ),
        choice().prop_map(|status| ServerMessage::Choice { status }),
        (
            prop_oneof![
                Just(Visibility::Everyone),
                Just(Visibility::Contacts),
                Just(Visibility::Nobody)
            ],
            any::<bool>()
        )
            .prop_map(|(visibility, hide_last_seen)| ServerMessage::Privacy {
                privacy: Privacy {
                    visibility,
                    hide_last_seen
                }
            }),
        (text(), presences(), any::<bool>()).prop_map(|(channel, members, more)| {
            ServerMessage::ChannelSnapshot {
                channel,
                members,
                more,
            }
        }),
        (text(), presences(), proptest::collection::vec(text(), 0..3)).prop_map(
            |(channel, joined, left)| ServerMessage::ChannelMembers {
                channel,
                joined,
                left
            }
        ),
        presences().prop_map(|users| ServerMessage::Snapshot { users }),
        presence().prop_map(|user| ServerMessage::Presence { user }),
        (text(), presences(), any::<bool>()).prop_map(|(reference, users, more)| {
            ServerMessage::QueryResult {
                reference,
                users,
                more,
            }
        }),
        (
            proptest::option::of(text()),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(reference, server_time_ms)| ServerMessage::Pong {
                reference,
                server_time_ms
            }),
        (
            error_code(),
            text(),
            any::<bool>(),
            proptest::option::of(text()),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(code, message, fatal, reference, retry_after_ms)| {
                ServerMessage::Error {
                    code,
                    message,
                    fatal,
                    reference,
                    retry_after_ms,
                }
            }),
        (any::<u64>(), proptest::option::of(text())).prop_map(|(reconnect_after_ms, reason)| {
            ServerMessage::Goaway {
                reconnect_after_ms,
                reason,
            }
        }),
    ]
}

/// Frames of every type as a server writes them, plus ones with optional parts spelled out.
const SEEDS: &[&str] = &[
    r#"{"type":"welcome","protocol":1,"session_id":"s1","user_id":"alice","heartbeat_interval_ms":15000,"session_ttl_ms":60000,"max_frame_bytes":65536,"server":{"name":"presently-server","version":"0.1.0"},"resume_grace_ms":30000,"ping_interval_ms":null,"resumed":false,"choice":{"availability":"busy","message":"mixing","activity":{"kind":"in_studio","detail":"Live 12"},"message_expires_at":5,"chosen_at":7},"features":["set_status_auto"]}"#,
    r#"{"type":"choice","status":{"availability":"away","message":null,"chosen_at":1700000000000}}"#,
    r#"{"type":"privacy","visibility":"contacts","hide_last_seen":true}"#,
    r#"{"type":"channel_snapshot","channel":"room:1","members":[{"user_id":"bob","availability":"online","version":3,"focus":["c:1"]}],"more":true}"#,
    r#"{"type":"channel_members","channel":"room:1","joined":[],"left":["carol"]}"#,
    r#"{"type":"snapshot","users":[{"user_id":"bob","availability":"away","message":"lunch","activity":null,"last_active_at":1,"since":2,"version":4}]}"#,
    r#"{"type":"presence","user":{"user_id":"bob","availability":"holographic","version":18446744073709551615}}"#,
    r#"{"type":"query_result","ref":"q1","users":[],"more":false}"#,
    r#"{"type":"pong","ref":"p1","server_time_ms":12}"#,
    r#"{"type":"error","code":"rate_limited","message":"slow down","fatal":false,"ref":"r1","retry_after_ms":250}"#,
    r#"{"type":"goaway","reconnect_after_ms":100,"reason":"draining"}"#,
    r#"{"type":"from_the_future","anything":[1,{"a":null}]}"#,
];

/// Hand-picked edge cases: JSON grammar, escapes, numbers, duplicates, nulls, field types, unknown fields.
const EDGES: &[&str] = &[
    "",
    " ",
    "null",
    "[]",
    "{}",
    r#"{"type":1}"#,
    r#"{"type":null}"#,
    r#"{"type":"pong"} "#,
    r#"{"type":"pong"}x"#,
    r#"{"type":"pong"}{}"#,
    r#" { "type" : "pong" , "ref" : "a" } "#,
    "{\n\t\"type\":\"pong\"\r}",
    "{\u{b}\"type\":\"pong\"}",
    r#"{"ref":"a","type":"pong"}"#,
    r#"{"type":"pong","type":"pong"}"#,
    r#"{"type":"pong","ref":"a","ref":"b"}"#,
    r#"{"type":"pong","ref":null,"ref":"b"}"#,
    r#"{"type":"pong","x":1,"x":2}"#,
    r#"{"t\u0079pe":"pong"}"#,
    r#"{"type":"p\u006fng"}"#,
    r#"{"type":"pong","ref":"\ud83c\udfb9"}"#,
    r#"{"type":"pong","ref":"\ud83c"}"#,
    r#"{"type":"pong","ref":"\udfb9"}"#,
    r#"{"type":"pong","ref":"\ud83c\u0041"}"#,
    r#"{"type":"pong","ref":"\ud83c\n"}"#,
    r#"{"type":"pong","x":"\ud83c"}"#,
    r#"{"type":"pong","x":"\ud83c\n"}"#,
    r#"{"type":"pong","\ud83c":1}"#,
    r#"{"type":"pong","ref":"\x"}"#,
    r#"{"type":"pong","ref":"\u12"}"#,
    r#"{"type":"pong","ref":"\u00e9\/\b\f\n\r\t\"\\"}"#,
    "{\"type\":\"pong\",\"ref\":\"tab\there\"}",
    "{\"type\":\"pong\",\"x\":\"nul\u{0}\"}",
    "{\"type\":\"pong\",\"ref\":\"del\u{7f}\"}",
    r#"{"type":"pong","ref":"unterminated}"#,
    r#"{"type":"pong","server_time_ms":0}"#,
    r#"{"type":"pong","server_time_ms":-0}"#,
    r#"{"type":"pong","server_time_ms":-1}"#,
    r#"{"type":"pong","server_time_ms":01}"#,
    r#"{"type":"pong","server_time_ms":1.0}"#,
    r#"{"type":"pong","server_time_ms":1e3}"#,
    r#"{"type":"pong","server_time_ms":18446744073709551615}"#,
    r#"{"type":"pong","server_time_ms":18446744073709551616}"#,
    r#"{"type":"pong","server_time_ms":"5"}"#,
    r#"{"type":"pong","server_time_ms":true}"#,
    r#"{"type":"pong","x":-0.5e-7}"#,
    r#"{"type":"pong","x":1.}"#,
    r#"{"type":"pong","x":.5}"#,
    r#"{"type":"pong","x":1e}"#,
    r#"{"type":"pong","x":-}"#,
    r#"{"type":"pong","x":01}"#,
    r#"{"type":"pong","x":1E+2}"#,
    r#"{"type":"pong","x":tru}"#,
    r#"{"type":"pong","x":nul}"#,
    r#"{"type":"pong","x":[1,2,]}"#,
    r#"{"type":"pong","x":[1 2]}"#,
    r#"{"type":"pong","x":{"a":1,}}"#,
    r#"{"type":"pong","x":{"a" 1}}"#,
    r#"{"type":"pong","x":{1:1}}"#,
    r#"{"type":"pong",}"#,
    r#"{"type":"pong""ref":"a"}"#,
    r#"{"type":"welcome","protocol":4294967296,"session_id":"s","user_id":"u","heartbeat_interval_ms":1,"session_ttl_ms":1,"max_frame_bytes":1,"server":{"name":"n","version":"v"}}"#,
    r#"{"type":"welcome","protocol":1,"session_id":"s","user_id":"u","heartbeat_interval_ms":1,"session_ttl_ms":1,"max_frame_bytes":1,"server":{"name":"n"}}"#,
    r#"{"type":"welcome","protocol":1,"session_id":"s","user_id":"u","heartbeat_interval_ms":1,"session_ttl_ms":1,"max_frame_bytes":1,"server":{"name":"n","version":"v"},"resumed":null}"#,
    r#"{"type":"welcome","protocol":1,"session_id":"s","user_id":"u","heartbeat_interval_ms":1,"session_ttl_ms":1,"max_frame_bytes":1,"server":{"name":"n","version":"v"},"features":null}"#,
    r#"{"type":"welcome","protocol":1,"session_id":"s","user_id":"u","heartbeat_interval_ms":1,"session_ttl_ms":1,"max_frame_bytes":1,"server":{"name":"n","version":"v"},"choice":{"availability":"online","message":"m","message":"n"}}"#,
    r#"{"type":"choice","status":{"availability":"sleeping"}}"#,
    r#"{"type":"choice","status":{"availability":"online","activity":{"detail":"x"}}}"#,
    r#"{"type":"choice","status":null}"#,
    r#"{"type":"choice"}"#,
    r#"{"type":"privacy","visibility":"friends"}"#,
    r#"{"type":"privacy","visibility":null}"#,
    r#"{"type":"privacy"}"#,
    r#"{"type":"privacy","type":"privacy"}"#,
    r#"{"visibility":"nobody","type":"privacy"}"#,
    r#"{"type":"presence","user":{"user_id":"b","availability":"online"}}"#,
    r#"{"type":"presence","user":{"user_id":"b","availability":null,"version":1}}"#,
    r#"{"type":"presence","user":{"user_id":"b","availability":"online","version":1,"focus":null}}"#,
    r#"{"type":"presence","user":{"user_id":"b","availability":"online","version":1,"focus":[1]}}"#,
    r#"{"type":"presence","user":{"user_id":"b","availability":"online","version":1,"activity":{"kind":"k","detail":null}}}"#,
    r#"{"type":"snapshot","users":{}}"#,
    r#"{"type":"snapshot","users":null}"#,
    r#"{"type":"channel_members","channel":"c","joined":null}"#,
    r#"{"type":"query_result","users":[]}"#,
    r#"{"type":"error","code":5,"message":"m"}"#,
    r#"{"type":"error","code":"brand_new","message":"m"}"#,
    r#"{"type":"error","code":"session_expired","message":"m","fatal":true}"#,
    r#"{"type":"goaway"}"#,
    r#"{"type":"goaway","reconnect_after_ms":1,"reason":null}"#,
    r#"{"type":"from_the_future","x":[}"#,
    r#"{"type":"from_the_future","x":"\u"}"#,
    r#"{"type":"from_the_future"}   trailing"#,
    r#"{"type":"from_the_future","type":"again"}"#,
    r#"{"x":{"type":"pong"}}"#,
    r#"{"x":1,"type":"goaway","reconnect_after_ms":3}"#,
    r#"{"x":1,"type":"goaway","reconnect_after_ms":3,"type":"goaway"}"#,
    r#"{"x":1,"type":"goaway","reconnect_after_ms":3,"type":7}"#,
];

#[test]
fn seeds_and_edges_decode_the_same_with_both_decoders() {
    for text in SEEDS.iter().chain(EDGES) {
        assert_parity(text);
    }
    for seed in SEEDS {
        assert!(
            ServerMessage::decode(seed, LIMIT).is_ok(),
            "{seed} does not decode"
        );
    }
}

#[test]
fn records_must_be_objects_even_where_serde_takes_arrays() {
    for text in [
        r#"["pong"]"#,
        r#"["x:y"]"#,
        r#"{"type":"welcome","protocol":1,"session_id":"s","user_id":"u","heartbeat_interval_ms":1,"session_ttl_ms":1,"max_frame_bytes":1,"server":["n","v"]}"#,
        r#"{"type":"presence","user":["bob","online",null,null,null,null,3]}"#,
    ] {
        assert!(
            ServerMessage::decode_with_serde(text, LIMIT).is_ok(),
            "serde takes {text}"
        );
        assert!(
            matches!(ServerMessage::decode(text, LIMIT), Err(DecodeError::Malformed(why)) if why.starts_with("expected an object")),
            "{text}"
        );
    }
}

#[test]
fn deep_unknown_fields_are_skipped_without_recursion() {
    let depth = 200_000;
    let frame = format!(
        r#"{{"type":"pong","x":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(
        ServerMessage::decode(&frame, usize::MAX),
        Ok(ServerMessage::Pong {
            reference: None,
            server_time_ms: None
        })
    );
    let unclosed = format!(r#"{{"type":"pong","x":{}"#, "[{\"a\":".repeat(depth));
    assert!(ServerMessage::decode(&unclosed, usize::MAX).is_err());
}

#[test]
fn oversized_frames_are_refused_before_reading() {
    let frame = SEEDS[0];
    assert!(ServerMessage::decode(frame, frame.len()).is_ok());
    assert!(matches!(
        ServerMessage::decode(frame, frame.len() - 1),
        Err(presently_core::protocol::DecodeError::TooLarge { .. })
    ));
}

/// Bytes that change what JSON means when dropped in.
const MUTATIONS: &[u8] = b"{}[]\":,\\ 0-1.eEnulltrfa\t\n\x01";

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn encoded_messages_decode_the_same_with_both_decoders(message in message()) {
        let text = message.encode();
        prop_assert_eq!(ServerMessage::decode(&text, LIMIT), Ok(message.clone()));
        assert_parity(&text);
        // Spelled with whitespace, and with the `type` member last (the general path of the first pass).
        let spaced = text.replace(",\"", " ,\n\t\"").replace(":", " : ");
        assert_parity(&spaced);
        if let Some(body) = text.strip_prefix('{').and_then(|t| t.split_once(',')) {
            let (kind, rest) = body;
            let moved = format!("{{{},{kind}}}", rest.strip_suffix('}').unwrap_or(rest));
            assert_parity(&moved);
        }
    }

    #[test]
    fn mutated_frames_get_the_same_verdict_from_both_decoders(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..3u8, any::<prop::sample::Index>()), 1..4),
    ) {
        let mut bytes = SEEDS[seed].as_bytes().to_vec();
        for (at, action, with) in edits {
            let i = at.index(bytes.len() + 1);
            let byte = MUTATIONS[with.index(MUTATIONS.len())];
            match action {
                0 if i < bytes.len() => { bytes.remove(i); }
                1 if i < bytes.len() => bytes[i] = byte,
                _ => bytes.insert(i, byte),
            }
        }
        if let Ok(text) = String::from_utf8(bytes) {
            assert_parity(&text);
        }
    }
}

fn auto() -> impl Strategy<Value = Auto> {
    (
        prop_oneof![
            Just(AutoState::Active),
            Just(AutoState::Idle),
            Just(AutoState::Background),
            Just(AutoState::Dnd),
        ],
        proptest::option::of(text()),
    )
        .prop_map(|(state, message)| Auto { state, message })
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    let names = || proptest::collection::vec(text(), 0..4);
    let reference = || proptest::option::of(text());
    prop_oneof![
        (
            any::<u32>(),
            text(),
            (text(), text(), text()),
            proptest::option::of(choice()),
            proptest::option::of(auto()),
            proptest::option::of((text(), any::<u64>())),
            proptest::option::of(text()),
        )
            .prop_map(
                |(protocol, token, (name, version, platform), status, auto, resume, focus)| {
                    ClientMessage::Hello {
                        protocol,
                        token,
                        client: ClientInfo {
                            name,
                            version,
                            platform,
                        },
                        status,
                        auto,
                        resume: resume.map(|(session_id, last_version)| Resume {
                            session_id,
                            last_version,
                        }),
                        focus,
                    }
                }
            ),
        (reference(), choice(), proptest::option::of(auto())).prop_map(
            |(reference, choice, auto)| ClientMessage::SetStatus {
                reference,
                choice,
                auto
            }
        ),
        (reference(), auto())
            .prop_map(|(reference, auto)| ClientMessage::SetAuto { reference, auto }),
        (reference(), proptest::option::of(text()))
            .prop_map(|(reference, context)| ClientMessage::SetFocus { reference, context }),
        (
            reference(),
            prop_oneof![
                Just(Visibility::Everyone),
                Just(Visibility::Contacts),
                Just(Visibility::Nobody)
            ],
            any::<bool>(),
        )
            .prop_map(|(reference, visibility, hide_last_seen)| {
                ClientMessage::SetPrivacy {
                    reference,
                    privacy: Privacy {
                        visibility,
                        hide_last_seen,
                    },
                }
            }),
        names().prop_map(|users| ClientMessage::Subscribe { users }),
        names().prop_map(|users| ClientMessage::Unsubscribe { users }),
        names().prop_map(|channels| ClientMessage::SubscribeChannels { channels }),
        names().prop_map(|channels| ClientMessage::UnsubscribeChannels { channels }),
        (text(), names()).prop_map(|(reference, users)| ClientMessage::Query { reference, users }),
        reference().prop_map(|reference| ClientMessage::Ping { reference }),
        proptest::option::of(text()).prop_map(|reason| ClientMessage::Bye { reason }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn client_frames_are_written_byte_for_byte_as_serde_writes_them(message in client_message()) {
        let text = message.encode();
        prop_assert_eq!(&text, &message.encode_with_serde());
        // The server reads it back as the same message (`type` first, so the fast path reads the kind).
        prop_assert_eq!(ClientMessage::decode(&text, LIMIT), Ok(message));
    }
}

#[test]
fn an_unknown_client_message_encodes_as_an_invalid_frame_both_ways() {
    assert_eq!(ClientMessage::Unknown.encode(), r#"{"type":"invalid"}"#);
    assert_eq!(
        ClientMessage::Unknown.encode_with_serde(),
        r#"{"type":"invalid"}"#
    );
}
