//! The checks behind Presently's fuzz targets. `cargo fuzz` runs them (fuzz_targets/), and the regression tests
//! replay every saved input through them on the stable toolchain (tests/regressions.rs). Each check panics on a
//! defect and returns quietly on anything else, whatever the bytes.

use presently_core::chrono::{DateTime, Utc};
use presently_core::dnd::{DndSchedule, DndWindow};
use presently_core::protocol::{self, ClientMessage, MAX_FRAME_BYTES, ServerMessage};
use presently_core::sse::{SseItem, SseParser};
use presently_core::{Client, ClientConfig, ConnectionState, Instant};

/// The names of the targets, which are also the folders of their seeds and regressions.
pub const TARGETS: [&str; 4] = ["client_frame", "server_frame", "sse_stream", "dnd_schedule"];

/// Runs the check of target `name` on `data`.
pub fn check(name: &str, data: &[u8]) {
    match name {
        "client_frame" => client_frame(data),
        "server_frame" => server_frame(data),
        "sse_stream" => sse_stream(data),
        "dnd_schedule" => dnd_schedule(data),
        other => panic!("no fuzz target named {other}"),
    }
}

/// The server's decoder of client frames. Any text either decodes or is refused with an error; what decodes
/// survives a round trip through `encode` unchanged, `encode` (the client's hand-written writer) gives the same
/// bytes as serde's serializer, and the validators take it without panicking.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(message) = ClientMessage::decode(text, MAX_FRAME_BYTES) else {
        return;
    };
    let now_ms = Some(1_700_000_000_000);
    match &message {
        ClientMessage::Unknown => return,
        ClientMessage::Hello { client, status, .. } => {
            let _ = protocol::validate_client_info(client);
            if let Some(choice) = status {
                let _ = protocol::validate_status(&choice.status);
                let _ = protocol::validate_times(choice, now_ms);
            }
        }
        ClientMessage::SetStatus { choice, .. } => {
            let _ = protocol::validate_status(&choice.status);
            let _ = protocol::validate_times(choice, now_ms);
            let _ = protocol::normalize_status(choice.status.clone());
        }
        ClientMessage::Subscribe { users } | ClientMessage::Unsubscribe { users } => {
            let _ = protocol::validate_user_list(users);
        }
        ClientMessage::SetFocus {
            context: Some(context),
            ..
        } => {
            let _ = protocol::validate_focus(context);
        }
        _ => {}
    }
    let encoded = message.encode();
    assert_eq!(
        encoded,
        message.encode_with_serde(),
        "the writers differ on {message:?}"
    );
    let again = ClientMessage::decode(&encoded, usize::MAX)
        .unwrap_or_else(|e| panic!("{encoded} does not decode: {e}"));
    assert_eq!(message, again, "round trip through {encoded}");
}

const WELCOME: &str = r#"{"type":"welcome","protocol":1,"session_id":"s1","user_id":"alice","heartbeat_interval_ms":15000,"session_ttl_ms":45000,"max_frame_bytes":65536,"server":{"name":"fuzz","version":"0"},"resume_grace_ms":30000}"#;

