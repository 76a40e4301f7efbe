use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use guardrail_tower_core::sse::SseDecoder;
use guardrail_tower_core::{CallType, Error, StreamWatch, Usage, UsageFromEnd};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde_json::Value;

use crate::recorder::{Ending, Recorder};

/// Reads usage and errors from a response body as it passes, when no inner layer reports them.
pub(crate) enum Observer {
    /// A JSON body: scanned incrementally for its top-level `usage` (and `error`) members.
    Json(Box<JsonScanner>, CallType),
    /// An SSE stream: framed incrementally, its events read for usage and in-band errors.
    Sse {
        decoder: Box<SseDecoder>,
        watch: StreamWatch,
    },
}

impl Observer {
    pub(crate) fn json(call_type: CallType) -> Self {
        Observer::Json(Box::default(), call_type)
    }

    pub(crate) fn sse(call_type: CallType) -> Self {
        Observer::Sse {
            decoder: Box::new(SseDecoder::new()),
            watch: StreamWatch::new(call_type),
        }
    }

    /// Reads the next chunk of the body; `whole`: it is all the body has left to send (its
    /// exact length said so).
    fn observe(&mut self, data: &Bytes, whole: bool, recorder: &mut Recorder) {
        match self {
            // An error's `error` member is read by the forward scan; a success's usage may be
            // found from the end when the document is in one piece.
            Observer::Json(scanner, call_type) if whole && error_status(recorder).is_none() => {
                scanner.push_whole(data, *call_type)
            }
            Observer::Json(scanner, _) => scanner.push(data),
            Observer::Sse { decoder, watch } => {
                // Whole `data:` events that mention neither usage nor an error are not framed.
                if decoder.is_whole_data_events(data) && watch.ignores_data_events(data) {
                    return;
                }
                decoder.push(data.clone());
                while let Ok(Some(event)) = decoder.next_raw() {
                    watch.observe_raw(&event, &recorder.report);
                }
            }
        }
    }

    fn finish(&mut self, recorder: &mut Recorder) {
        let Observer::Json(scanner, call_type) = self else {
            return;
        };
        if let Some(usage) = scanner.counted_usage(*call_type) {
            recorder.usage = Some(usage);
        }
        let Some(status) = error_status(recorder) else {
            return;
        };
        if recorder.response_error.is_some() {
            return;
        }
        let Some(error) = scanner
            .error()
            .and_then(|e| serde_json::from_slice::<Value>(e).ok())
        else {
            return;
        };
        if let Some(message) = error
            .get("message")
            .or(Some(&error))
            .and_then(Value::as_str)
        {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            recorder.response_error = Some(Error::new(status, message.to_owned()));
        }
    }
}

/// The response's status when it is an error's (400 and up): its body's `error` member is then
/// read, by the forward scan ([`Observer::observe`] and [`Observer::finish`] ask this one
/// function, so a body is never read from its end when its error is wanted).
fn error_status(recorder: &Recorder) -> Option<u16> {
    recorder.status.filter(|&status| status >= 400)
}

/// The most bytes of one captured member value (`usage`, `error`): a real `usage` object is a
/// few hundred bytes; anything larger is not kept.
const MAX_MEMBER: usize = 64 * 1024;

/// The longest member name kept for comparison (longer names are none of the ones we want).
const MAX_KEY: usize = 16;

/// An incremental scanner over a JSON document that keeps only the raw text of its top-level
/// `usage` and `error` members, however large the document and however it is split into
/// chunks: memory is bounded by [`MAX_MEMBER`] per captured member, whatever the body's size.
///
/// It follows the JSON grammar just far enough to know where each top-level member starts and
/// ends (strings with their escapes, nesting of objects and arrays); the captured values are
/// parsed by `serde_json` at the end, so a malformed value is simply not used. A document that
/// is not an object has no usage. When a member appears twice, the last one counts (as in the
/// JSON parsers clients use).
///
/// It is on the path of every non-streamed response, so it skips rather than steps: a string
/// (a member name or a value) is searched for its closing quote or next backslash at once,
/// bytes outside strings are classified by a table, and a member name is kept in a fixed
/// array (no allocation) and compared as bytes.
#[derive(Debug, Default)]
pub(crate) struct JsonScanner {
    state: ScanState,
    /// The current member's name (its first [`MAX_KEY`] bytes, escapes not decoded).
    key: [u8; MAX_KEY],
    key_len: usize,
    key_too_long: bool,
    /// Which member the current value belongs to, if it is one we keep.
    capturing: Option<Member>,
    value: Vec<u8>,
    value_too_long: bool,
    /// Nesting depth inside the current member's value.
    depth: usize,
    in_string: bool,
    escaped: bool,
    usage: Option<Bytes>,
    /// The usage when it was read at once from the document's end
    /// ([`Usage::from_document_end`]).
    read_usage: Option<Usage>,
    error: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Usage,
    Error,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    /// Before the document's first byte.
    #[default]
    Start,
    /// Inside the top-level object, before a member name (or its end).
    BeforeKey,
    /// Inside a member name.
    Key,
    /// After a member name, before the `:`.
    AfterKey,
    /// After the `:`, before the value.
    BeforeValue,
    /// Inside a value (a string, a nested object or array, or a scalar).
    Value,
    /// After a value, before `,` or `}`.
    AfterValue,
    /// The top-level object ended, or the document is not an object: nothing more to read.
    Done,
}

