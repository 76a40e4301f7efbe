//! A reader of plain JSON, by hand: the subset of JSON that providers write their chunks,
//! responses and usage objects in, read without `serde_json`'s visitor machinery.
//!
//! The readers that pick a few members out of a document (the chat chunk, the chat response
//! and request, the usage counts) first try this one, and fall back to their `serde_json` reader, which decides, at anything
//! outside the subset. Every method returns `None` for "not plain": the caller gives up, never
//! errs. What it accepts, it checks completely, so a document it reads is one `serde_json`
//! accepts, with the same values:
//!
//! - strings without control characters (the document is UTF-8, checked once by
//!   [`Plain::new`]): a member name without escapes, a skipped string with any escape but a
//!   `\u` escape of a surrogate, and for [`Plain::text`] any string `serde_json` decodes;
//! - numbers whose integer part has at most 19 digits and whose exponent is at most 250 either
//!   way (`serde_json` refuses a number that overflows an `f64`);
//! - `true`, `false`, `null`, and objects and arrays of such values, nested at most
//!   [`MAX_DEPTH`] deep below a member a reader skips (`serde_json` refuses documents nested
//!   more than 128 deep);
//! - JSON whitespace between tokens.
//!
//! Member names are compared as written: a name with an escape is not plain.

use std::borrow::Cow;

/// The deepest nesting [`Plain::skip`] passes over.
const MAX_DEPTH: u32 = 64;

/// A cursor over a JSON document that reads the plain subset (see the module's documentation).
pub(crate) struct Plain<'a> {
    text: &'a str,
    at: usize,
    depth: u32,
}

impl<'a> Plain<'a> {
    /// A cursor at the start of `bytes`; `None` when they are not UTF-8.
    pub(crate) fn new(bytes: &'a [u8]) -> Option<Self> {
        let text = crate::utf8(bytes)?;
        Some(Plain {
            text,
            at: 0,
            depth: 0,
        })
    }

    /// Where the cursor is: the index of the next byte to read.
    pub(crate) fn position(&self) -> usize {
        self.at
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after any whitespace, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes().get(self.at).copied()
    }

    /// Consumes `byte`, after any whitespace.
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Consumes a `:`, after any whitespace.
    pub(crate) fn colon(&mut self) -> Option<()> {
        self.eat(b':')
    }

    /// Consumes a `,`, after any whitespace.
    pub(crate) fn comma(&mut self) -> Option<()> {
        self.eat(b',')
    }

    /// Consumes a `}`, after any whitespace.
    pub(crate) fn close_object(&mut self) -> Option<()> {
        self.eat(b'}')
    }

    /// The end of the document: only whitespace is left.
    pub(crate) fn end(mut self) -> Option<()> {
        self.skip_whitespace();
        (self.at == self.text.len()).then_some(())
    }

