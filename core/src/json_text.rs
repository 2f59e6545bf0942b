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

use std::fmt::Write;

/// Appends `value` to `out` as a JSON string, quotes included, escaped as `serde_json` escapes it: `"` and `\`
/// with a backslash, backspace, form feed, newline, carriage return and tab by their short escapes, the other
/// control characters below U+0020 as `\u00XX` (lowercase hex), everything else as is.
pub fn write_str(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(byte)];
        if escape == 0 {
            continue;
        }
        // Every byte that stops the scan is ASCII, so these slices fall on character boundaries.
        out.push_str(&value[start..i]);
        out.push('\\');
        out.push(char::from(escape));
        if escape == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        start = i + 1;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

/// For each byte, the character after the backslash that escapes it (`u` for `\u00XX`), or 0 if it stands as is.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Whether `name` can be written without escaping.
fn needs_no_escape(name: &str) -> bool {
    name.bytes().all(|byte| ESCAPE[usize::from(byte)] == 0)
}

/// Displays a string as a JSON string literal (quoted and escaped by [`write_str`]): how error messages quote
/// the input they refuse, so that invisible characters show.
pub struct Quoted<'a>(pub &'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::with_capacity(self.0.len() + 2);
        write_str(&mut text, self.0);
        f.write_str(&text)
    }
}

/// The length in bytes of `value` written by [`write_str`], quotes included, without writing it.
pub fn str_len(value: &str) -> usize {
    value.len()
        + 2
        + value
            .bytes()
            .map(|byte| match ESCAPE[usize::from(byte)] {
                0 => 0,
                b'u' => 5,
                _ => 1,
            })
            .sum::<usize>()
}

/// Writes one JSON object into a `String`, field by field, in the order of the calls; [`JsonObject::end`]
/// closes it. The `opt_*` methods leave a field out when its value is `None`, as serde's
/// `skip_serializing_if = "Option::is_none"` does.
///
/// Field names are written as given: they must be plain text without `"`, `\` or control characters (the
/// constant names of a record; checked in debug builds). Values are escaped.
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

    /// Writes the name of the next field and returns the text to write its value into. Field names are the
    /// caller's constants, plain ASCII that needs no escaping, so they are written as they are.
    fn name(&mut self, name: &str) -> &mut String {
        debug_assert!(needs_no_escape(name), "field name {name} needs escaping");
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
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
        // Writing to a `String` cannot fail.
        let _ = write!(self.name(name), "{value}");
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
