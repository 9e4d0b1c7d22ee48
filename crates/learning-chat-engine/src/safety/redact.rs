//! `privacy.redact`: personal data in a learner's message replaced by placeholders before the
//! model, the cache key and the stored conversation see it. Hand-written scanners, no regular
//! expressions: each kind's rules, and what they miss, are in docs/safety.md.

use std::borrow::Cow;

/// The kinds of personal data that can be redacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `name@domain.tld`.
    Email,
    /// International (`+...`) or separated (`555-123-4567`, `(555) 123 4567`) phone numbers.
    Phone,
    /// `http://`, `https://` and `www.` links.
    Url,
    /// Dotted IPv4 addresses.
    Ip,
    /// Payment card numbers (13 to 19 digits passing the Luhn check).
    Card,
}

impl Kind {
    /// The kind named in `privacy.redact`.
    pub fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "email" => Kind::Email,
            "phone" => Kind::Phone,
            "url" => Kind::Url,
            "ip" => Kind::Ip,
            "card" => Kind::Card,
            _ => return None,
        })
    }

    /// What replaces a span of this kind.
    pub fn placeholder(self) -> &'static str {
        match self {
            Kind::Email => "[email]",
            Kind::Phone => "[phone]",
            Kind::Url => "[url]",
            Kind::Ip => "[ip]",
            Kind::Card => "[card]",
        }
    }
}

/// The redactor of `privacy.redact`.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    kinds: Vec<Kind>,
}

impl Redactor {
    /// A redactor of the kinds named (unknown names are refused by the settings' checks).
    pub fn new(names: &[String]) -> Redactor {
        Redactor {
            kinds: names.iter().filter_map(|n| Kind::parse(n)).collect(),
        }
    }

    /// True when nothing is redacted.
    pub fn is_off(&self) -> bool {
        self.kinds.is_empty()
    }

    /// `message` with every detected span replaced; borrowed (no copy) when nothing is found.
    pub fn redact<'a>(&self, message: Cow<'a, str>) -> Cow<'a, str> {
        if self.kinds.is_empty() {
            return message;
        }
        let mut spans: Vec<(usize, usize, Kind)> = Vec::new();
        // URLs first: an address inside a link is part of the link.
        for kind in [Kind::Url, Kind::Email, Kind::Card, Kind::Phone, Kind::Ip] {
            if !self.kinds.contains(&kind) {
                continue;
            }
            for (start, end) in find(kind, &message) {
                if !spans.iter().any(|&(s, e, _)| start < e && s < end) {
                    spans.push((start, end, kind));
                }
            }
        }
        if spans.is_empty() {
            return message;
        }
        spans.sort_unstable_by_key(|&(start, _, _)| start);
        let mut out = String::with_capacity(message.len());
        let mut at = 0;
        for (start, end, kind) in spans {
            out.push_str(&message[at..start]);
            out.push_str(kind.placeholder());
            at = end;
        }
        out.push_str(&message[at..]);
        crate::safety::metrics::redacted();
        Cow::Owned(out)
    }
}

fn find(kind: Kind, text: &str) -> Vec<(usize, usize)> {
    match kind {
        Kind::Email => emails(text),
        Kind::Url => urls(text),
        Kind::Phone => digit_runs(text, is_phone),
        Kind::Card => digit_runs(text, is_card),
        Kind::Ip => ips(text),
    }
}

fn emails(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let domain = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
    let mut found = Vec::new();
    for (at, _) in text.match_indices('@') {
        let mut start = at;
        while start > 0 && local(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < bytes.len() && domain(bytes[end]) {
            end += 1;
        }
        // A sentence's full stop is not part of the domain.
        while end > at + 1 && bytes[end - 1] == b'.' {
            end -= 1;
        }
        let host = &text[at + 1..end];
        let tld_ok = host.rsplit_once('.').is_some_and(|(name, tld)| {
            !name.is_empty() && tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic())
        });
        if start < at && tld_ok {
            found.push((start, end));
        }
    }
    found
}

fn urls(text: &str) -> Vec<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut from = 0;
    while from < lower.len() {
        let next = ["https://", "http://", "www."]
            .iter()
            .filter_map(|p| lower[from..].find(p).map(|i| from + i))
            .min();
        let Some(start) = next else { break };
        // `www.` inside a word (`awww.`) is not a link.
        let starts_word = start == 0 || !text.as_bytes()[start - 1].is_ascii_alphanumeric();
        let mut end = text[start..]
            .find(char::is_whitespace)
            .map_or(text.len(), |i| start + i);
        while end > start && ".,;:!?)]}'\"".contains(text.as_bytes()[end - 1] as char) {
            end -= 1;
        }
        if starts_word && end > start + 4 {
            found.push((start, end));
        }
        from = end.max(start + 1);
    }
    found
}