/// What a byte means to [`JsonScanner::scan_value`] outside strings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Cannot change the nesting or end a value below the top level: digits, letters, `:`,
    /// `,` and whitespace inside a value, anything else.
    Plain,
    Quote,
    Open,
    Close,
    /// `,` or whitespace: ends a scalar at the top level.
    Delimiter,
}

const CLASSES: [Class; 256] = {
    let mut table = [Class::Plain; 256];
    table[b'"' as usize] = Class::Quote;
    table[b'{' as usize] = Class::Open;
    table[b'[' as usize] = Class::Open;
    table[b'}' as usize] = Class::Close;
    table[b']' as usize] = Class::Close;
    table[b',' as usize] = Class::Delimiter;
    table[b' ' as usize] = Class::Delimiter;
    table[b'\t' as usize] = Class::Delimiter;
    table[b'\n' as usize] = Class::Delimiter;
    table[b'\r' as usize] = Class::Delimiter;
    // Not JSON whitespace, but `u8::is_ascii_whitespace` (which the top-level states use).
    table[0x0C] = Class::Delimiter;
    table
};

/// The first `"` or `\` in `bytes`. Most strings of a response (member names, ids, short
/// values) are short, and `memchr2` costs more to set up than they take to search, so the
/// first 64 bytes are searched a word at a time here and only what follows by `memchr2`.
#[inline]
fn quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    /// How far the word-at-a-time search goes before `memchr2` takes over.
    const INLINE: usize = 64;
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    let mut words = bytes[..bytes.len().min(INLINE)].chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let (q, b) = (word ^ QUOTES, word ^ BACKSLASHES);
        // The high bit of each byte that was zero (a match), and possibly of bytes above a
        // match (a borrow); the lowest set bit is always the first match.
        let found = (q.wrapping_sub(ONES) & !q | b.wrapping_sub(ONES) & !b) & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    if let Some(i) = words
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
    {
        return Some(at + i);
    }
    at += words.remainder().len();
    memchr::memchr2(b'"', b'\\', &bytes[at..]).map(|i| at + i)
}

impl JsonScanner {
    /// The raw text of the last complete top-level `usage` member, if any.
    pub(crate) fn usage(&self) -> Option<&[u8]> {
        self.usage.as_deref()
    }

    /// The usage of the last complete top-level `usage` member, if it has counts: read at once
    /// from the document's end, or from its raw text.
    pub(crate) fn counted_usage(&self, call_type: CallType) -> Option<Usage> {
        self.read_usage.or_else(|| {
            self.usage()
                .and_then(|u| Usage::from_usage_bytes(call_type, u))
        })
    }

    /// The raw text of the last complete top-level `error` member, if any.
    pub(crate) fn error(&self) -> Option<&[u8]> {
        self.error.as_deref()
    }

    /// Reads what is left of the document, all of it in `doc`: its `usage` found from the end
    /// when nothing but whitespace came before, else scanned as [`push`](JsonScanner::push)
    /// scans. From the end, the member (the last in an OpenAI response but for a member or two)
    /// is searched for and read at once ([`Usage::from_document_end`]); if that cannot tell,
    /// the members are walked backward to it ([`usage_from_end`]). Either passes over a few
    /// hundred bytes where the scan passes over the whole document.
    pub(crate) fn push_whole(&mut self, doc: &Bytes, call_type: CallType) {
        if self.state == ScanState::Start {
            if let UsageFromEnd::Member(usage) = Usage::from_document_end(call_type, doc) {
                self.read_usage = usage;
                self.state = ScanState::Done;
                return;
            }
            match usage_from_end(doc) {
                FromEnd::Usage(usage) => {
                    self.usage = Some(doc.slice_ref(usage));
                    self.state = ScanState::Done;
                    return;
                }
                FromEnd::Absent => {
                    self.state = ScanState::Done;
                    return;
                }
                FromEnd::Unknown => {}
            }
        }
        self.push(doc);
    }

