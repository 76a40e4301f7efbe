//! An incremental, bounded server-sent events decoder, and an encoder: the codec
//! guardrail-tower's streaming layer reads and rewrites `text/event-stream` bodies with. It knows
//! nothing of guardrails or LLM APIs.
//!
//! The decoder takes chunks split at any byte and yields events as they complete, following the
//! WHATWG event-stream rules: `\n`, `\r\n` and `\r` line ends (a `\r\n` split across chunks is
//! one line end), multi-line `data:`, `event:`/`id:`/`retry:` fields, comments, a leading BOM,
//! and a final event without a trailing blank line (returned by [`SseDecoder::finish`], marked
//! incomplete). Splitting happens only at line ends, which are ASCII, so a UTF-8 character split
//! across chunks is never cut.
//!
//! Each event keeps its raw bytes, so an event that is not changed is passed on byte for byte.
//! A caller that passes most events on and reads few takes them framed but not parsed
//! ([`SseDecoder::next_raw`]) and splits out the fields of those it reads ([`RawEvent::parse`]).
//! When an event lies within one chunk (the common case) its raw bytes and its data are slices
//! of that chunk: no copy. Only an event spread over several chunks is copied, once, into one
//! buffer, and that buffer is bounded: an event larger than the maximum is an error, not
//! unbounded memory. A slice keeps the whole chunk alive (from hyper, a connection's read
//! buffer): a caller that keeps an event while more of the stream is read gives it bytes of its
//! own with [`SseEvent::detach`]. The decoder itself keeps no chunk while it waits.
//!
//! Where it sits among the crates:
//!
//! ```text
//!   guardrail-tower-sse        the SSE codec                                        ◀━━ this crate
//!            ▲ used by
//!   guardrail-tower-protocol   call types, text views, error shapes, usage
//!            ▲ used by
//!   guardrail-tower-core       guardrail trait, selection, runner, request context
//!            ▲ used by
//!   the five layers            error, model-merge, pre-call, streaming, spend-log
//!            ▲ used by
//!   guardrail-gateway          the gateway binary: config, routes, forwarder
//! ```
//!
//! Reading the events of a streamed response from any tower service:
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_sse::SseDecoder;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, StreamBody};
//! use http_body::Frame;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An upstream whose stream arrives split in the middle of an event.
//! let upstream = service_fn(|_req: Request<()>| async {
//!     let chunks = ["data: {\"n\":1}\n\nda", "ta: {\"n\":2}\n\ndata: [DONE]\n\n"];
//!     let frames = chunks.map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c))));
//!     let stream = futures_util::stream::iter(frames);
//!     Ok::<_, std::convert::Infallible>(Response::new(StreamBody::new(stream)))
//! });
//! let svc = ServiceBuilder::new().service(upstream);
//! let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
//!
//! let mut decoder = SseDecoder::new();
//! let mut data = Vec::new();
//! while let Some(frame) = body.frame().await {
//!     decoder.push(frame.unwrap().into_data().unwrap());
//!     while let Some(event) = decoder.next_event().unwrap() {
//!         data.push(String::from_utf8(event.data().unwrap().to_vec()).unwrap());
//!     }
//! }
//! assert_eq!(data, [r#"{"n":1}"#, r#"{"n":2}"#, "[DONE]"]);
//! # }
//! ```
//!
//! Chunk by chunk, by hand:
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_sse::SseDecoder;
//!
//! let mut decoder = SseDecoder::new();
//! decoder.push(Bytes::from_static(b"event: greeting\r\ndata: hel"));
//! assert!(decoder.next_event().unwrap().is_none());
//! decoder.push(Bytes::from_static(b"lo\r\n\r\ndata: [DONE]\n\n"));
//! let first = decoder.next_event().unwrap().unwrap();
//! assert_eq!(first.event_type(), Some("greeting"));
//! assert_eq!(first.data(), Some(&b"hello"[..]));
//! let done = decoder.next_event().unwrap().unwrap();
//! assert_eq!(done.data(), Some(&b"[DONE]"[..]));
//! assert!(decoder.next_event().unwrap().is_none());
//! assert!(decoder.finish().unwrap().is_none());
//! ```

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use memchr::memchr2;

