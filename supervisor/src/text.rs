//! Text from outside (a requested binary path, a daemon's `SealFailed`
//! error, a build id, an operating-system error naming such a path) on its
//! way into a log line, a trigger reply or systemd's `STATUS=`. Each of
//! those is one line read by a person or a parser, so a carriage return,
//! a newline, an escape sequence or a NUL from a peer could forge a line
//! ("handoff committed") or rewrite a terminal. Every control character is
//! written as a visible escape instead, and nothing else changes.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every control character (C0, DEL, C1) written as `\n`, `\r`,
/// `\t` or `\u{…}`, so it is one line that shows what it holds. Borrowed
/// when there is nothing to escape.
pub fn one_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "{}", c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_escapes() {
        assert!(matches!(one_line("plain /opt/kvd v2"), Cow::Borrowed(_)));
        assert_eq!(
            one_line("a\r\nINFO handoff committed\u{1b}[2K\0\u{7f}\u{85}é"),
            "a\\r\\nINFO handoff committed\\u{1b}[2K\\u{0}\\u{7f}\\u{85}é"
        );
        assert_eq!(one_line("tab\there"), "tab\\there");
    }
}