    /// Scans the next chunk of the document.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let mut i = 0;
        while i < chunk.len() {
            match self.state {
                ScanState::Done => return,
                ScanState::Value => {
                    i += self.scan_value(&chunk[i..]);
                    continue;
                }
                ScanState::Key => {
                    i += self.scan_key(&chunk[i..]);
                    continue;
                }
                _ => {}
            }
            let b = chunk[i];
            i += 1;
            match self.state {
                ScanState::Start => match b {
                    b'{' => self.state = ScanState::BeforeKey,
                    b if b.is_ascii_whitespace() => {}
                    // A byte-order mark may precede the document.
                    0xEF | 0xBB | 0xBF => {}
                    _ => self.state = ScanState::Done,
                },
                ScanState::BeforeKey => match b {
                    b'"' => {
                        self.key_len = 0;
                        self.key_too_long = false;
                        self.escaped = false;
                        self.state = ScanState::Key;
                    }
                    b'}' => self.state = ScanState::Done,
                    b',' => {}
                    b if b.is_ascii_whitespace() => {}
                    _ => self.state = ScanState::Done,
                },
                ScanState::AfterKey => match b {
                    b':' => self.state = ScanState::BeforeValue,
                    b if b.is_ascii_whitespace() => {}
                    _ => self.state = ScanState::Done,
                },
                ScanState::BeforeValue => {
                    if b.is_ascii_whitespace() {
                        continue;
                    }
                    self.capturing = self.member();
                    self.value.clear();
                    self.value_too_long = false;
                    self.depth = 0;
                    self.in_string = false;
                    self.escaped = false;
                    self.state = ScanState::Value;
                    // The value's first byte is scanned as part of the value.
                    i -= 1;
                }
                ScanState::AfterValue => match b {
                    b',' => self.state = ScanState::BeforeKey,
                    b'}' => self.state = ScanState::Done,
                    b if b.is_ascii_whitespace() => {}
                    _ => self.state = ScanState::Done,
                },
                ScanState::Key | ScanState::Value | ScanState::Done => {
                    unreachable!("handled above")
                }
            }
        }
    }

    /// Scans member-name bytes from the start of `chunk`; returns how many it consumed (all of
    /// them, or up to and including the closing quote).
    fn scan_key(&mut self, chunk: &[u8]) -> usize {
        let mut i = 0;
        while i < chunk.len() {
            if self.escaped {
                // The escaped byte is kept as it is; `member` decodes the escapes.
                self.escaped = false;
                self.push_key(&chunk[i..=i]);
                i += 1;
                continue;
            }
            let Some(at) = quote_or_backslash(&chunk[i..]) else {
                self.push_key(&chunk[i..]);
                return chunk.len();
            };
            self.push_key(&chunk[i..i + at]);
            i += at;
            if chunk[i] == b'"' {
                self.state = ScanState::AfterKey;
                return i + 1;
            }
            self.escaped = true;
            self.push_key(b"\\");
            i += 1;
        }
        i
    }

    fn push_key(&mut self, bytes: &[u8]) {
        let end = self.key_len + bytes.len();
        if end <= MAX_KEY {
            self.key[self.key_len..end].copy_from_slice(bytes);
            self.key_len = end;
        } else {
            self.key_too_long = true;
        }
    }

    /// The member the current name stands for, if it is one we keep (escapes decoded, so
    /// `"\u0075sage"` is `usage` too).
    fn member(&self) -> Option<Member> {
        if self.key_too_long {
            return None;
        }
        member_named(&self.key[..self.key_len])
    }

    /// Scans value bytes from the start of `chunk`; returns how many it consumed (all of them,
    /// or up to and including the value's last byte).
    fn scan_value(&mut self, chunk: &[u8]) -> usize {
        let mut end = None;
        let mut i = 0;
        while i < chunk.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                // Skip to the next quote or backslash at once.
                let Some(at) = quote_or_backslash(&chunk[i..]) else {
                    break;
                };
                i += at;
                if chunk[i] == b'\\' {
                    self.escaped = true;
                } else {
                    self.in_string = false;
                    if self.depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                }
                i += 1;
                continue;
            }
            match CLASSES[usize::from(chunk[i])] {
                Class::Plain => {}
                Class::Quote => self.in_string = true,
                Class::Open => self.depth += 1,
                Class::Close if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                }
                // A scalar ends at the delimiter after it (a `,` or `}` belongs to the object).
                Class::Close | Class::Delimiter if self.depth == 0 => {
                    end = Some(i);
                    break;
                }
                Class::Close | Class::Delimiter => {}
            }
            i += 1;
        }
        let consumed = end.unwrap_or(chunk.len());
        if self.capturing.is_some() && !self.value_too_long {
            if self.value.len() + consumed > MAX_MEMBER {
                self.value_too_long = true;
                self.value = Vec::new();
            } else {
                self.value.extend_from_slice(&chunk[..consumed]);
            }
        }
        if end.is_some() {
            match self.capturing.take() {
                Some(Member::Usage) if !self.value_too_long => {
                    self.usage = Some(Bytes::from(std::mem::take(&mut self.value)));
                }
                Some(Member::Error) if !self.value_too_long => {
                    self.error = Some(std::mem::take(&mut self.value));
                }
                _ => {}
            }
            self.state = ScanState::AfterValue;
        }
        consumed
    }
}