/// The default maximum size of one event: 1 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A decoding failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SseError {
    /// One event is larger than the decoder's maximum.
    EventTooLarge {
        /// The maximum, in bytes.
        limit: usize,
    },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::EventTooLarge { limit } => {
                write!(f, "server-sent event larger than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// One decoded event.
///
/// Its fields are places in its bytes, not handles of their own on them: moving an event,
/// copying it into an allocation of its own ([`SseEvent::detach`]) and taking its bytes back
/// ([`SseEvent::into_raw`]) touch one handle.
#[derive(Clone)]
pub struct SseEvent {
    raw: Bytes,
    event: Option<Span>,
    data: Option<Data>,
    id: Option<Span>,
    retry: Option<u64>,
    complete: bool,
    /// A line was neither a comment nor one of the four fields.
    unknown: bool,
}

/// A field's value: `raw[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn of(self, raw: &[u8]) -> &[u8] {
        &raw[self.start..self.end]
    }
}

/// The `data:` value: one line's, in place, or several lines' joined in a buffer of their own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    Line(Span),
    Joined(Bytes),
}

impl PartialEq for SseEvent {
    /// Events are equal when their bytes and fields are, wherever the fields are kept.
    fn eq(&self, other: &SseEvent) -> bool {
        self.raw == other.raw
            && self.event() == other.event()
            && self.data() == other.data()
            && self.id() == other.id()
            && self.retry == other.retry
            && self.complete == other.complete
            && self.unknown == other.unknown
    }
}

impl Eq for SseEvent {}

impl SseEvent {
    /// The event's bytes as they arrived, including the blank line that ended it.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The event's bytes, taken (the same as [`raw`](SseEvent::raw), without a handle more).
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    fn event(&self) -> Option<&[u8]> {
        self.event.map(|span| span.of(&self.raw))
    }

    /// The `event:` field, if present and valid UTF-8.
    pub fn event_type(&self) -> Option<&str> {
        self.event().and_then(|e| std::str::from_utf8(e).ok())
    }

    /// The `data:` lines joined with `\n`, if there was any `data:` field.
    pub fn data(&self) -> Option<&[u8]> {
        match &self.data {
            None => None,
            Some(Data::Line(span)) => Some(span.of(&self.raw)),
            Some(Data::Joined(joined)) => Some(joined),
        }
    }

    /// The data as shared bytes: a slice of the event's bytes, or the lines joined.
    pub fn data_bytes(&self) -> Option<Bytes> {
        match &self.data {
            None => None,
            Some(Data::Line(span)) => Some(self.raw.slice(span.start..span.end)),
            Some(Data::Joined(joined)) => Some(joined.clone()),
        }
    }

    /// The `id:` field, if present.
    pub fn id(&self) -> Option<&[u8]> {
        self.id.map(|span| span.of(&self.raw))
    }

    /// The `retry:` field, if present and a number.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Whether the event ended with a blank line (`false` only for a final event cut off by the
    /// end of the stream).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether a line of the event is neither a comment (`:`) nor a `data`, `event`, `id` or
    /// `retry` field: a line of some other name, or of no colon at all (a JSON document sent as
    /// an event stream). A client that follows the standard ignores such a line; one that does
    /// not may show it, and nothing reads its text, so a guarded stream refuses it.
    pub fn has_unknown_fields(&self) -> bool {
        self.unknown
    }

    /// Whether the event has no `data:` (comments, keep-alives, lone fields): a browser would
    /// not dispatch it.
    pub fn is_empty(&self) -> bool {
        self.data.is_none()
    }

    /// Copies the event's bytes into an allocation of its own.
    ///
    /// A decoded event is a slice of the chunk it arrived in (no copy), and a chunk from
    /// hyper is a slice of the connection's read buffer: an event kept while more of the
    /// stream is read (held back by a guardrail until the next event shows a word is whole)
    /// keeps that whole buffer alive, and the connection allocates another. After `detach` the
    /// event holds its own bytes only. Fields joined from several lines already have theirs.
    pub fn detach(&mut self) {
        self.raw = Bytes::copy_from_slice(&self.raw);
    }
}

impl fmt::Debug for SseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        f.debug_struct("SseEvent")
            .field("event", &text(self.event()))
            .field("data", &text(self.data()))
            .field("id", &text(self.id()))
            .field("retry", &self.retry)
            .field("complete", &self.complete)
            .field("raw_len", &self.raw.len())
            .finish()
    }
}

/// One event's bytes, framed but not yet parsed into fields: what
/// [`SseDecoder::next_raw`] returns to a caller that passes most events on as they are and
/// reads only a few (parse those with [`RawEvent::parse`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RawEvent {
    raw: Bytes,
    /// Where the event's fields begin: past a `\n` that completed the previous event's `\r\n`,
    /// and past the stream's byte-order mark.
    start: usize,
    complete: bool,
    /// The scanner saw one line before the blank line that ended the event.
    one_line: bool,
}

