//! The little JSON the `--json` outputs need: flat objects of strings,
//! numbers, booleans and nulls. Hand-written rather than a dependency, so
//! the one thing that must be right is the string escaping.

use std::fmt::Write;

/// A JSON value of the kinds these objects hold.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Str(&'a str),
    Num(f64),
    UInt(u64),
    Bool(bool),
    Null,
    /// Already JSON (an object made by [`object`]).
    Raw(&'a str),
}

/// `{"key":value,…}` in the given order.
pub(crate) fn object(fields: &[(&str, Value<'_>)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(&mut out, key);
        out.push(':');
        match value {
            Value::Str(s) => string(&mut out, s),
            // JSON has no NaN or infinity.
            Value::Num(n) if !n.is_finite() => out.push_str("null"),
            Value::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Value::UInt(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Null => out.push_str("null"),
            Value::Raw(json) => out.push_str(json),
        }
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string (RFC 8259 section 7): the quote, the
/// backslash and every control character escaped; everything else, non-ASCII
/// included, as is (JSON text is UTF-8).
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        let s = object(&[(
            "k\"ey",
            Value::Str("a\"b\\c\nd\re\tf\u{1}g\u{1f}h\u{7f}é\u{08}\u{0c}"),
        )]);
        assert_eq!(
            s,
            r#"{"k\"ey":"a\"b\\c\nd\re\tf\u0001g\u001fh"#.to_owned() + "\u{7f}é" + r#"\b\f"}"#
        );
    }

    #[test]
    fn values_of_each_kind() {
        let s = object(&[
            ("a", Value::UInt(42)),
            ("b", Value::Num(1.5)),
            ("c", Value::Bool(true)),
            ("d", Value::Null),
            ("e", Value::Num(f64::NAN)),
            ("f", Value::Bool(false)),
            ("g", Value::Num(3.0)),
        ]);
        assert_eq!(
            s,
            r#"{"a":42,"b":1.5,"c":true,"d":null,"e":null,"f":false,"g":3}"#
        );
        assert_eq!(object(&[]), "{}");
    }
}