/// The member a name (as written, escapes not decoded) stands for, if it is one we keep: escapes
/// are decoded, so `"\u0075sage"` is `usage` too; a name longer than [`MAX_KEY`] bytes as
/// written is none of them.
fn member_named(key: &[u8]) -> Option<Member> {
    if key.len() > MAX_KEY {
        return None;
    }
    let decoded;
    let name = if key.contains(&b'\\') {
        let mut quoted = Vec::with_capacity(key.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(key);
        quoted.push(b'"');
        decoded = serde_json::from_slice::<String>(&quoted).ok()?;
        decoded.as_bytes()
    } else {
        key
    };
    match name {
        b"usage" => Some(Member::Usage),
        b"error" => Some(Member::Error),
        _ => None,
    }
}

/// What [`usage_from_end`] found.
#[derive(Debug, PartialEq, Eq)]
enum FromEnd<'a> {
    /// The value of the last top-level `usage` member, as written.
    Usage(&'a [u8]),
    /// The document is an object without a top-level `usage` member.
    Absent,
    /// The walk met what it does not read (not an object, not JSON, a value too large to
    /// keep): the forward scan decides.
    Unknown,
}

/// The top-level `usage` member of a whole JSON document, found by walking its members
/// backward from the closing brace: each member's value passed over whole (a string to its
/// opening quote, an object or array to its opening bracket, strings inside skipped), then
/// its name read. The last `usage` member is the first one met, the one the forward scan
/// keeps. For a valid JSON document the answer is the forward scan's; for anything the walk
/// does not expect, it says it does not know. It reads only what it walks: the members before
/// the last `usage` are not looked at, so `doc` must be the whole document (a prefix cut after
/// a nested `usage` object would show that object as a top-level member).
fn usage_from_end(doc: &[u8]) -> FromEnd<'_> {
    let Some(open) = doc
        .iter()
        .position(|&b| !(b.is_ascii_whitespace() || matches!(b, 0xEF | 0xBB | 0xBF)))
    else {
        return FromEnd::Unknown;
    };
    let close = back_over_space(doc, doc.len());
    if doc[open] != b'{' || close <= open + 1 || doc[close - 1] != b'}' {
        return FromEnd::Unknown;
    }
    // One past the last byte of the member to read next.
    let mut end = back_over_space(doc, close - 1);
    if end == open + 1 {
        return FromEnd::Absent;
    }
    loop {
        let Some(start) = value_start(doc, end).filter(|&start| start > open) else {
            return FromEnd::Unknown;
        };
        let colon = back_over_space(doc, start);
        if colon <= open + 1 || doc[colon - 1] != b':' {
            return FromEnd::Unknown;
        }
        let name_end = back_over_space(doc, colon - 1);
        if doc[name_end - 1] != b'"' {
            return FromEnd::Unknown;
        }
        let Some(name_start) = string_start(doc, name_end - 1).filter(|&at| at > open) else {
            return FromEnd::Unknown;
        };
        if member_named(&doc[name_start + 1..name_end - 1]) == Some(Member::Usage) {
            return if end - start > MAX_MEMBER {
                FromEnd::Unknown
            } else {
                FromEnd::Usage(&doc[start..end])
            };
        }
        let before = back_over_space(doc, name_start) - 1;
        match doc[before] {
            b',' if before > open => end = back_over_space(doc, before),
            b'{' if before == open => return FromEnd::Absent,
            _ => return FromEnd::Unknown,
        }
    }
}

/// `at` moved back over whitespace: one past the last byte before `at` that is not.
fn back_over_space(doc: &[u8], mut at: usize) -> usize {
    while at > 0 && doc[at - 1].is_ascii_whitespace() {
        at -= 1;
    }
    at
}

/// Where the value that ends just before `end` starts: a string at its opening quote, an
/// object or array at its opening bracket, a scalar after the delimiter before it.
fn value_start(doc: &[u8], end: usize) -> Option<usize> {
    match doc[end.checked_sub(1)?] {
        b'"' => string_start(doc, end - 1),
        b'}' | b']' => {
            let mut depth = 0usize;
            let mut at = end;
            while at > 0 {
                at -= 1;
                match doc[at] {
                    b'}' | b']' => depth += 1,
                    b'{' | b'[' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at);
                        }
                    }
                    b'"' => at = string_start(doc, at)?,
                    _ => {}
                }
            }
            None
        }
        _ => {
            let start = doc[..end]
                .iter()
                .rposition(|&b| {
                    matches!(b, b',' | b':' | b'[' | b'{' | b'"' | b'}' | b']')
                        || b.is_ascii_whitespace()
                })
                .map_or(0, |at| at + 1);
            (start < end).then_some(start)
        }
    }
}

/// The opening quote of the string whose closing quote is at `close`: the nearest quote before
/// it that is not escaped (not after an odd run of backslashes).
fn string_start(doc: &[u8], close: usize) -> Option<usize> {
    let mut end = close;
    loop {
        let quote = last_quote(&doc[..end])?;
        let backslashes = doc[..quote]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            return Some(quote);
        }
        end = quote;
    }
}