impl RawEvent {
    /// The event's bytes as they arrived, including the blank line that ended it (the same
    /// bytes as [`SseEvent::raw`] once parsed).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The event's bytes, taken.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// The bytes from the event's first field on, without what belongs to the line end of the
    /// event before it or to the stream's byte-order mark: the text to look for a field in.
    pub fn fields(&self) -> &[u8] {
        &self.raw[self.start..]
    }

    /// Whether the event ended with a blank line (see [`SseEvent::is_complete`]).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The event's fields.
    pub fn parse(self) -> SseEvent {
        if self.one_line {
            if let Some(data) = one_data_line(&self.raw, self.start) {
                return SseEvent {
                    data: Some(Data::Line(Span {
                        start: data.start,
                        end: data.end,
                    })),
                    raw: self.raw,
                    event: None,
                    id: None,
                    retry: None,
                    complete: true,
                    unknown: false,
                };
            }
        }
        parse_fields(self.raw, self.start, self.complete)
    }
}

/// Where the value is in a complete event of one line that the scanner framed, when that line
/// is a `data:` field and it and the blank line after it each end in a lone `\n`: most events
/// of a stream. The line is then everything from `start` but the last two bytes, with no
/// search for its end or its colon.
fn one_data_line(raw: &[u8], start: usize) -> Option<std::ops::Range<usize>> {
    let end = raw.len().checked_sub(2)?;
    // The byte before `\n\n` is the line's own (a `\r` there would be part of its line end).
    if end <= start || raw[end..] != *b"\n\n" || raw[end - 1] == b'\r' {
        return None;
    }
    let rest = raw[start..end].strip_prefix(b"data:")?;
    let value = end - rest.len() + usize::from(rest.first() == Some(&b' '));
    Some(value..end)
}

impl fmt::Debug for RawEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawEvent")
            .field("raw", &String::from_utf8_lossy(&self.raw))
            .field("complete", &self.complete)
            .finish()
    }
}

/// Where the scanner is within the current event.
#[derive(Debug, Clone, Copy)]
struct ScanState {
    /// Nothing but the line end has been seen on the current line.
    line_empty: bool,
    /// The last byte was a `\r` line end; a `\n` right after it belongs to it.
    after_cr: bool,
    /// Lines ended so far in the event, the blank line aside (counted up to two: one is what
    /// [`RawEvent::parse`] looks for).
    lines: u8,
}

impl ScanState {
    fn start(after_bare_cr: bool) -> Self {
        ScanState {
            line_empty: true,
            after_cr: after_bare_cr,
            lines: 0,
        }
    }
}

/// Finds the end of the event in `buf` (one past the blank line's line end), carrying `state`
/// across calls so that each byte is scanned once.
fn scan(buf: &[u8], state: &mut ScanState) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if state.after_cr {
            state.after_cr = false;
            if buf[i] == b'\n' {
                i += 1;
                continue;
            }
        }
        let Some(offset) = memchr2(b'\r', b'\n', &buf[i..]) else {
            state.line_empty = false;
            return None;
        };
        if offset > 0 {
            state.line_empty = false;
        }
        let pos = i + offset;
        if state.line_empty {
            // A blank line: the event ends after its line end.
            if buf[pos] == b'\r' && buf.get(pos + 1) == Some(&b'\n') {
                return Some(pos + 2);
            }
            return Some(pos + 1);
        }
        state.line_empty = true;
        state.lines = (state.lines + 1).min(2);
        state.after_cr = buf[pos] == b'\r';
        i = pos + 1;
    }
    None
}

/// The size of an event for the limit: its bytes without a leading `\n` that completed the
/// previous event's `\r\n`, and without the `\n` of its own final `\r\n`, so whether an event
/// fits never depends on where the chunks were split.
fn counted_len(raw: &[u8], skip_lf: bool) -> usize {
    let lead = usize::from(skip_lf && raw.first() == Some(&b'\n'));
    let trail = usize::from(raw.ends_with(b"\r\n"));
    raw.len() - lead - trail
}

/// The incremental decoder. See the [module docs](self).
#[derive(Debug)]
pub struct SseDecoder {
    /// An event begun in earlier chunks.
    pending: BytesMut,
    /// The scanner's state at the end of `pending`.
    state: ScanState,
    /// The current event starts with a `\n` that ends the previous event's `\r`.
    event_skip_lf: bool,
    /// The previous event ended with a bare `\r` at the end of the data seen so far.
    next_skip_lf: bool,
    /// No event has been taken yet (a BOM may lead).
    at_start: bool,
    /// The unscanned rest of the last chunk.
    input: Bytes,
    max_event_size: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new()
    }
}

