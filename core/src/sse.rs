//! A Server-Sent Events parser (WHATWG HTML, "Server-sent events", the event stream interpretation), sans-IO:
//! feed it the response body in chunks of any size, read the events it completes.
//!
//! It follows the standard's rules: lines end with LF, CRLF or CR (a CRLF split across two chunks counts once);
//! a leading byte order mark is skipped; `data` lines are joined with LF; a blank line dispatches the event; an
//! event without data is not dispatched; lines starting with `:` are comments; a field without a colon has an
//! empty value; one space after the colon is dropped; an `id` holding NUL is ignored; `retry` counts only when it
//! is all ASCII digits; unknown fields are ignored. Invalid UTF-8 is replaced, never a failure. A line or an
//! event longer than the limit is an error (a server that never ends a line must not make the client buffer
//! without bound); everything else, garbage included, is tolerated.

use std::fmt;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type; `"message"` when the stream gave none.
    pub event: String,
    /// The data lines, joined with LF.
    pub data: String,
    /// The last event id in force when the event was dispatched (the stream's `id` so far), if any.
    pub last_event_id: Option<String>,
}

/// What the parser produced from the input so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event.
    Event(SseEvent),
    /// A comment line (the text after the colon): carries nothing, but is a sign of life.
    Comment(String),
    /// A valid `retry` field: the server's reconnection time, in milliseconds.
    Retry(u64),
}

/// The stream broke a size limit: the caller should drop the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseTooLarge {
    /// The limit, in bytes.
    pub limit: usize,
}

impl fmt::Display for SseTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the event stream sent a line or event larger than {} bytes",
            self.limit
        )
    }
}

impl std::error::Error for SseTooLarge {}

/// The parser's state between chunks.
#[derive(Debug, Clone)]
pub struct SseParser {
    /// The largest line, and the largest event's data, in bytes.
    limit: usize,
    /// The current, unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF starting the next chunk belongs to that line ending.
    after_cr: bool,
    /// Nothing has been read yet (a byte order mark may come).
    at_start: bool,
    data: String,
    has_data: bool,
    event: String,
    /// The `id` field last read; it becomes the stream's last event id when an event is dispatched.
    id_buffer: Option<String>,
    last_event_id: Option<String>,
    items: std::collections::VecDeque<SseItem>,
}

impl SseParser {
    /// A parser for a new stream; `limit` bounds one line and one event's data, in bytes.
    pub fn new(limit: usize) -> Self {
        SseParser {
            limit,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            data: String::new(),
            has_data: false,
            event: String::new(),
            id_buffer: None,
            last_event_id: None,
            items: std::collections::VecDeque::new(),
        }
    }