/// The client's side: frames from a hostile server fed to a connected sans-IO client, with virtual time moving
/// between them. The input is split into frames at NUL bytes; each frame's first byte also moves the clock (by
/// 97 ms per unit). The client's decoder and the serde reference accept the same frames as the same messages
/// (serde also takes arrays in place of records, which the client's decoder refuses);
/// every frame that decodes survives a round trip through `encode`; the same bytes are also
/// fed as a piece of an HTTP event stream; and the client keeps a timer while it is not closed (it never wedges
/// waiting for nothing).
pub fn server_frame(data: &[u8]) {
    let mut client = Client::new(ClientConfig::new("token"), 7);
    let mut now = Instant::ZERO;
    client.connect(now);
    drain(&mut client);
    client.handle_transport_open(now);
    client.handle_frame(WELCOME, now);
    let _ = client.subscribe(["bob", "carol"], now);
    drain(&mut client);

    for frame in data.split(|&b| b == 0) {
        let step = u64::from(frame.first().copied().unwrap_or(0)) * 97;
        now = Instant::from_millis(now.as_millis() + step);
        if client.poll_timeout().is_some_and(|due| due <= now) {
            client.handle_timeout(now);
        }
        let text = String::from_utf8_lossy(frame);
        // The pull reader the client runs and the serde reference agree on every frame, but for one thing:
        // serde also takes an array in place of a record (its fields by position), which the protocol does
        // not allow and the reader refuses.
        let decoded = ServerMessage::decode(&text, MAX_FRAME_BYTES);
        let reference = ServerMessage::decode_with_serde(&text, MAX_FRAME_BYTES);
        let record_as_array = matches!(
            (&decoded, &reference),
            (Err(protocol::DecodeError::Malformed(why)), Ok(_)) if why.starts_with("expected an object")
        );
        assert!(
            decoded.as_ref().ok() == reference.as_ref().ok() || record_as_array,
            "decoders disagree on {text:?}: {decoded:?} against {reference:?}"
        );
        if let Ok(message) = decoded
            && message != ServerMessage::Unknown
        {
            let encoded = message.encode();
            let again = ServerMessage::decode(&encoded, usize::MAX)
                .unwrap_or_else(|e| panic!("{encoded} does not decode: {e}"));
            assert_eq!(message, again, "round trip through {encoded}");
        }
        client.handle_frame(&text, now);
        client.handle_stream_bytes(frame, now);
        drain(&mut client);
        if !matches!(
            client.state(),
            ConnectionState::Closed | ConnectionState::Failed { .. }
        ) {
            assert!(
                client.poll_timeout().is_some(),
                "no timer in {:?}",
                client.state()
            );
        }
        let _ = client.roster().count();
    }
}

fn drain(client: &mut Client) {
    while client.poll_transmit().is_some() {}
    while client.poll_transport().is_some() {}
    while client.poll_event().is_some() {}
}

/// The limit on one line and one event's data for [`sse_stream`], in bytes: small, so that the fuzzer reaches it.
const SSE_LIMIT: usize = 4_096;

fn parse_sse(chunks: &[&[u8]]) -> (Vec<SseItem>, Option<String>, bool) {
    let mut parser = SseParser::new(SSE_LIMIT);
    let mut items = Vec::new();
    let mut too_large = false;
    for chunk in chunks {
        if parser.feed(chunk).is_err() {
            too_large = true;
            break;
        }
        while let Some(item) = parser.poll_item() {
            items.push(item);
        }
    }
    (items, parser.last_event_id().map(str::to_owned), too_large)
}

/// The Server-Sent Events parser. The body (the input after its first byte) is fed whole and again in chunks of
/// 1 to 8 bytes whose sizes the input chooses: both must give the same items, the same last event id and the
/// same verdict on size.
pub fn sse_stream(data: &[u8]) {
    let Some((&rotation, body)) = data.split_first() else {
        return;
    };
    let whole = parse_sse(&[body]);
    let mut chunks = Vec::new();
    let mut rest = body;
    let mut i = usize::from(rotation);
    while !rest.is_empty() {
        let size = (usize::from(body[i % body.len()]) % 8 + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
        i += 1;
    }
    let split = parse_sse(&chunks);
    if whole.2 || split.2 {
        // Past an oversized line nothing is read; only the verdict must agree.
        assert_eq!(whole.2, split.2, "size verdict differs");
        return;
    }
    assert_eq!(whole, split, "chunking changed the result");
}

/// The DND schedule parsers, fed as an app passes its settings: a timezone name, a day set, a start and an end
/// time, and optionally an instant in Unix seconds, one per line. A schedule that parses answers `state_at` for
/// that instant; its next transition lies in the future, and the state does change there.
pub fn dnd_schedule(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let (Some(zone), Some(days), Some(start), Some(end)) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        return;
    };
    let seconds = lines
        .next()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(1_700_000_000)
        .clamp(-8_000_000_000, 8_000_000_000);
    let Ok(window) = DndWindow::parse(days, start, end) else {
        return;
    };
    let Ok(schedule) = DndSchedule::new(zone, vec![window]) else {
        return;
    };
    let Some(now) = DateTime::<Utc>::from_timestamp(seconds, 0) else {
        return;
    };
    let state = schedule.state_at(now);
    if let Some(next) = state.next_transition() {
        assert!(next > now, "next transition {next} is not after {now}");
        let after = schedule.state_at(next);
        assert_ne!(
            after.active, state.active,
            "nothing changes at the transition {next}"
        );
    }
}