impl SseDecoder {
    /// A decoder with the default maximum event size ([`DEFAULT_MAX_EVENT_SIZE`]).
    pub fn new() -> Self {
        SseDecoder::with_max_event_size(DEFAULT_MAX_EVENT_SIZE)
    }

    /// A decoder that fails on an event larger than `max_event_size` bytes.
    pub fn with_max_event_size(max_event_size: usize) -> Self {
        SseDecoder {
            pending: BytesMut::new(),
            state: ScanState::start(false),
            event_skip_lf: false,
            next_skip_lf: false,
            at_start: true,
            input: Bytes::new(),
            max_event_size,
        }
    }

    /// Adds a chunk. Take the events it completes with [`SseDecoder::next_event`].
    pub fn push(&mut self, chunk: Bytes) {
        if self.input.is_empty() {
            self.input = chunk;
        } else if !chunk.is_empty() {
            let mut joined = BytesMut::with_capacity(self.input.len() + chunk.len());
            joined.put_slice(&self.input);
            joined.put_slice(&chunk);
            self.input = joined.freeze();
        }
    }

    /// Whether `chunk`, pushed now, would be framed into events that are each a single
    /// `data:` line and that together are the whole chunk, byte for byte: the decoder holds
    /// nothing (no part of an event, no `\r` whose `\n` may follow, not at the stream's start,
    /// where a byte-order mark may lead), the chunk has no `\r`, every event in it is
    /// `data:…\n\n`, and the chunk is within the event size limit. A caller that passes events
    /// on byte for byte and reads only some `data:` events (a log reading usage, say) may then
    /// pass the chunk on as it is, without pushing it: the decoder is left exactly as framing
    /// those events would leave it. Most chunks of a chat stream are such events; this costs a
    /// search for each line's end, framing costs several times that.
    ///
    /// ```
    /// use guardrail_tower_sse::SseDecoder;
    /// use bytes::Bytes;
    ///
    /// let mut decoder = SseDecoder::new();
    /// // The stream's first event is framed (it may begin with a byte-order mark).
    /// decoder.push(Bytes::from_static(b"data: {\"n\":1}\n\n"));
    /// assert!(decoder.next_raw()?.is_some());
    /// assert!(decoder.is_whole_data_events(b"data: {\"n\":2}\n\ndata: {\"n\":3}\n\n"));
    /// assert!(!decoder.is_whole_data_events(b"event: ping\ndata: {}\n\n"));
    /// assert!(!decoder.is_whole_data_events(b"data: {\"n\":4}\n"));
    /// # Ok::<(), guardrail_tower_sse::SseError>(())
    /// ```
    pub fn is_whole_data_events(&self, chunk: &[u8]) -> bool {
        if self.at_start
            || self.next_skip_lf
            || !self.pending.is_empty()
            || !self.input.is_empty()
            || chunk.is_empty()
            || chunk.len() > self.max_event_size
        {
            return false;
        }
        // One search per line finds its end and any `\r` in it: the lines (each up to its
        // first `\n`) and their `data:` prefixes cover the whole chunk.
        let mut rest = chunk;
        while !rest.is_empty() {
            let Some(line) = rest.strip_prefix(b"data:") else {
                return false;
            };
            let Some(end) = memchr::memchr2(b'\n', b'\r', line) else {
                return false;
            };
            if line[end] != b'\n' || line.get(end + 1) != Some(&b'\n') {
                return false;
            }
            rest = &line[end + 2..];
        }
        true
    }

    /// The bytes held for an incomplete event, plus those not yet scanned.
    pub fn buffered_len(&self) -> usize {
        self.pending.len() + self.input.len()
    }