    /// A string without escapes, borrowed.
    pub(crate) fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let len = plain_string_len(&self.bytes()[start..])?;
        self.at = start + len + 1;
        // Both ends are ASCII quotes, so character boundaries.
        Some(&self.text[start..start + len])
    }

    /// A string, borrowed when it has no escapes, else decoded by `serde_json` (which refuses
    /// a lone surrogate or an unknown escape: not plain).
    pub(crate) fn text(&mut self) -> Option<Cow<'a, str>> {
        self.skip_whitespace();
        let start = self.at;
        if let Some(text) = self.string() {
            return Some(Cow::Borrowed(text));
        }
        self.at = start;
        self.pass_string(true)?;
        let quoted = self.text.get(start..self.at)?;
        serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
    }

    /// Passes over a string with its escapes, checked as `serde_json` checks them but for the
    /// `\\u` escapes of surrogates: any of those with `surrogates` (the caller decodes the
    /// string, which checks them), none without (`serde_json` refuses a lone one; not plain).
    fn pass_string(&mut self, surrogates: bool) -> Option<()> {
        self.eat(b'"')?;
        let bytes = self.bytes();
        loop {
            let at = self.at + plain_string_end(bytes.get(self.at..)?)?;
            match bytes[at] {
                b'"' => {
                    self.at = at + 1;
                    return Some(());
                }
                b'\\' => match bytes.get(at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at = at + 2,
                    b'u' => {
                        let hex = self.text.get(at + 2..at + 6)?;
                        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return None;
                        }
                        let unit = u32::from_str_radix(hex, 16).ok()?;
                        if !surrogates && (0xD800..0xE000).contains(&unit) {
                            return None;
                        }
                        self.at = at + 6;
                    }
                    _ => return None,
                },
                // A control character.
                _ => return None,
            }
        }
    }

    /// Consumes `null` when it comes next; whether it did.
    pub(crate) fn null(&mut self) -> Option<bool> {
        self.skip_whitespace();
        let null = self.bytes()[self.at..].starts_with(b"null");
        if null {
            self.at += 4;
        }
        Some(null)
    }

    /// Any plain value, skipped: whether it was anything but `null`.
    pub(crate) fn non_null(&mut self) -> Option<bool> {
        if self.null()? {
            return Some(false);
        }
        self.skip()?;
        Some(true)
    }

    /// A non-negative integer within `u64`, written as JSON allows (no sign, no leading zero).
    /// What follows it is checked by the caller (a fraction or an exponent is not a `,`).
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.skip_whitespace();
        let bytes = self.bytes();
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(digit @ b'0'..=b'9') = bytes.get(self.at) {
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        (digits == 1 || (digits > 1 && bytes[start] != b'0')).then_some(value)
    }

    /// A number, skipped: an integer part of at most 19 digits, any fraction, and an exponent
    /// of at most 250 either way, so that its value is within what `serde_json` reads (a
    /// float overflowing `f64` is an error there; one too small to tell from 0 is 0).
    fn number(&mut self) -> Option<()> {
        let bytes = self.bytes();
        let digits = |this: &mut Self| {
            let start = this.at;
            while let Some(b'0'..=b'9') = bytes.get(this.at) {
                this.at += 1;
            }
            this.at - start
        };
        if bytes[self.at] == b'-' {
            self.at += 1;
        }
        let start = self.at;
        let whole = digits(self);
        if !(whole == 1 || (2..=19).contains(&whole) && bytes[start] != b'0') {
            return None;
        }
        if bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = bytes.get(self.at) {
                self.at += 1;
            }
            let start = self.at;
            let len = digits(self);
            let exponent = self.text[start..self.at].parse::<u32>().ok();
            if len == 0 || len > 3 || exponent? > 250 {
                return None;
            }
        }
        Some(())
    }

    /// An object: calls `member` with each member's name, the cursor at its value, which
    /// `member` must read.
    pub(crate) fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.sequence(b'{', b'}', |this| {
            let name = this.string()?;
            this.eat(b':')?;
            member(this, name)
        })
    }

    /// An array: calls `element` with the cursor at each element, which `element` must read.
    pub(crate) fn array(&mut self, element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.sequence(b'[', b']', element)
    }

    /// `open`, the items `item` reads separated by commas, `close`.
    fn sequence(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b if b == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Any plain value, skipped.
    pub(crate) fn skip(&mut self) -> Option<()> {
        let literal = |this: &mut Self, word: &[u8]| {
            this.bytes()[this.at..]
                .starts_with(word)
                .then(|| this.at += word.len())
        };
        match self.peek()? {
            b'"' => self.pass_string(false),
            b'{' | b'[' if self.depth >= MAX_DEPTH => None,
            b'{' => {
                self.depth += 1;
                self.object(|this, _| this.skip())?;
                self.depth -= 1;
                Some(())
            }
            b'[' => {
                self.depth += 1;
                self.array(Self::skip)?;
                self.depth -= 1;
                Some(())
            }
            b't' => literal(self, b"true"),
            b'f' => literal(self, b"false"),
            b'n' => literal(self, b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }
}

/// Where the string that `rest` starts inside ends (the index of its closing quote), if no byte
/// before it is a backslash or below 0x20 (which JSON allows only escaped).
fn plain_string_len(rest: &[u8]) -> Option<usize> {
    let at = plain_string_end(rest)?;
    (rest[at] == b'"').then_some(at)
}

/// The index of the first quote, backslash or byte below 0x20 in `rest`, if any. Names and
/// short values (5 to 30 bytes) are searched eight bytes at a time here, where `memchr2`'s set-up
/// would cost more than the search; what follows the first [`INLINE`] bytes (message contents)
/// by `memchr2` for the quote or backslash and a vectorized pass for the control characters
/// before it: about 0.5 instructions a byte, against 2 for the words. Bytes above 0x7f pass
/// (the document's UTF-8 is checked as a whole).
#[inline]
pub(crate) fn plain_string_end(rest: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let head = &rest[..rest.len().min(INLINE)];
    let mut tail = head;
    while let Some((word, next)) = tail.split_first_chunk::<8>() {
        let w = u64::from_le_bytes(*word);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        // The high bit of a byte is set where the byte is below 0x20 (it borrows when 0x20 is
        // taken from it, and has no high bit of its own), or is a quote or a backslash (zero
        // after the xor); bits above the first such byte may be set wrongly (a borrow), the
        // lowest one never is.
        let special = (w.wrapping_sub(ONES * 0x20) & !w
            | quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash)
            & HIGH;
        if special != 0 {
            return Some(head.len() - tail.len() + special.trailing_zeros() as usize / 8);
        }
        tail = next;
    }
    if rest.len() <= INLINE {
        return tail
            .iter()
            .position(|&b| matches!(b, b'"' | b'\\' | 0..0x20))
            .map(|i| head.len() - tail.len() + i);
    }
    // The head was whole words, all searched.
    far_string_end(&rest[INLINE..]).map(|i| INLINE + i)
}

/// [`plain_string_end`] past the first [`INLINE`] bytes, out of line: the short strings' search
/// stays small enough to be inlined where it is used.
#[inline(never)]
fn far_string_end(far: &[u8]) -> Option<usize> {
    let stop = memchr::memchr2(b'"', b'\\', far).unwrap_or(far.len());
    let before = &far[..stop];
    // No early exit, so the compiler makes it a vector loop; it runs once per long string.
    let control = before.iter().fold(0u8, |any, &b| any | u8::from(b < 0x20)) != 0;
    if control {
        before.iter().position(|&b| b < 0x20)
    } else {
        (stop < far.len()).then_some(stop)
    }
}

/// How many bytes of a string [`plain_string_end`] searches a word at a time (a multiple of 8).
const INLINE: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    /// The search agrees with a byte-by-byte one for every byte at every position, before and
    /// after a closing quote, in strings shorter than a word and longer than the part searched
    /// a word at a time:
    /// the zero-byte tests' borrows (a byte one away from a quote, a backslash or 0x20) and the
    /// high bit included.
    #[test]
    fn the_plain_string_search_agrees_with_a_byte_by_byte_one() {
        let reference = |rest: &[u8]| {
            rest.iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .filter(|&at| rest[at] == b'"')
        };
        // Short strings (words, then bytes), and long ones past the word-at-a-time head.
        for len in (0..20).chain([31, 32, 33, 39, 40, 41, 64, 100]) {
            for at in 0..=len {
                for byte in 0..=u8::MAX {
                    let mut rest = vec![b'a'; len];
                    rest.push(b'"');
                    rest.extend_from_slice(b"bc\\d");
                    rest[at] = byte;
                    assert_eq!(
                        plain_string_len(&rest),
                        reference(&rest),
                        "{byte:#04x} at {at} of {len}"
                    );
                    // Cut before the closing quote: no end.
                    let cut = &rest[..at.max(1).min(len)];
                    assert_eq!(
                        plain_string_len(cut),
                        reference(cut),
                        "cut {byte:#04x} at {at}"
                    );
                }
            }
        }
    }
}
