//! Writing JSON text without serde: the frames a client sends and the records the bindings hand to JavaScript.
//!
//! A client writes a dozen small objects with a handful of field types. serde's serializers, generic over every
//! type and format, cost the browser package several kilobytes for that; this writer costs a few hundred bytes.
//! Its output is byte for byte what `serde_json::to_string` writes for the same fields in the same order
//! (compact, strings escaped the same way), which `core/tests/wire_parity.rs` checks on generated messages.
//!
//! ```
//! use presently_core::json_text::JsonObject;
//!
//! let mut text = String::new();
//! let mut object = JsonObject::new(&mut text);
//! object.str("type", "ping");
//! object.opt_str("ref", None);
//! object.u64("at", 42);
//! object.end();
//! assert_eq!(text, r#"{"type":"ping","at":42}"#);
//! ```

/// Appends `value` to `out` as a JSON string, quotes included, escaped as `serde_json` escapes it: `"` and `\`
/// with a backslash, backspace, form feed, newline, carriage return and tab by their short escapes, the other
/// control characters below U+0020 as `\u00XX` (lowercase hex), everything else as is.
pub fn write_str(out: &mut String, value: &str) {
    out.push('"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Every byte that stops the scan is ASCII, so these slices fall on character boundaries.
        out.push_str(&value[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

/// Appends `value` in decimal.
fn write_u64(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &digit in &digits[start..] {
        out.push(char::from(digit));
    }
}

/// The length in bytes of `value` written by [`write_str`], quotes included, without writing it.
pub fn str_len(value: &str) -> usize {
    value.len()
        + 2
        + value
            .bytes()
            .map(|byte| match byte {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// Writes one JSON object into a `String`, field by field, in the order of the calls; [`JsonObject::end`]
/// closes it. The `opt_*` methods leave a field out when its value is `None`, as serde's
/// `skip_serializing_if = "Option::is_none"` does.
pub struct JsonObject<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> JsonObject<'a> {
    /// Starts an object at the end of `out`.
    pub fn new(out: &'a mut String) -> Self {
        out.push('{');
        JsonObject { out, empty: true }
    }

    /// Writes the name of the next field and returns the text to write its value into.
    fn name(&mut self, name: &str) -> &mut String {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        write_str(self.out, name);
        self.out.push(':');
        self.out
    }

    /// A string field.
    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        write_str(self.name(name), value);
        self
    }

    /// A string field, left out when `value` is `None`.
    pub fn opt_str(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        if let Some(value) = value {
            self.str(name, value);
        }
        self
    }

    /// A string field that is `null` when `value` is `None`.
    pub fn str_or_null(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(name, value),
            None => {
                self.name(name).push_str("null");
                self
            }
        }
    }

    /// An unsigned integer field.
    pub fn u64(&mut self, name: &str, value: u64) -> &mut Self {
        write_u64(self.name(name), value);
        self
    }

    /// An unsigned integer field, left out when `value` is `None`.
    pub fn opt_u64(&mut self, name: &str, value: Option<u64>) -> &mut Self {
        if let Some(value) = value {
            self.u64(name, value);
        }
        self
    }

    /// A boolean field.
    pub fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.name(name)
            .push_str(if value { "true" } else { "false" });
        self
    }

    /// An array of strings.
    pub fn str_array<S: AsRef<str>>(&mut self, name: &str, values: &[S]) -> &mut Self {
        let out = self.name(name);
        out.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(out, value.as_ref());
        }
        out.push(']');
        self
    }

    /// A field whose value is an object, written by `write`.
    pub fn object(&mut self, name: &str, write: impl FnOnce(&mut JsonObject<'_>)) -> &mut Self {
        let mut inner = JsonObject::new(self.name(name));
        write(&mut inner);
        inner.end();
        self
    }

    /// Closes the object.
    pub fn end(self) {
        self.out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde(value: &str) -> String {
        serde_json::to_string(value).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut every_byte = String::new();
        for c in 0u8..0x80 {
            every_byte.push(char::from(c));
        }
        for value in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "\u{7f}\u{80}é€😀",
            "\u{2028}\u{2029}",
            &every_byte,
        ] {
            let mut out = String::new();
            write_str(&mut out, value);
            assert_eq!(out, serde(value), "{value:?}");
            assert_eq!(str_len(value), out.len(), "{value:?}");
        }
    }

    #[test]
    fn objects_nest_and_leave_out_absent_fields() {
        let mut out = String::new();
        let mut object = JsonObject::new(&mut out);
        object
            .str("a", "x")
            .opt_str("b", None)
            .opt_u64("c", Some(u64::MAX))
            .bool("d", false)
            .str_or_null("e", None)
            .str_array("f", &["1", "\"2\""])
            .object("g", |inner| {
                inner.u64("h", 0);
            })
            .object("i", |_| {});
        object.end();
        assert_eq!(
            out,
            r#"{"a":"x","c":18446744073709551615,"d":false,"e":null,"f":["1","\"2\""],"g":{"h":0},"i":{}}"#
        );
    }
}
