//! One pass over a plain-JSON request body: the common shape of a batch, read and checked event
//! by event without first splitting the body into raw items and then parsing each again.
//!
//! The reader takes only a strict subset of JSON: strings without escapes, integer values (or
//! decimal strings), each known field at most once, no other fields. For anything outside it the
//! whole body is left to the general path ([`CheckedEvent::from_json_str`] per item), which
//! reports every error. Within the subset each event gets exactly what that path would give it:
//! the same fields reach the same rules.

use std::borrow::Cow;

use crate::checked::CheckedEvent;
use crate::event::{PLAIN_NAMES, ValidationContext};
use crate::quantity::Quantity;
use crate::rules::{AttributePairs, Candidate, check};
use crate::violation::EventError;

/// One event of a body: its text as sent, and what validation made of it.
pub type ReadEvent<'a> = (&'a str, Result<CheckedEvent<'a>, EventError>);

/// Reads a plain-JSON body (one event object or an array of them) in one pass; `None` when the
/// body is outside the subset this reader takes (or empty), for the general path to handle.
pub fn read_plain_json<'a>(body: &'a str, ctx: &ValidationContext<'_>) -> Option<Vec<ReadEvent<'a>>> {
    let mut cursor = Cursor { text: body, at: 0 };
    cursor.skip_whitespace();
    let mut events = Vec::new();
    if cursor.peek()? == b'[' {
        cursor.at += 1;
        loop {
            cursor.skip_whitespace();
            events.push(cursor.event(ctx)?);
            cursor.skip_whitespace();
            match cursor.next()? {
                b',' => {}
                b']' => break,
                _ => return None,
            }
        }
    } else {
        events.push(cursor.event(ctx)?);
    }
    cursor.skip_whitespace();
    (cursor.at == body.len()).then_some(events)
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string with no escape and no control character (those take the general path).
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let rest = &self.text.as_bytes()[start..];
        let length = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[length] != b'"' {
            return None;
        }
        self.at = start + length + 1;
        self.text.get(start..start + length)
    }

    /// `null`, if it comes next.
    fn null(&mut self) -> bool {
        let found = self.text.as_bytes()[self.at..].starts_with(b"null");
        if found {
            self.at += 4;
        }
        found
    }

    fn optional_string(&mut self) -> Option<Option<&'a str>> {
        if self.null() { Some(None) } else { self.string().map(Some) }
    }

    /// An integer as JSON writes it (what serde reads as `u64` or `i64`), or a decimal string.
    fn quantity(&mut self) -> Option<Quantity> {
        if self.peek()? == b'"' {
            return self.string()?.parse().ok();
        }
        let start = self.at;
        let negative = self.peek()? == b'-';
        if negative {
            self.at += 1;
        }
        let digits = self.text.as_bytes()[self.at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let leading_zero = digits > 1 && self.peek()? == b'0';
        self.at += digits;
        if digits == 0 || leading_zero || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let text = &self.text[start..self.at];
        if negative {
            text.parse::<i64>().ok().map(Quantity::from)
        } else {
            text.parse::<u64>().ok().map(Quantity::from)
        }
    }

    fn attributes(&mut self) -> Option<AttributePairs<'a>> {
        if self.null() {
            return Some(Vec::new());
        }
        self.expect(b'{')?;
        let mut pairs = Vec::new();
        self.skip_whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(pairs);
        }
        loop {
            let name = self.member_name()?;
            pairs.push((Cow::Borrowed(name), Cow::Borrowed(self.string()?)));
            if self.object_ends()? {
                return Some(pairs);
            }
        }
    }

    /// An object member's name and the colon after it.
    fn member_name(&mut self) -> Option<&'a str> {
        self.skip_whitespace();
        let name = self.string()?;
        self.skip_whitespace();
        self.expect(b':')?;
        self.skip_whitespace();
        Some(name)
    }

    /// After a member: `,` (more follow) or `}` (the object ends).
    fn object_ends(&mut self) -> Option<bool> {
        self.skip_whitespace();
        match self.next()? {
            b',' => Some(false),
            b'}' => Some(true),
            _ => None,
        }
    }

    /// One event object, validated; `None` when it is outside the subset.
    fn event(&mut self, ctx: &ValidationContext<'_>) -> Option<ReadEvent<'a>> {
        let start = self.at;
        self.expect(b'{')?;
        let mut fields = Fields::default();
        loop {
            let name = self.member_name()?;
            let borrowed = |text: &'a str| Some(Cow::Borrowed(text));
            let fresh = match name {
                "id" => fields.id.replace(self.string()?).is_none(),
                "tenant_id" => fields.tenant_id.replace(self.string()?).is_none(),
                "metric" => fields.metric.replace(self.string()?).is_none(),
                "value" => fields.value.replace(self.quantity()?).is_none(),
                "timestamp" => fields.timestamp.replace(self.optional_string()?.and_then(borrowed)).is_none(),
                "source" => fields.source.replace(self.string()?).is_none(),
                "attributes" => fields.attributes.replace(self.attributes()?).is_none(),
                _ => false,
            };
            if !fresh {
                return None;
            }
            if self.object_ends()? {
                break;
            }
        }
        let timestamp = fields.timestamp.unwrap_or(None);
        let candidate = Candidate {
            id: Some(Cow::Borrowed(fields.id?)),
            tenant_id: Some(Cow::Borrowed(fields.tenant_id?)),
            metric: Some(Cow::Borrowed(fields.metric?)),
            value: Some(fields.value?),
            timestamp_given: timestamp.is_some(),
            timestamp,
            source: Some(Cow::Borrowed(fields.source?)),
            attributes: Some(fields.attributes.unwrap_or_default()),
        };
        Some((&self.text[start..self.at], check(candidate, &PLAIN_NAMES, ctx, Vec::new())))
    }
}

/// The fields of one event as read so far; a second occurrence of a field leaves the subset.
#[derive(Default)]
struct Fields<'a> {
    id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    metric: Option<&'a str>,
    value: Option<Quantity>,
    timestamp: Option<Option<Cow<'a, str>>>,
    source: Option<&'a str>,
    attributes: Option<AttributePairs<'a>>,
}
