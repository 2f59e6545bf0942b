//! A small pull reader of JSON text (RFC 8259), for decoding server frames without serde's generic machinery.
//!
//! The browser package's size is dominated by what a serde-derived decoder instantiates per record type (visitors,
//! error formatting down to `f64` display); reading the few record types of the protocol through this reader
//! costs a fraction of it. It accepts exactly what `serde_json` accepts for the same records: strict grammar,
//! no control characters in strings, paired surrogates in `\u` escapes of the strings it reads, integers without
//! fraction or exponent where an integer is expected, nothing but whitespace after the value. Values it skips
//! (unknown fields, for forward compatibility) are checked for well-formedness without building anything and
//! without recursion, so a deeply nested unknown field costs no stack.
//!
//! Errors carry the byte offset where reading stopped.

use std::borrow::Cow;

/// Why a JSON text could not be read: what was expected and the byte offset where reading stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// What the reader expected or found wrong, e.g. `"expected a string"`.
    pub reason: Cow<'static, str>,
    /// Byte offset into the text.
    pub offset: usize,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

impl std::error::Error for JsonError {}

/// A pull reader over one JSON text: the caller asks for the value it expects next.
pub struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Reader {
            text,
            bytes: text.as_bytes(),
            position: 0,
        }
    }

    /// An error at the current position.
    pub fn error(&self, reason: impl Into<Cow<'static, str>>) -> JsonError {
        JsonError {
            reason: reason.into(),
            offset: self.position,
        }
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(self.position) {
            self.position += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.position).copied()
    }

    /// Consumes `byte` if it comes next (after whitespace).
    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.position += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), JsonError> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    /// Checks that nothing but whitespace is left.
    pub fn finish(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    /// Whether the next value is `null`; consumes it if so.
    pub fn null(&mut self) -> Result<bool, JsonError> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal("null")?;
        Ok(true)
    }

    fn literal(&mut self, word: &'static str) -> Result<(), JsonError> {
        if self.bytes[self.position..].starts_with(word.as_bytes()) {
            self.position += word.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    /// Reads `true` or `false`.
    pub fn bool(&mut self) -> Result<bool, JsonError> {
        match self.peek() {
            Some(b't') => self.literal("true").map(|()| true),
            Some(b'f') => self.literal("false").map(|()| false),
            _ => Err(self.error("expected a boolean")),
        }
    }

    /// Reads a non-negative integer that fits in a `u64` (a minus sign, even on `-0`, is refused, as `serde_json`
    /// refuses it).
    pub fn u64(&mut self) -> Result<u64, JsonError> {
        self.skip_whitespace();
        let negative = self.bytes.get(self.position) == Some(&b'-');
        if negative {
            self.position += 1;
        }
        let digits = self.position;
        let mut value: Option<u64> = Some(0);
        while let Some(digit @ b'0'..=b'9') = self.bytes.get(self.position).copied() {
            value = value
                .and_then(|v| v.checked_mul(10))
                .and_then(|v| v.checked_add(u64::from(digit - b'0')));
            self.position += 1;
        }
        let count = self.position - digits;
        if count == 0 {
            return Err(self.error("expected an integer"));
        }
        if count > 1 && self.bytes[digits] == b'0' {
            return Err(self.error("invalid number"));
        }
        if let Some(b'.' | b'e' | b'E') = self.bytes.get(self.position) {
            return Err(self.error("expected an integer, found a fraction or exponent"));
        }
        match value {
            _ if negative => Err(self.error("expected a non-negative integer")),
            Some(value) => Ok(value),
            None => Err(self.error("integer out of range")),
        }
    }

    /// Reads a non-negative integer that fits in a `u32`.
    pub fn u32(&mut self) -> Result<u32, JsonError> {
        let value = self.u64()?;
        u32::try_from(value).map_err(|_| self.error("integer out of range"))
    }

    /// Reads a string, borrowed from the text when it has no escapes.
    pub fn str(&mut self) -> Result<Cow<'a, str>, JsonError> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string"));
        }
        self.position += 1;
        let start = self.position;
        let mut owned: Option<String> = None;
        let mut run = start;
        loop {
            let Some(&byte) = self.bytes.get(self.position) else {
                return Err(self.error("unterminated string"));
            };
            match byte {
                b'"' => {
                    let tail = &self.text[run..self.position];
                    self.position += 1;
                    return Ok(match owned {
                        None => Cow::Borrowed(tail),
                        Some(mut text) => {
                            text.push_str(tail);
                            Cow::Owned(text)
                        }
                    });
                }
                b'\\' => {
                    let text = owned.get_or_insert_with(String::new);
                    text.push_str(&self.text[run..self.position]);
                    self.position += 1;
                    let c = self.escape()?;
                    text.push(c);
                    run = self.position;
                }
                0x00..=0x1f => return Err(self.error("control character in a string")),
                _ => self.position += 1,
            }
        }
    }

    /// Reads a string into an owned `String`.
    pub fn string(&mut self) -> Result<String, JsonError> {
        self.str().map(Cow::into_owned)
    }

    /// Reads one escape after its backslash, surrogate pairs joined.
    fn escape(&mut self) -> Result<char, JsonError> {
        let Some(&kind) = self.bytes.get(self.position) else {
            return Err(self.error("unterminated string"));
        };
        self.position += 1;
        Ok(match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = self.hex4()?;
                let code = match first {
                    0xdc00..=0xdfff => return Err(self.error("lone surrogate in a \\u escape")),
                    0xd800..=0xdbff => {
                        if !self.bytes[self.position..].starts_with(b"\\u") {
                            return Err(self.error("lone surrogate in a \\u escape"));
                        }
                        self.position += 2;
                        let second = self.hex4()?;
                        if !(0xdc00..=0xdfff).contains(&second) {
                            return Err(self.error("lone surrogate in a \\u escape"));
                        }
                        0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
                    }
                    code => code,
                };
                char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))?
            }
            _ => return Err(self.error("invalid escape")),
        })
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut value = 0;
        for _ in 0..4 {
            let digit = self
                .bytes
                .get(self.position)
                .and_then(|&b| char::from(b).to_digit(16))
                .ok_or_else(|| self.error("invalid \\u escape"))?;
            value = value * 16 + digit;
            self.position += 1;
        }
        Ok(value)
    }

    /// Reads an object, calling `member` with each key; `member` reads the value and returns `true`, or returns
    /// `false` to have it skipped.
    pub fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, &str) -> Result<bool, JsonError>,
    ) -> Result<(), JsonError> {
        self.read_object(&mut member)
    }

    /// [`Reader::object`] compiled once for every kind of record.
    fn read_object(
        &mut self,
        member: &mut dyn FnMut(&mut Self, &str) -> Result<bool, JsonError>,
    ) -> Result<(), JsonError> {
        self.expect(b'{', "expected an object")?;
        if self.eat(b'}') {
            return Ok(());
        }
        loop {
            let key = self.str()?;
            self.expect(b':', "expected `:`")?;
            if !member(self, &key)? {
                self.skip()?;
            }
            if self.eat(b',') {
                continue;
            }
            return self.expect(b'}', "expected `,` or `}`");
        }
    }

    /// Reads an array, calling `item` for each element.
    pub fn array<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, JsonError>,
    ) -> Result<Vec<T>, JsonError> {
        self.expect(b'[', "expected an array")?;
        let mut items = Vec::new();
        if self.eat(b']') {
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            if self.eat(b',') {
                continue;
            }
            self.expect(b']', "expected `,` or `]`")?;
            return Ok(items);
        }
    }

    /// Skips one well-formed value of any kind and depth, without recursion.
    pub fn skip(&mut self) -> Result<(), JsonError> {
        // One bit per open container: true for an object.
        let mut open: Vec<bool> = Vec::new();
        loop {
            // A value.
            match self.peek() {
                Some(b'{') => {
                    self.position += 1;
                    if !self.eat(b'}') {
                        open.push(true);
                        self.skip_key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.position += 1;
                    if !self.eat(b']') {
                        open.push(false);
                        continue;
                    }
                }
                Some(b'"') => self.skip_string()?,
                Some(b't') => self.literal("true")?,
                Some(b'f') => self.literal("false")?,
                Some(b'n') => self.literal("null")?,
                Some(b'-' | b'0'..=b'9') => self.skip_number()?,
                _ => return Err(self.error("expected a value")),
            }
            // What follows it: the next member or element, or the ends of containers.
            loop {
                let Some(&is_object) = open.last() else {
                    return Ok(());
                };
                if self.eat(b',') {
                    if is_object {
                        self.skip_key()?;
                    }
                    break;
                }
                let close = if is_object { b'}' } else { b']' };
                self.expect(close, "expected `,` or the end of a container")?;
                open.pop();
            }
        }
    }

    fn skip_key(&mut self) -> Result<(), JsonError> {
        // Keys are checked as strictly as the strings that are read.
        self.str()?;
        self.expect(b':', "expected `:`")
    }

    fn skip_string(&mut self) -> Result<(), JsonError> {
        self.position += 1;
        loop {
            match self.bytes.get(self.position) {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.position += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.position += 1;
                    match self.bytes.get(self.position) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.position += 1
                        }
                        Some(b'u') => {
                            self.position += 1;
                            self.hex4()?;
                        }
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                Some(0x00..=0x1f) => return Err(self.error("control character in a string")),
                Some(_) => self.position += 1,
            }
        }
    }

    fn skip_number(&mut self) -> Result<(), JsonError> {
        let digits = |reader: &mut Self| {
            let start = reader.position;
            while let Some(b'0'..=b'9') = reader.bytes.get(reader.position) {
                reader.position += 1;
            }
            reader.position - start
        };
        if self.bytes.get(self.position) == Some(&b'-') {
            self.position += 1;
        }
        let first = self.bytes.get(self.position).copied();
        let count = digits(self);
        if count == 0 || (count > 1 && first == Some(b'0')) {
            return Err(self.error("invalid number"));
        }
        if self.bytes.get(self.position) == Some(&b'.') {
            self.position += 1;
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.position) {
            self.position += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.position) {
                self.position += 1;
            }
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(())
    }
}