    /// The next complete event, if the chunks so far complete one.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        Ok(self.next_raw()?.map(RawEvent::parse))
    }

    /// The next complete event, framed but not parsed: for a caller that passes events on
    /// byte for byte and reads few of them, the fields of the others are never split out.
    /// Events and errors are those of [`SseDecoder::next_event`].
    pub fn next_raw(&mut self) -> Result<Option<RawEvent>, SseError> {
        if self.input.is_empty() {
            return Ok(None);
        }
        if self.pending.is_empty() {
            self.state = ScanState::start(self.next_skip_lf);
            self.event_skip_lf = self.next_skip_lf;
            self.next_skip_lf = false;
        }
        let available = self.input.len();
        match scan(&self.input, &mut self.state) {
            Some(end) => {
                self.next_skip_lf = end == available && self.input[end - 1] == b'\r';
                let raw = if self.pending.is_empty() {
                    self.input.split_to(end)
                } else {
                    self.pending.put_slice(&self.input[..end]);
                    // `split_to`, not `advance`: at the end it leaves no reference to the chunk.
                    drop(self.input.split_to(end));
                    self.pending.split().freeze()
                };
                if counted_len(&raw, self.event_skip_lf) > self.max_event_size {
                    return Err(SseError::EventTooLarge {
                        limit: self.max_event_size,
                    });
                }
                Ok(Some(self.framed(raw, true)))
            }
            None => {
                // A `\n` that completes the previous event's `\r\n` is not this event's.
                let first = self.pending.first().or(self.input.first());
                let lead = usize::from(self.event_skip_lf && first == Some(&b'\n'));
                if self.pending.len() + available - lead > self.max_event_size {
                    self.pending.clear();
                    self.input = Bytes::new();
                    return Err(SseError::EventTooLarge {
                        limit: self.max_event_size,
                    });
                }
                self.pending.put_slice(&self.input);
                // Not `clear`, which keeps a reference to the chunk (and the buffer it was cut
                // from) while the decoder waits for the rest of the event.
                self.input = Bytes::new();
                Ok(None)
            }
        }
    }

    /// Ends the stream: returns the complete events still buffered, then what is left as a
    /// final, incomplete event (a stream whose last event has no trailing blank line), then
    /// `None`. Call it until it returns `None`.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        Ok(self.finish_raw()?.map(RawEvent::parse))
    }

    /// [`SseDecoder::finish`], framed but not parsed (see [`SseDecoder::next_raw`]).
    pub fn finish_raw(&mut self) -> Result<Option<RawEvent>, SseError> {
        if let Some(event) = self.next_raw()? {
            return Ok(Some(event));
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        let raw = self.pending.split().freeze();
        Ok(Some(self.framed(raw, false)))
    }

    /// `raw` as an event: where its fields start depends on the decoder's state.
    fn framed(&mut self, raw: Bytes, complete: bool) -> RawEvent {
        let mut start = 0;
        if self.event_skip_lf && raw.first() == Some(&b'\n') {
            start = 1;
        }
        if self.at_start {
            self.at_start = false;
            if raw[start..].starts_with(BOM) {
                start += BOM.len();
            }
        }
        RawEvent {
            raw,
            start,
            complete,
            one_line: complete && self.state.lines == 1,
        }
    }
}

/// Splits an event's fields out of `raw`, from `pos` on.
fn parse_fields(raw: Bytes, mut pos: usize, complete: bool) -> SseEvent {
    let mut event = None;
    let mut id = None;
    let mut retry = None;
    let mut data: Option<Span> = None;
    let mut joined: Option<BytesMut> = None;
    let mut unknown = false;
    while pos < raw.len() {
        let (line_end, next) = match memchr2(b'\r', b'\n', &raw[pos..]) {
            Some(off) => {
                let end = pos + off;
                let next = if raw[end] == b'\r' && raw.get(end + 1) == Some(&b'\n') {
                    end + 2
                } else {
                    end + 1
                };
                (end, next)
            }
            None => (raw.len(), raw.len()),
        };
        if line_end == pos {
            break;
        }
        let line = &raw[pos..line_end];
        if line[0] != b':' {
            let (name, value_start) = match memchr::memchr(b':', line) {
                Some(colon) => {
                    let mut start = pos + colon + 1;
                    if raw.get(start) == Some(&b' ') && start < line_end {
                        start += 1;
                    }
                    (&line[..colon], start)
                }
                None => (line, line_end),
            };
            let span = Span {
                start: value_start,
                end: line_end,
            };
            let value = span.of(&raw);
            match name {
                b"data" => match (&mut joined, data) {
                    (Some(buf), _) => {
                        buf.put_u8(b'\n');
                        buf.put_slice(value);
                    }
                    (None, Some(first)) => {
                        let first = first.of(&raw);
                        let mut buf = BytesMut::with_capacity(first.len() + value.len() + 16);
                        buf.put_slice(first);
                        buf.put_u8(b'\n');
                        buf.put_slice(value);
                        joined = Some(buf);
                    }
                    (None, None) => data = Some(span),
                },
                b"event" => event = Some(span),
                b"id" if !value.contains(&0) => id = Some(span),
                b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                    retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                }
                b"id" | b"retry" => {}
                _ => unknown = true,
            }
        }
        pos = next;
    }
    let data = match joined {
        Some(buf) => Some(Data::Joined(buf.freeze())),
        None => data.map(Data::Line),
    };
    SseEvent {
        raw,
        event,
        data,
        id,
        retry,
        complete,
        unknown,
    }
}