    /// The id of the last event dispatched so far (what a reconnect sends as `Last-Event-ID`): an `id` line
    /// counts only once its event is complete.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Reads a chunk of the body; completed items are then returned by [`SseParser::poll_item`]. After an error
    /// the stream should be dropped: what follows is not read.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), SseTooLarge> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.at_start {
            // A byte order mark may be split across chunks too: wait until three bytes are there.
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let have = self.line.len() + chunk.len();
            if have < BOM.len() && BOM.starts_with(&[self.line.as_slice(), chunk].concat()) {
                self.line.extend_from_slice(chunk);
                return Ok(());
            }
            self.at_start = false;
            let mut start = std::mem::take(&mut self.line);
            start.extend_from_slice(chunk);
            let rest = start.strip_prefix(BOM).unwrap_or(&start).to_vec();
            return self.feed_bytes(&rest);
        }
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        self.feed_bytes(chunk)
    }

    fn feed_bytes(&mut self, chunk: &[u8]) -> Result<(), SseTooLarge> {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.take_line_part(&rest[..end])?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line)?;
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => rest = &rest[end + 2..],
                    Some(_) => rest = &rest[end + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[end + 1..];
            }
        }
        self.take_line_part(rest)
    }

    fn take_line_part(&mut self, part: &[u8]) -> Result<(), SseTooLarge> {
        if self.line.len() + part.len() > self.limit {
            self.line.clear();
            return Err(SseTooLarge { limit: self.limit });
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8]) -> Result<(), SseTooLarge> {
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            self.items.push_back(SseItem::Comment(comment.to_owned()));
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    self.data.clear();
                    self.has_data = false;
                    return Err(SseTooLarge { limit: self.limit });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_owned(),
            "id" if !value.contains('\0') => {
                self.id_buffer = (!value.is_empty()).then(|| value.to_owned());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.items.push_back(SseItem::Retry(ms));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        self.last_event_id = self.id_buffer.clone();
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return;
        }
        self.has_data = false;
        self.items.push_back(SseItem::Event(SseEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
            last_event_id: self.last_event_id.clone(),
        }));
    }

    /// The next completed item, in stream order.
    pub fn poll_item(&mut self) -> Option<SseItem> {
        self.items.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseItem> {
        let mut parser = SseParser::new(1024);
        let mut items = Vec::new();
        for chunk in chunks {
            parser.feed(chunk).unwrap();
            while let Some(item) = parser.poll_item() {
                items.push(item);
            }
        }
        items
    }

    fn event(data: &str, id: Option<&str>) -> SseItem {
        SseItem::Event(SseEvent {
            event: "message".into(),
            data: data.into(),
            last_event_id: id.map(str::to_owned),
        })
    }

    #[test]
    fn events_comments_ids_and_retry() {
        let items = parse_chunks(&[
            b": ping\n\ndata: {\"type\":\"pong\"}\n\nid: 7\ndata: a\ndata:b\n\nretry: 3000\nretry: x1\n",
        ]);
        assert_eq!(
            items,
            vec![
                SseItem::Comment("ping".into()),
                event("{\"type\":\"pong\"}", None),
                event("a\nb", Some("7")),
                SseItem::Retry(3000),
            ]
        );
    }

    #[test]
    fn every_line_ending_and_every_split_gives_the_same_events() {
        let text =
            "data: one\n\nid: 2\ndata: two\ndata: lines\n\n: c\nevent: other\ndata: three\n\n";
        let expected = parse_chunks(&[text.as_bytes()]);
        assert_eq!(expected.len(), 4);
        for ending in ["\n", "\r\n", "\r"] {
            let body = text.replace('\n', ending);
            let bytes = body.as_bytes();
            for split in 0..=bytes.len() {
                let (a, b) = bytes.split_at(split);
                assert_eq!(
                    parse_chunks(&[a, b]),
                    expected,
                    "ending {ending:?} split {split}"
                );
            }
            let single: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                parse_chunks(&single),
                expected,
                "ending {ending:?} byte by byte"
            );
        }
    }

    #[test]
    fn field_rules_follow_the_standard() {
        let items = parse_chunks(&[
            "\u{FEFF}data\n\ndata:  two spaces\n\nid\ndata: x\n\nid: a\0b\ndata: y\n\nevent: e\nunknown: z\ndata\n\n"
                .as_bytes(),
        ]);
        assert_eq!(
            items,
            vec![
                event("", None),
                event(" two spaces", None),
                event("x", None),
                event("y", None),
                SseItem::Event(SseEvent {
                    event: "e".into(),
                    data: "".into(),
                    last_event_id: None
                }),
            ]
        );
        // A split byte order mark is still skipped; an event with no data is not dispatched.
        assert_eq!(
            parse_chunks(&[b"\xEF", b"\xBB", b"\xBFid: 1\n\ndata: z\n\n"]),
            vec![event("z", Some("1"))]
        );
    }

    #[test]
    fn an_id_counts_only_once_its_event_is_complete() {
        let mut parser = SseParser::new(1024);
        parser.feed(b"data: a\nid: 1\n\ndata: b\nid: 2\n").unwrap();
        assert_eq!(parser.last_event_id(), Some("1"), "event 2 is not complete");
        parser.feed(b"\n").unwrap();
        assert_eq!(parser.last_event_id(), Some("2"));
    }

    #[test]
    fn garbage_is_tolerated_and_oversized_input_is_an_error() {
        let items = parse_chunks(&[b"\xff\xfe garbage\n\x00\x01:::\ndata: \xc3\n\n"]);
        assert_eq!(items, vec![event("\u{FFFD}", None)]);
        let mut parser = SseParser::new(16);
        assert_eq!(parser.feed(&[b'a'; 17]), Err(SseTooLarge { limit: 16 }));
        let mut parser = SseParser::new(16);
        assert!(parser.feed(b"data: 0123456789\n").is_ok());
        assert!(parser.feed(b"data: 0123456789\n").is_err());
    }
}