/// One field of a record being read: its wire name and its value once seen. A second occurrence of the same
/// key is an error, as it is for serde-derived records.
pub struct Field<T> {
    name: &'static str,
    value: Option<T>,
}

impl<T> Field<T> {
    /// A field named `name` on the wire, not seen yet.
    pub fn new(name: &'static str) -> Self {
        Field { name, value: None }
    }

    /// Reads the field's value with `read`; always returns `true` (the value was consumed).
    pub fn read<'a>(
        &mut self,
        reader: &mut Reader<'a>,
        read: impl FnOnce(&mut Reader<'a>) -> Result<T, JsonError>,
    ) -> Result<bool, JsonError> {
        if self.value.is_some() {
            return Err(field_error(reader, "duplicate field", self.name));
        }
        self.value = Some(read(reader)?);
        Ok(true)
    }

    /// The value, or an error naming the missing field.
    pub fn required(self, reader: &Reader<'_>) -> Result<T, JsonError> {
        match self.value {
            Some(value) => Ok(value),
            None => Err(field_error(reader, "missing field", self.name)),
        }
    }

    /// The value, or `T::default()` when the field was absent.
    pub fn or_default(self) -> T
    where
        T: Default,
    {
        self.value.unwrap_or_default()
    }
}

impl<T> Field<Option<T>> {
    /// The value of an optional field: `None` when absent or `null`.
    pub fn optional(self) -> Option<T> {
        self.value.flatten()
    }
}