/// Writes one event: an optional `event:` line, one `data:` line per line of `data`, and the
/// blank line.
///
/// ```
/// use bytes::BytesMut;
/// use guardrail_tower_sse::write_event;
///
/// let mut buf = BytesMut::new();
/// write_event(&mut buf, Some("message"), "line one\nline two");
/// assert_eq!(&buf[..], b"event: message\ndata: line one\ndata: line two\n\n");
/// ```
pub fn write_event(buf: &mut BytesMut, event: Option<&str>, data: &str) {
    buf.reserve(data.len() + event.map_or(0, str::len) + 16);
    if let Some(event) = event {
        buf.put_slice(b"event: ");
        buf.put_slice(event.as_bytes());
        buf.put_u8(b'\n');
    }
    let mut rest = data.as_bytes();
    loop {
        buf.put_slice(b"data: ");
        match memchr2(b'\r', b'\n', rest) {
            Some(end) => {
                buf.put_slice(&rest[..end]);
                buf.put_u8(b'\n');
                let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[end + skip..];
            }
            None => {
                buf.put_slice(rest);
                buf.put_u8(b'\n');
                break;
            }
        }
    }
    buf.put_u8(b'\n');
}

/// [`write_event`] into a new buffer.
pub fn encode_event(event: Option<&str>, data: &str) -> Bytes {
    let mut buf = BytesMut::new();
    write_event(&mut buf, event, data);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event of one `data:` line (the shortcut) parses to what the full parser gives, fed
    /// whole and byte by byte, and so do the events next to it in shape that must not take the
    /// shortcut: other fields, comments, several lines, `\r` line ends, a final event without
    /// its blank line, a byte-order mark and a `\n` left over from the previous `\r\n`.
    #[test]
    fn the_one_data_line_shortcut_parses_as_the_full_parser_does() {
        let streams: [&[u8]; 14] = [
            b"data: {\"a\":1}\n\n",
            b"data:{\"a\":1}\n\n",
            b"data:\n\n",
            b"data: \n\n",
            b"data:  two spaces\n\n",
            b"data: x\r\n\n",
            b"data: x\r\n\r\n",
            b"data: x\r\r",
            b"event: ping\n\n",
            b": comment\n\n",
            b"data: a\ndata: b\n\n",
            b"\xEF\xBB\xBFdata: bom\n\n",
            b"data: a\r\r\ndata: after crlf\n\n",
            b"dat: x\n\ndata: last",
        ];
        let mut shortcuts = 0;
        for stream in streams {
            for whole in [true, false] {
                let mut decoder = SseDecoder::new();
                let mut events = Vec::new();
                let chunks: Vec<&[u8]> = if whole {
                    vec![stream]
                } else {
                    stream.chunks(1).collect()
                };
                for chunk in chunks {
                    decoder.push(Bytes::copy_from_slice(chunk));
                    while let Some(event) = decoder.next_raw().unwrap() {
                        events.push(event);
                    }
                }
                while let Some(event) = decoder.finish_raw().unwrap() {
                    events.push(event);
                }
                assert!(!events.is_empty());
                for event in events {
                    let full = parse_fields(event.raw.clone(), event.start, event.complete);
                    shortcuts += usize::from(
                        event.one_line && one_data_line(&event.raw, event.start).is_some(),
                    );
                    assert_eq!(event.parse(), full, "{:?}", String::from_utf8_lossy(stream));
                }
            }
        }
        // Whole and byte by byte: the first five events, the one after the `\r\n`, the one
        // after the byte-order mark.
        assert_eq!(shortcuts, 2 * 7);
    }

    fn decode_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(Bytes::copy_from_slice(chunk));
            while let Some(event) = decoder.next_event().unwrap() {
                out.push(event);
            }
        }
        while let Some(event) = decoder.finish().unwrap() {
            out.push(event);
        }
        out
    }

    fn summary(events: &[SseEvent]) -> Vec<(Option<String>, Option<String>)> {
        events
            .iter()
            .map(|e| {
                (
                    e.event_type().map(str::to_owned),
                    e.data().map(|d| String::from_utf8(d.to_vec()).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn line_endings() {
        for sep in ["\n", "\r\n", "\r"] {
            let stream = format!("event: a{sep}data: 1{sep}{sep}data: 2{sep}data: 3{sep}{sep}");
            let events = decode_chunks(&[stream.as_bytes()]);
            assert_eq!(
                summary(&events),
                [
                    (Some("a".into()), Some("1".into())),
                    (None, Some("2\n3".into()))
                ],
                "sep {sep:?}"
            );
            let raw: Vec<u8> = events.iter().flat_map(|e| e.raw().to_vec()).collect();
            assert_eq!(raw, stream.as_bytes());
        }
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        let events = decode_chunks(&[b"data: x\r", b"\n\r", b"\ndata: y\r\n\r\n"]);
        assert_eq!(
            summary(&events),
            [(None, Some("x".into())), (None, Some("y".into()))]
        );
        let events = decode_chunks(&[b"data: x\r\r", b"\ndata: y\r\r"]);
        assert_eq!(
            summary(&events),
            [(None, Some("x".into())), (None, Some("y".into()))]
        );
        assert_eq!(events[1].raw(), "\ndata: y\r\r");
    }

    #[test]
    fn fields_and_comments() {
        let events = decode_chunks(&[
            b": keep-alive\n\nid: 42\nretry: 3000\nevent: e\ndata\ndata:no-space\ndata:  two-spaces\nunknown: x\n\n",
        ]);
        assert_eq!(events.len(), 2);
        assert!(events[0].is_empty());
        assert_eq!(events[0].raw(), ": keep-alive\n\n");
        let e = &events[1];
        assert_eq!(e.id(), Some(&b"42"[..]));
        assert_eq!(e.retry(), Some(3000));
        assert_eq!(e.event_type(), Some("e"));
        assert_eq!(e.data(), Some(&b"\nno-space\n two-spaces"[..]));
        // `unknown: x` is a field of no known name: a client ignores it, and it is flagged.
        assert!(e.has_unknown_fields());
        assert!(!events[0].has_unknown_fields());
        // A line with no colon is a field too (named by the whole line); a bad `retry` or an
        // `id` with a NUL is a known field ignored.
        for (raw, unknown) in [
            (&b"{\"choices\":[]}\n\n"[..], true),
            (b"data: x\nevent\n\n", false),
            (b"retry: 1s\nid: a\0b\ndata: x\n\n", false),
            (b"data: x\n\n", false),
            (b": note: x\n\n", false),
        ] {
            let events = decode_chunks(&[raw]);
            assert_eq!(events[0].has_unknown_fields(), unknown, "{raw:?}");
        }
    }

    #[test]
    fn bad_retry_and_id_with_nul_are_ignored() {
        let events = decode_chunks(&[b"retry: 1s\nid: a\0b\ndata: x\n\n"]);
        assert_eq!(events[0].retry(), None);
        assert_eq!(events[0].id(), None);
    }

    #[test]
    fn final_event_without_blank_line() {
        let events = decode_chunks(&[b"data: a\n\ndata: [DONE]\n"]);
        assert_eq!(
            summary(&events),
            [(None, Some("a".into())), (None, Some("[DONE]".into()))]
        );
        assert!(events[0].is_complete());
        assert!(!events[1].is_complete());
        let events = decode_chunks(&[b"data: last"]);
        assert_eq!(summary(&events), [(None, Some("last".into()))]);
    }

    #[test]
    fn bom_is_skipped_once() {
        let events = decode_chunks(&[b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(events[0].data(), Some(&b"a"[..]));
        // A BOM after the start is part of the field name, so that line is ignored.
        assert_eq!(events[1].data(), None);
    }

    #[test]
    fn utf8_split_across_chunks() {
        let stream = "data: {\"content\":\"caf\u{e9} \u{2615} \u{1F600}\"}\n\n".as_bytes();
        for split in 0..stream.len() {
            let events = decode_chunks(&[&stream[..split], &stream[split..]]);
            assert_eq!(
                std::str::from_utf8(events[0].data().unwrap()).unwrap(),
                "{\"content\":\"caf\u{e9} \u{2615} \u{1F600}\"}"
            );
        }
    }

    #[test]
    fn a_waiting_decoder_keeps_no_reference_to_the_chunks() {
        // A partial event is copied aside; the chunks it came in (slices of a connection's
        // read buffer, in hyper) are not kept while the decoder waits for its end.
        let mut decoder = SseDecoder::new();
        let stream = b"data: one\n\ndata: tw";
        for (chunk, rest) in [(&stream[..], &b"o\n\ndata: thr"[..]), (b"ee\n", b"\n")] {
            let chunk = Bytes::from(chunk.to_vec());
            decoder.push(chunk.clone());
            while decoder.next_event().unwrap().is_some() {}
            assert!(chunk.is_unique(), "the decoder still holds the chunk");
            let rest = Bytes::from(rest.to_vec());
            decoder.push(rest.clone());
            assert!(decoder.next_event().unwrap().is_some());
            while decoder.next_event().unwrap().is_some() {}
            assert!(rest.is_unique(), "the decoder still holds the chunk");
        }
    }

    #[test]
    fn a_detached_event_holds_its_own_bytes_only() {
        let chunk = Bytes::from(
            b"event: e\nid: 7\ndata: one\ndata: two\n\nevent: x\ndata: single\n\nrest".to_vec(),
        );
        let whole = chunk.as_ptr_range();
        let mut decoder = SseDecoder::new();
        decoder.push(chunk.clone());
        for _ in 0..2 {
            let event = decoder.next_event().unwrap().unwrap();
            let mut detached = event.clone();
            detached.detach();
            assert_eq!(detached, event);
            let fields = [detached.raw().as_ptr()]
                .into_iter()
                .chain(detached.event().map(<[u8]>::as_ptr))
                .chain(detached.data().map(<[u8]>::as_ptr))
                .chain(detached.id().map(<[u8]>::as_ptr));
            for at in fields {
                assert!(!whole.contains(&at), "{detached:?} points into the chunk");
            }
        }
    }

    #[test]
    fn single_chunk_events_are_zero_copy() {
        let chunk = Bytes::from_static(b"data: hello\n\n");
        let mut decoder = SseDecoder::new();
        decoder.push(chunk.clone());
        let event = decoder.next_event().unwrap().unwrap();
        assert_eq!(event.raw().as_ptr(), chunk.as_ptr());
        assert_eq!(event.data_bytes().unwrap().as_ptr(), chunk[6..].as_ptr());
    }

    #[test]
    fn oversized_event_is_an_error_and_memory_stays_bounded() {
        let mut decoder = SseDecoder::with_max_event_size(64);
        for _ in 0..3 {
            decoder.push(Bytes::from_static(&[b'x'; 30]));
            if decoder.next_event().is_err() {
                assert_eq!(decoder.buffered_len(), 0);
                return;
            }
            assert!(decoder.buffered_len() <= 64);
        }
        panic!("no error for an event over the limit");
    }

    #[test]
    fn oversized_complete_event_in_one_chunk_is_an_error() {
        let mut decoder = SseDecoder::with_max_event_size(16);
        decoder.push(Bytes::from(format!("data: {}\n\n", "y".repeat(32))));
        assert_eq!(
            decoder.next_event(),
            Err(SseError::EventTooLarge { limit: 16 })
        );
    }

    #[test]
    fn the_size_limit_does_not_depend_on_the_split() {
        // Found by fuzzing: an event of exactly the maximum size, split between `\r` and `\n`.
        for (stream, split) in [(&b"abcdef\r\r\n"[..], 8), (&b"\r\nabcdef\n\n"[..], 1)] {
            let decode = |chunks: &[&[u8]]| {
                let mut d = SseDecoder::with_max_event_size(8);
                let mut ok = true;
                for chunk in chunks {
                    d.push(Bytes::copy_from_slice(chunk));
                    while let Some(r) = d.next_event().transpose() {
                        ok &= r.is_ok();
                    }
                }
                while let Some(r) = d.finish().transpose() {
                    ok &= r.is_ok();
                }
                ok
            };
            assert_eq!(
                decode(&[stream]),
                decode(&[&stream[..split], &stream[split..]]),
                "{stream:?}"
            );
        }
    }

    #[test]
    fn encoder_roundtrip() {
        for data in ["plain", "two\nlines", "crlf\r\nline", "", "trailing\n"] {
            let encoded = encode_event(Some("t"), data);
            let events = decode_chunks(&[&encoded]);
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].event_type(), Some("t"));
            let want = data.replace("\r\n", "\n");
            assert_eq!(events[0].data(), Some(want.as_bytes()), "{data:?}");
        }
    }

    #[test]
    fn leading_blank_lines_are_empty_events() {
        let events = decode_chunks(&[b"\n\ndata: x\n\n"]);
        assert_eq!(events.len(), 3);
        assert!(events[0].is_empty() && events[1].is_empty());
        assert_eq!(events[2].data(), Some(&b"x"[..]));
    }
}