/// The last `"` in `bytes`. The strings a backward walk passes are mostly short (names, ids,
/// numbers' neighbours), so the last 64 bytes are searched a word at a time and only what
/// comes before by `memrchr`.
#[inline]
fn last_quote(bytes: &[u8]) -> Option<usize> {
    /// How far the word-at-a-time search goes before `memrchr` takes over.
    const INLINE: usize = 64;
    const LOW: u64 = u64::from_ne_bytes([0x7F; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    let mut end = bytes.len();
    let stop = end.saturating_sub(INLINE);
    while end >= stop + 8 {
        let word = u64::from_le_bytes(bytes[end - 8..end].try_into().expect("eight bytes"));
        let x = word ^ QUOTES;
        // The high bit of each byte that was a quote (zero after the xor), and of no other:
        // no carry crosses a byte, so the highest set bit is the last quote.
        let found = !((x & LOW).wrapping_add(LOW) | x | LOW);
        if found != 0 {
            return Some(end - 8 + (63 - found.leading_zeros() as usize) / 8);
        }
        end -= 8;
    }
    if end < 8 {
        return bytes[..end].iter().rposition(|&b| b == b'"');
    }
    memchr::memrchr(b'"', &bytes[..end])
}

pin_project! {
    /// The response body of [`SpendLog`](crate::SpendLog): the inner body, unchanged and
    /// undelayed, observed as it passes. The request's record is completed exactly once: when
    /// the body ends (`None`, trailers, a frame after which it reports its end, or the last of
    /// the bytes its exact size hint announced: a server stops polling there, and an inner
    /// body need not say it ended), when it fails, or when it is dropped before the end (the
    /// client went away).
    pub struct SpendLogBody<B> {
        #[pin]
        body: Inner<B>,
        // The bytes still to come when the body announced an exact length.
        remaining: Option<u64>,
        recorder: Option<Recorder>,
        observer: Option<Observer>,
    }

    impl<B> PinnedDrop for SpendLogBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if let Some(recorder) = this.recorder.take() {
                // The inner body goes first: the layers inside may start their last checks
                // (monitor guardrails on what arrived) as it drops, and the record waits for
                // them.
                this.body.set(Inner::Dropped);
                recorder.finish(Ending::Disconnected);
            }
        }
    }
}

pin_project! {
    /// The inner body, until it is dropped ahead of the record.
    #[project = InnerProj]
    enum Inner<B> {
        Body {
            #[pin]
            body: B,
        },
        Dropped,
    }
}

impl<B: Body> Inner<B> {
    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Body { body } => body.is_end_stream(),
            Inner::Dropped => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inner::Body { body } => body.size_hint(),
            Inner::Dropped => SizeHint::with_exact(0),
        }
    }
}

impl<B: Body> SpendLogBody<B> {
    pub(crate) fn new(body: B, recorder: Recorder, observer: Option<Observer>) -> Self {
        let ended = body.is_end_stream();
        let remaining = body.size_hint().exact();
        let mut this = SpendLogBody {
            body: Inner::Body { body },
            remaining,
            recorder: Some(recorder),
            observer,
        };
        if ended {
            // No body at all: the request is complete now.
            if let Some(recorder) = this.recorder.take() {
                recorder.finish(Ending::Complete);
            }
        }
        this
    }
}