/// An error about the field `name` (kept out of line: one copy for every type of field).
#[cold]
#[inline(never)]
fn field_error(reader: &Reader<'_>, what: &str, name: &str) -> JsonError {
    reader.error(format!("{what} `{name}`"))
}

/// Reads `null` as `None`, anything else with `read`.
pub fn nullable<'a, T>(
    reader: &mut Reader<'a>,
    read: impl FnOnce(&mut Reader<'a>) -> Result<T, JsonError>,
) -> Result<Option<T>, JsonError> {
    if reader.null()? {
        Ok(None)
    } else {
        read(reader).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(text: &str) -> Result<Cow<'_, str>, JsonError> {
        Reader::new(text).str()
    }

    #[test]
    fn strings_are_borrowed_without_escapes_and_owned_with_them_at_any_length() {
        let long = "x".repeat(100);
        for (text, expected) in [
            ("\"\"".to_owned(), String::new()),
            (format!("\"{long}\""), long.clone()),
            ("\"é🎹 ok\"  ".to_owned(), "é🎹 ok".to_owned()),
        ] {
            let read = read_str(&text);
            assert!(
                matches!(&read, Ok(Cow::Borrowed(s)) if *s == expected),
                "{text:?} gave {read:?}"
            );
        }
        let escaped = format!(r#""{long}\"{long}\\\n\u00e9\ud83c\udfb9""#);
        let read = read_str(&escaped);
        let expected = format!("{long}\"{long}\\\né🎹");
        assert!(
            matches!(&read, Ok(Cow::Owned(s)) if *s == expected),
            "{escaped:?} gave {read:?}"
        );
    }

    #[test]
    fn control_characters_and_unterminated_strings_are_errors_at_their_offset() {
        let long = "x".repeat(40);
        for (text, offset, reason) in [
            ("\"a\tb\"", 2, "control character in a string"),
            ("\"a\u{0}", 2, "control character in a string"),
            (
                &*format!("\"{long}\u{1f}{long}\""),
                41,
                "control character in a string",
            ),
            (
                &*format!("\"{long}\\n{long}\n\""),
                83,
                "control character in a string",
            ),
            ("\"abc", 4, "unterminated string"),
            (&*format!("\"{long}"), 41, "unterminated string"),
            ("\"abc\\", 5, "unterminated string"),
        ] {
            let error = read_str(text).expect_err(text);
            assert_eq!((error.offset, &*error.reason), (offset, reason), "{text:?}");
        }
    }
}