/// Maximal runs of digits and the separators a number is written with (`+`, `-`, spaces
/// between digits, parentheses), trimmed to start and end at a digit (or a leading `+`/`(`),
/// kept when `keep` says so.
fn digit_runs(text: &str, keep: fn(&str) -> bool) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let part =
        |b: u8| b.is_ascii_digit() || b == b'-' || b == b' ' || b == b'(' || b == b')' || b == b'+';
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !(bytes[i].is_ascii_digit() || bytes[i] == b'+' || bytes[i] == b'(') {
            i += 1;
            continue;
        }
        // Not the tail of a word or of a decimal number.
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.') {
            while i < bytes.len() && part(bytes[i]) {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < bytes.len() && part(bytes[i]) {
            i += 1;
        }
        let mut end = i;
        while end > start && !(bytes[end - 1].is_ascii_digit() || bytes[end - 1] == b')') {
            end -= 1;
        }
        let followed_by_word = end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric()
                || (bytes[end] == b'.' && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)));
        if end > start && !followed_by_word && keep(&text[start..end]) {
            found.push((start, end));
        }
    }
    found
}

fn digits(run: &str) -> usize {
    run.bytes().filter(u8::is_ascii_digit).count()
}

/// `+` and 8 to 15 digits, or 9 to 15 digits written in groups of at least two with `-` or
/// parentheses (`555-123-4567`, `(555) 123 4567`); plain digit runs and space-only groups
/// are numbers, not phones.
fn is_phone(run: &str) -> bool {
    let count = digits(run);
    if run.starts_with('+') {
        return (8..=15).contains(&count);
    }
    let grouped = run.contains('-') || run.contains('(');
    let groups_ok = run
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .all(|g| g.len() >= 2);
    grouped && groups_ok && (9..=15).contains(&count)
}

/// 13 to 19 digits (spaces or dashes between groups) passing the Luhn check.
fn is_card(run: &str) -> bool {
    if run.contains(['(', ')', '+']) {
        return false;
    }
    let all: Vec<u32> = run.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&all.len()) {
        return false;
    }
    let sum: u32 = all
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn ips(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit()
            || (i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.'))
        {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let mut end = i;
        while end > start && bytes[end - 1] == b'.' {
            end -= 1;
        }
        let parts: Vec<&str> = text[start..end].split('.').collect();
        let quad = parts.len() == 4
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.parse::<u16>().is_ok_and(|n| n <= 255));
        let followed_by_word = end < bytes.len() && bytes[end].is_ascii_alphanumeric();
        if quad && !followed_by_word {
            found.push((start, end));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(kinds: &[&str], text: &str) -> String {
        let names: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
        Redactor::new(&names)
            .redact(Cow::Borrowed(text))
            .into_owned()
    }

    const ALL: [&str; 5] = ["email", "phone", "url", "ip", "card"];

    #[test]
    fn detected_spans_become_placeholders() {
        for (text, expected) in [
            (
                "mail me at ana.perez+x@school.example.org.",
                "mail me at [email].",
            ),
            ("call +44 20 7946 0958 now", "call [phone] now"),
            (
                "or 555-123-4567, or (555) 123 4567",
                "or [phone], or [phone]",
            ),
            ("see https://example.com/a?b=1).", "see [url])."),
            (
                "see www.example.com and HTTP://X.io/p",
                "see [url] and [url]",
            ),
            ("my ip is 192.168.0.12", "my ip is [ip]"),
            ("card 4111 1111 1111 1111 thanks", "card [card] thanks"),
            (
                "a link with a mail https://x.io/u@y.com",
                "a link with a mail [url]",
            ),
        ] {
            assert_eq!(redact(&ALL, text), expected, "{text}");
        }
    }

    #[test]
    fn math_and_everyday_numbers_are_left_alone() {
        for text in [
            "What is 123456789 * 987654321?",
            "Is 3.14159265 pi?",
            "Solve 12 - 34 = x",
            "1 000 000 000 is a billion",
            "Dates like 2024-01-15",
            "version 1.2.3",
            "123456789-1",
            "user@localhost",
            "4111 1111 1111 1112 is not a card",
        ] {
            assert_eq!(redact(&ALL, text), text);
        }
    }

    #[test]
    fn only_the_kinds_asked_for_are_redacted_and_nothing_is_copied_without_a_find() {
        assert_eq!(
            redact(&["email"], "a@b.co https://x.io"),
            "[email] https://x.io"
        );
        let redactor = Redactor::new(&["email".to_owned()]);
        assert!(matches!(
            redactor.redact(Cow::Borrowed("no address here")),
            Cow::Borrowed(_)
        ));
        assert!(Redactor::default().is_off());
    }
}