impl<B> Body for SpendLogBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = match this.body.as_mut().project() {
            InnerProj::Body { body } => ready!(body.poll_frame(cx)),
            InnerProj::Dropped => None,
        };
        let Some(recorder) = this.recorder.as_mut() else {
            return Poll::Ready(polled);
        };
        let ended = match &polled {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => {
                    if !data.is_empty() && recorder.first_byte.is_none() {
                        recorder.first_byte = Some(SystemTime::now());
                    }
                    if let Some(observer) = this.observer.as_mut() {
                        let whole = *this.remaining == Some(data.len() as u64);
                        observer.observe(data, whole, recorder);
                    }
                    let all_sent = match this.remaining.as_mut() {
                        Some(remaining) => {
                            *remaining = remaining.saturating_sub(data.len() as u64);
                            *remaining == 0
                        }
                        None => false,
                    };
                    all_sent || this.body.as_ref().get_ref().is_end_stream()
                }
                // Trailers come last.
                None => true,
            },
            Some(Err(err)) => {
                let message = err.to_string();
                if let Some(recorder) = this.recorder.take() {
                    recorder.finish(Ending::BodyError(message));
                }
                return Poll::Ready(polled);
            }
            None => true,
        };
        if ended {
            if let Some(mut recorder) = this.recorder.take() {
                if let Some(observer) = this.observer.as_mut() {
                    observer.finish(&mut recorder);
                }
                recorder.finish(Ending::Complete);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> fmt::Debug for SpendLogBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendLogBody")
            .field("recorder", &self.recorder)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use bytes::Bytes;
    use serde_json::json;

    use super::{CallType, FromEnd, JsonScanner, Usage, usage_from_end};

    fn scan(chunks: &[&[u8]]) -> (Option<String>, Option<String>) {
        let mut scanner = JsonScanner::default();
        for chunk in chunks {
            scanner.push(chunk);
        }
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
        (text(scanner.usage()), text(scanner.error()))
    }

    /// A body with decoys: `usage` inside strings, nested `usage` objects, member names with
    /// escapes (one of them `usage`, written with escapes, before the last) or longer than any
    /// name kept, escaped quotes and brackets in strings, scalars of every kind, then the real
    /// top-level `usage`.
    const BODY: &str = r#" {"id":"c-1","object":"chat.completion","n":-1.5e3,"ok":true,"none":null,
        "us\"age\\":{"usage":1},"a_member_name_longer_than_usage":[{"usage":2}],"\u0075sag\u0065":{"prompt_tokens":0},
        "choices":[{"index":0,"message":{"role":"assistant","content":"say \"usage\":{\"prompt_tokens\":99} ]}{ \\"},
        "usage":{"prompt_tokens":98}}],"meta":{"usage":{"total_tokens":97}},
        "usage" : {"prompt_tokens":3,"completion_tokens":5,"total_tokens":8,"details":{"cached":[1,2]}} ,
        "tail":"\u0022}"} "#;

    const USAGE: &str =
        r#"{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8,"details":{"cached":[1,2]}}"#;

    #[test]
    fn finds_the_top_level_usage_only() {
        assert_eq!(scan(&[BODY.as_bytes()]).0.as_deref(), Some(USAGE));
    }

    #[test]
    fn finds_usage_split_at_every_byte() {
        let bytes = BODY.as_bytes();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(scan(&[a, b]).0.as_deref(), Some(USAGE), "split at {at}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            scan(&singles).0.as_deref(),
            Some(USAGE),
            "one byte per chunk"
        );
        for at in 0..bytes.len() {
            for len in [2, 3, 7] {
                let end = (at + len).min(bytes.len());
                let (head, rest) = bytes.split_at(at);
                let (mid, tail) = rest.split_at(end - at);
                assert_eq!(scan(&[head, mid, tail]).0.as_deref(), Some(USAGE));
            }
        }
    }

    #[test]
    fn scalars_strings_and_escaped_names_as_members() {
        assert_eq!(
            scan(&[br#"{"usage":7}"#]).0.as_deref(),
            Some("7"),
            "a scalar is captured as it is (and then not used as usage)"
        );
        assert_eq!(
            scan(&[br#"{"a":1,"\u0075sage":{"total_tokens":2}}"#])
                .0
                .as_deref(),
            Some(r#"{"total_tokens":2}"#)
        );
        assert_eq!(
            scan(&[br#"{"usage":{"total_tokens":1},"usage":{"total_tokens":2}}"#])
                .0
                .as_deref(),
            Some(r#"{"total_tokens":2}"#),
            "the last one counts"
        );
        assert_eq!(
            scan(&[br#"{"error":{"message":"no \"way\""}}"#])
                .1
                .as_deref(),
            Some(r#"{"message":"no \"way\""}"#)
        );
        assert_eq!(
            scan(&[br#"{"error":"plain"}"#]).1.as_deref(),
            Some(r#""plain""#)
        );
    }

    #[test]
    fn no_usage_in_documents_that_are_not_objects_or_hide_it() {
        assert_eq!(scan(&[br#"[{"usage":{"total_tokens":1}}]"#]).0, None);
        assert_eq!(scan(&[br#""usage""#]).0, None);
        assert_eq!(scan(&[br#"{"data":{"usage":{"total_tokens":1}}}"#]).0, None);
        assert_eq!(scan(&[br#"{"usage_x":{"total_tokens":1}}"#]).0, None);
        // Cut off inside the value: incomplete, not used.
        assert_eq!(scan(&[br#"{"usage":{"total_tokens":1"#]).0, None);
        assert_eq!(scan(&[b""]).0, None);
    }

    /// The walk from the end finds what the scan finds, and says so only when it read the
    /// document: the decoys of [`BODY`], escaped quotes after runs of backslashes, names with
    /// escapes, repeated members, whitespace everywhere a document may have it.
    #[test]
    fn the_walk_from_the_end_finds_the_usage_the_scan_finds() {
        let found = |doc: &str| match usage_from_end(doc.as_bytes()) {
            FromEnd::Usage(usage) => Some(String::from_utf8(usage.to_vec()).unwrap()),
            other => panic!("{other:?} for {doc}"),
        };
        assert_eq!(found(BODY).as_deref(), Some(USAGE));
        for doc in [
            r#"{"usage":7}"#,
            r#"{"a":1,"\u0075sage":{"total_tokens":2}}"#,
            r#"{"usage":{"total_tokens":1},"usage":{"total_tokens":2}}"#,
            r#"{"usage":{"s":"\\","t":"\\\"]}"},"b":"\\\\","c":"\"x\\"}"#,
            "\u{feff}\n {\n \"usage\" :\t{ \"total_tokens\" : [ 1 , {} ] } \r\n, \"z\": [ ] \n}\n",
            r#"{"usage":null,"n":-1.5e-3,"t":true,"f":false}"#,
            r#"{"usage":"{\"total_tokens\":1}"}"#,
            // The members before the last `usage` are not read (the scan passes over a
            // leading comma too).
            r#"{,"usage":1}"#,
        ] {
            assert_eq!(found(doc), scan(&[doc.as_bytes()]).0, "{doc}");
        }
        for doc in [
            "{}",
            " { } ",
            r#"{"data":{"usage":{"total_tokens":1}},"usage_x":1}"#,
            r#"{"a":"\"usage\":{}"}"#,
        ] {
            assert_eq!(usage_from_end(doc.as_bytes()), FromEnd::Absent, "{doc}");
            assert_eq!(scan(&[doc.as_bytes()]).0, None, "{doc}");
        }
        // Not objects, not JSON, cut off, trailing bytes: the forward scan decides.
        for doc in [
            "",
            "  ",
            r#"[{"usage":{"total_tokens":1}}]"#,
            r#""usage""#,
            r#"{"usage":{"total_tokens":1}"#,
            r#"{"usage":{"total_tokens":1}} x"#,
            r#"x{"usage":{"total_tokens":1}}"#,
            r#"{:1}"#,
            r#"{"a":1,:1}"#,
            r#"{"usage":}"#,
            r#"{"usage":{"pad":"]"}"#,
        ] {
            assert_eq!(usage_from_end(doc.as_bytes()), FromEnd::Unknown, "{doc}");
        }
        let huge = format!(
            r#"{{"usage":{{"pad":"{}"}}}}"#,
            "x".repeat(super::MAX_MEMBER)
        );
        assert_eq!(usage_from_end(huge.as_bytes()), FromEnd::Unknown);
    }

    /// A document in one piece is read from the end, with the same answer as the scan; one
    /// that the walk does not read, and one after a first chunk, is scanned.
    #[test]
    fn a_whole_document_is_read_from_the_end_else_scanned() {
        let whole = |first: &[u8], doc: &str| {
            let mut scanner = JsonScanner::default();
            scanner.push(first);
            scanner.push_whole(
                &Bytes::copy_from_slice(doc.as_bytes()),
                CallType::ChatCompletions,
            );
            scanner
                .usage()
                .map(|u| String::from_utf8(u.to_vec()).unwrap())
        };
        assert_eq!(whole(b"", BODY).as_deref(), Some(USAGE));
        assert_eq!(whole(b"  ", BODY).as_deref(), Some(USAGE));
        // Read from the end, the usage is a slice of the frame, not a copy the scan made.
        let doc = Bytes::from_static(BODY.as_bytes());
        let mut scanner = JsonScanner::default();
        scanner.push_whole(&doc, CallType::ChatCompletions);
        let usage = scanner.usage().unwrap();
        assert!(doc.as_ptr_range().contains(&usage.as_ptr()));
        let (head, tail) = BODY.split_at(40);
        assert_eq!(whole(head.as_bytes(), tail).as_deref(), Some(USAGE));
        assert_eq!(
            whole(b"", r#"{"usage":{"total_tokens":1}} x"#).as_deref(),
            Some(r#"{"total_tokens":1}"#),
            "trailing bytes: scanned, as before"
        );
        assert_eq!(whole(b"", r#"{"data":{"usage":1}}"#), None);
        // A usage of counts only (the common shape) is read at once, without its raw text.
        let mut scanner = JsonScanner::default();
        scanner.push_whole(
            &Bytes::from_static(
                br#"{"id":"c","usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":0}},"service_tier":"default"}"#,
            ),
            CallType::ChatCompletions,
        );
        assert_eq!(scanner.usage(), None);
        assert_eq!(
            scanner.counted_usage(CallType::ChatCompletions),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 5,
                total_tokens: 8
            })
        );
    }

    #[test]
    fn memory_stays_bounded_for_huge_members() {
        let mut scanner = JsonScanner::default();
        scanner.push(br#"{"usage":{"pad":""#);
        let pad = vec![b'x'; 1024 * 1024];
        for _ in 0..4 {
            scanner.push(&pad);
        }
        scanner.push(br#""},"choices":[],"#);
        assert!(scanner.value.capacity() <= super::MAX_MEMBER * 2);
        scanner.push(br#""usage":{"total_tokens":4}}"#);
        assert_eq!(scanner.usage(), Some(&br#"{"total_tokens":4}"#[..]));
    }

    /// Long strings (past the inline search, into `memchr2`) with escaped quotes and
    /// backslashes on both sides of the boundary, split at every byte.
    #[test]
    fn long_strings_with_escapes_split_at_every_byte() {
        let long = format!(
            "{}\\\"{}\\\\\\\"usage\\\":{{}}{}",
            "x".repeat(30),
            "y".repeat(40),
            "z".repeat(70)
        );
        let body = format!(
            r#"{{"a":"{long}","b":[{{"c":"{long}"}}],"usage":{{"total_tokens":1,"s":"{long}"}}}}"#
        );
        let usage = format!(r#"{{"total_tokens":1,"s":"{long}"}}"#);
        let bytes = body.as_bytes();
        assert_eq!(scan(&[bytes]).0.as_deref(), Some(&*usage));
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(scan(&[a, b]).0.as_deref(), Some(&*usage), "split at {at}");
        }
    }

    /// The word-at-a-time search finds the first quote or backslash wherever it is (in a
    /// word, in the tail, past the inline part), next to bytes that differ from them by one
    /// bit or by the high bit (the trick's borrows), and nothing where there is none.
    #[test]
    fn the_string_search_finds_the_first_quote_or_backslash() {
        let fillers = [
            b'x',
            b'"' ^ 0x80,
            b'\\' ^ 0x80,
            b'"' ^ 1,
            b'\\' ^ 1,
            0x00,
            0xFF,
            0x21,
        ];
        for len in 0..150 {
            for filler in fillers {
                let mut bytes = vec![filler; len];
                assert_eq!(
                    super::quote_or_backslash(&bytes),
                    None,
                    "{len} of {filler:#x}"
                );
                for at in 0..len {
                    for found in [b'"', b'\\'] {
                        bytes[at] = found;
                        if at + 1 < len {
                            // A later match does not hide the first.
                            bytes[len - 1] = b'"';
                        }
                        assert_eq!(super::quote_or_backslash(&bytes), Some(at), "{len} {at}");
                        bytes.fill(filler);
                    }
                }
            }
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            "[a-z\"\\\\{}\\[\\]:, ]{0,8}",
            "[a-z\"\\\\{}\\[\\] \u{e9}\u{1F600}]{30,80}",
            Just("usage".to_owned()),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Exact in binary, so the comparison is not about float parsing.
            (-4096i32..4096).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            text.clone().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((text.clone(), inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    /// A `usage` object as upstreams write one (counts, a details object of counts), now and
    /// then with a member of any other kind.
    fn counts_value() -> impl Strategy<Value = Value> {
        let count = (0u64..100_000).prop_map(Value::from);
        let details = prop::collection::vec(("[a-z_]{1,12}", count.clone()), 0..3)
            .prop_map(|members| Value::Object(members.into_iter().collect()));
        let member = prop_oneof![
            4 => (
                prop::sample::select(&["prompt_tokens", "completion_tokens", "total_tokens"][..]),
                count
            )
                .prop_map(|(name, count)| (name.to_owned(), count)),
            2 => ("[a-z_]{1,12}_details", details),
            1 => ("[a-z]{1,8}", json_value()),
        ];
        prop::collection::vec(member, 0..5)
            .prop_map(|members| Value::Object(members.into_iter().collect()))
    }

    proptest! {
        /// Any bytes, JSON's punctuation dense among them, and any cut of a valid document:
        /// the walk from the end answers without panicking (it runs in `poll_frame`).
        #[test]
        fn the_walk_from_the_end_takes_any_bytes(
            bytes in prop::collection::vec(prop::sample::select(&b"{}[]\":,\\ \nu0e1"[..]), 0..48),
            document in json_value(),
            cut in any::<prop::sample::Index>(),
        ) {
            let _ = usage_from_end(&bytes);
            let whole = serde_json::to_vec(&json!({"usage": document, "x": 1})).unwrap();
            let _ = usage_from_end(&whole[..cut.index(whole.len() + 1)]);
        }

        /// Against serde_json on generated documents (decoys in strings, nested `usage`
        /// members, long strings, non-ASCII), written compact or pretty, split at two points:
        /// the scanner's `usage` is the document's top-level `usage`, byte for byte.
        #[test]
        fn agrees_with_serde_json(
            members in prop::collection::vec(
                ("usage|error|[a-z]{1,20}", prop_oneof![json_value(), counts_value()]),
                0..8,
            ),
            pretty in any::<bool>(),
            cuts in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
        ) {
            let document = Value::Object(members.into_iter().collect());
            let bytes = if pretty {
                serde_json::to_vec_pretty(&document).unwrap()
            } else {
                serde_json::to_vec(&document).unwrap()
            };
            let (mut first, mut second) = (cuts.0.index(bytes.len() + 1), cuts.1.index(bytes.len() + 1));
            if first > second {
                std::mem::swap(&mut first, &mut second);
            }
            let mut scanner = JsonScanner::default();
            scanner.push(&bytes[..first]);
            scanner.push(&bytes[first..second]);
            scanner.push(&bytes[second..]);
            let found = |raw: Option<&[u8]>| raw.map(|raw| serde_json::from_slice::<Value>(raw).unwrap());
            prop_assert_eq!(found(scanner.usage()), document.get("usage").cloned());
            prop_assert_eq!(found(scanner.error()), document.get("error").cloned());
            // In one piece, read from the end: the same usage, and the walk always reads a
            // valid document to its answer.
            // In one piece: the same usage, read at once or from its raw text.
            let mut whole = JsonScanner::default();
            let chat = CallType::ChatCompletions;
            whole.push_whole(&Bytes::from(bytes.clone()), chat);
            let expected = document
                .get("usage")
                .and_then(|u| Usage::from_usage_bytes(chat, &serde_json::to_vec(u).unwrap()));
            prop_assert_eq!(whole.counted_usage(chat), expected);
            // The walk from the end finds the member's text byte for byte.
            let walked = usage_from_end(&bytes);
            prop_assert_ne!(&walked, &FromEnd::Unknown);
            if let FromEnd::Usage(raw) = walked {
                prop_assert_eq!(found(Some(raw)), document.get("usage").cloned());
            }
        }
    }
}
