//! The state of one guarded SSE stream: channels of text (one per [`TextKey`] of the protocol's
//! text view), each guardrail's progress under its policy, and the in-order queue of events
//! waiting to be released.
//!
//! Events are released strictly in order. An event is released when every guardrail has
//! cleared the new text it carries (exact: no match can still involve it; window: a check that
//! looked past it passed), when the channels it ends have had their final check, and, for
//! summary events that repeat complete texts, when those channels are final. Masks are applied
//! as text is released, and a summary event is rewritten with the text the client was actually
//! sent (so a summary can never carry text the guardrails did not check).
//!
//! Whatever ends the stream early (a block, an upstream that fails, an event the guardrails
//! cannot read) ends it the same way: what was cleared goes out, nothing else does, then the
//! endpoint's in-band error event and terminator.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use guardrail_tower_core::sse::{SseDecoder, SseError, SseEvent};
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    BoxFuture, CallType, Check, ConfiguredGuardrail, Effect, Error, GuardrailAction,
    GuardrailInput, GuardrailLog, GuardrailLogEntry, GuardrailMode, GuardrailStatus, RequestMeta,
    ResponseReport, ResponsesStreamState, SpanAction, StreamPolicy, StreamWindow, Usage,
    epoch_seconds, upstream_error_event,
};
use guardrail_tower_protocol::json::JsonView;
use guardrail_tower_protocol::text::stream::End;
use guardrail_tower_protocol::text::{ChunkReader, Role, TextKey};
use serde_json::Value;
use smallvec::SmallVec;
use tokio::time::Instant;

/// How one guardrail checks this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    Exact,
    /// Check each `chars` new characters; hold back the last `holdback` characters after a
    /// passed check (they are checked again with what follows, so nothing released can become
    /// part of a later match).
    Window {
        chars: usize,
        holdback: usize,
    },
    EndOfStream,
}

impl Policy {
    /// The policy a guardrail gets: for a deterministic guardrail (one with a span matcher) a
    /// window never holds back less than its longest match, whatever overlap was configured.
    pub(crate) fn of(policy: StreamPolicy, guardrail: &ConfiguredGuardrail) -> Policy {
        match policy {
            StreamPolicy::Exact => Policy::Exact,
            StreamPolicy::Window { chars, overlap } => {
                let longest = guardrail.span_matcher().map_or(0, |m| m.max_match_chars());
                Policy::Window {
                    chars: chars.max(1),
                    holdback: overlap.max(longest),
                }
            }
            _ => Policy::EndOfStream,
        }
    }
}

/// A replacement of original text `[start, end)` of a channel, made by guardrail `by`.
#[derive(Debug, Clone)]
struct Replacement {
    start: usize,
    end: usize,
    text: String,
    by: usize,
}

#[derive(Debug)]
struct Channel {
    key: TextKey,
    /// Original text from absolute offset `base`.
    text: String,
    base: usize,
    ended: bool,
    replacements: Vec<Replacement>,
    /// Absolute offset of original text already sent.
    emitted: usize,
    /// Original text before this offset was covered by a replacement already sent.
    skip_to: usize,
}

impl Channel {
    fn end(&self) -> usize {
        self.base + self.text.len()
    }

    fn slice(&self, start: usize, end: usize) -> &str {
        &self.text[start - self.base..end - self.base]
    }

    /// Adds a replacement by guardrail `by` unless it overlaps one already there (the first
    /// one wins).
    fn replace(&mut self, by: usize, start: usize, end: usize, text: String) {
        if start == end && text.is_empty() {
            return;
        }
        if self
            .replacements
            .iter()
            .any(|r| r.start < end && start < r.end || (r.start == start && r.end == end))
        {
            return;
        }
        let at = self.replacements.partition_point(|r| r.start < start);
        self.replacements.insert(
            at,
            Replacement {
                start,
                end,
                text,
                by,
            },
        );
    }

    /// The output for original text `[start, end)`: the original with replacements applied.
    /// `None` when nothing changes.
    fn render(&self, start: usize, end: usize, skip_to: &mut usize) -> Option<String> {
        let touched = *skip_to > start
            || self
                .replacements
                .iter()
                .any(|r| r.start < end && r.end > start || (r.start == r.end && r.start == start));
        if !touched {
            return None;
        }
        let mut out = String::new();
        let mut pos = start.max(*skip_to);
        for r in &self.replacements {
            if r.end < pos || r.start >= end || (r.end == pos && r.start != r.end) {
                continue;
            }
            if r.start >= pos {
                out.push_str(self.slice(pos, r.start));
                out.push_str(&r.text);
            }
            pos = pos.max(r.end);
        }
        if pos < end {
            out.push_str(self.slice(pos, end));
        }
        *skip_to = (*skip_to).max(pos);
        Some(out)
    }

    /// The complete output text so far (for summary events).
    fn full_output(&self) -> String {
        let mut skip = 0;
        self.render(self.base, self.end(), &mut skip)
            .unwrap_or_else(|| self.text.clone())
    }
}

#[derive(Debug, Default, Clone)]
struct GuardChannel {
    /// Text before this offset may be released.
    cleared: usize,
    /// Window: text before this offset was part of a passed check.
    checked: usize,
    /// The final check covering the whole channel passed.
    final_done: bool,
    /// Exact: text before this offset can no longer be part of an unreported match.
    scan_from: usize,
    /// Window: a check of this channel is queued or running.
    busy: bool,
    /// End of stream: the length of the channel text the last passed check covered.
    covered: usize,
}

/// One guardrail's progress on this stream.
struct Guard {
    g: ConfiguredGuardrail,
    policy: Policy,
    channels: Vec<GuardChannel>,
    /// End of stream: a check of all channels is queued or running.
    busy: bool,
    /// Exact mode logs one entry per stream.
    exact: ExactLog,
}

#[derive(Debug, Default)]
struct ExactLog {
    started_at: Option<SystemTime>,
    time: Duration,
    masked: BTreeMap<String, u64>,
    logged: bool,
}

/// A check of one guardrail to run asynchronously.
#[derive(Debug)]
struct Job {
    guard: usize,
    /// The channels checked, with the `(start, end)` of the text checked in each.
    parts: Vec<(usize, usize, usize)>,
    /// Whether this is a channel's (or the stream's) final check.
    final_check: bool,
}

/// One text of a held event, in the order the protocol's view reads them.
#[derive(Debug, Clone, Copy)]
enum HeldText {
    /// New text `[start, end)` of a channel.
    Delta {
        channel: usize,
        start: usize,
        end: usize,
    },
    /// A channel's complete text, repeated; `differs` when what the event repeats is not the
    /// text that arrived as deltas.
    Full { channel: usize, differs: bool },
}

/// The error of a stream with a line that is no server-sent-events field
/// ([`SseEvent::has_unknown_fields`]): text nothing reads, refused rather than passed on.
pub(crate) fn unknown_fields() -> Error {
    Error::upstream_unavailable(
        "the upstream stream has a line the guardrails cannot read: it is not a server-sent \
         events field (data, event, id, retry) or a comment",
    )
}

/// The error of a stream event whose data is not JSON (and not `[DONE]` or empty): it may
/// still hold text, so it is refused rather than passed on unchecked.
pub(crate) fn non_json_data() -> Error {
    Error::upstream_unavailable(
        "the upstream stream has an event the guardrails cannot read: its data is not JSON",
    )
}

/// An event waiting to be released.
#[derive(Debug)]
struct Held {
    event: SseEvent,
    texts: SmallVec<[HeldText; 1]>,
    /// Channels whose text ends with this event.
    ends: Vec<usize>,
    terminal: bool,
    sequence_number: Option<u64>,
    /// The event holds its own bytes ([`SseEvent::detach`]).
    detached: bool,
}

impl Held {
    fn deltas(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.texts.iter().filter_map(|t| match *t {
            HeldText::Delta {
                channel,
                start,
                end,
            } => Some((channel, start, end)),
            HeldText::Full { .. } => None,
        })
    }

    fn fulls(&self) -> impl Iterator<Item = (usize, bool)> + '_ {
        self.texts.iter().filter_map(|t| match *t {
            HeldText::Full { channel, differs } => Some((channel, differs)),
            HeldText::Delta { .. } => None,
        })
    }
}

/// What to do after a step.
pub(crate) enum Step {
    /// Frames are ready in the output queue, or more progress can be made at once.
    Progress,
    /// An async check is running; wait for it.
    Waiting,
    /// Input is needed.
    NeedInput,
    /// Everything is out: end the body.
    Finished,
}

pub(crate) struct StreamState {
    call_type: CallType,
    decoder: SseDecoder,
    /// Reads the chunks, each from its content string when it is the last one but for that.
    chunks: ChunkReader,
    channels: Vec<Channel>,
    guards: Vec<Guard>,
    queue: VecDeque<Held>,
    pub(crate) out: VecDeque<Bytes>,
    jobs: VecDeque<Job>,
    running: Option<(Job, BoxFuture<'static, Check>)>,
    meta: Arc<RequestMeta>,
    log: GuardrailLog,
    report: Option<ResponseReport>,
    usage: Option<Usage>,
    responses: ResponsesStreamState,
    last_sent_sequence: Option<u64>,
    text_ended: bool,
    eof: bool,
    finished: bool,
    /// Something changed since the last [`release`](Self::release) (an event arrived, the
    /// stream ended, a check came back): held events may have become releasable. A body polled
    /// while it waits would otherwise ask the same question of the same front event each time.
    changed: bool,
    keeps_all_text: bool,
    /// Monitor guardrails: they check every channel's whole text once, detached, when the
    /// stream ends (however it ends), and hold nothing back.
    monitors: Vec<ConfiguredGuardrail>,
    /// The guardrail for which an image in the stream ends it (see
    /// [`StreamContext::media_blind`](crate::capture::StreamContext)).
    media_blind: Option<Arc<str>>,
}

impl StreamState {
    pub(crate) fn new(
        call_type: CallType,
        guards: Vec<(ConfiguredGuardrail, Policy)>,
        meta: Arc<RequestMeta>,
        log: GuardrailLog,
        report: Option<ResponseReport>,
        max_event_size: usize,
    ) -> Self {
        // Summary events repeat complete texts, which are checked against what arrived; end
        // of stream checks the whole text at the end.
        let keeps_all_text = call_type == CallType::Responses
            || guards.iter().any(|(_, p)| *p == Policy::EndOfStream);
        let responses = ResponsesStreamState {
            response: None,
            next_sequence_number: 0,
            fallback_id: format!("resp_{}", meta.request_id().as_str().replace('-', "")),
            model: meta.model().map(str::to_owned),
        };
        if let Some(report) = &report {
            report.set_observed();
        }
        StreamState {
            call_type,
            decoder: SseDecoder::with_max_event_size(max_event_size),
            chunks: ChunkReader::default(),
            channels: Vec::new(),
            guards: guards
                .into_iter()
                .map(|(g, policy)| Guard {
                    g,
                    policy,
                    channels: Vec::new(),
                    busy: false,
                    exact: ExactLog::default(),
                })
                .collect(),
            // Exact checking holds one event (a trailing partial word) and the one arriving:
            // room for two rather than the four a first push reserves (an entry is 224 bytes,
            // kept for the whole stream).
            queue: VecDeque::with_capacity(2),
            out: VecDeque::new(),
            jobs: VecDeque::new(),
            running: None,
            meta,
            log,
            report,
            usage: None,
            responses,
            last_sent_sequence: None,
            text_ended: false,
            eof: false,
            finished: false,
            changed: false,
            keeps_all_text,
            monitors: Vec::new(),
            media_blind: None,
        }
    }

    /// Adds monitor guardrails (see the `monitors` field); the stream then keeps its whole text.
    /// Ends the stream at an image the model made, which `guardrail` cannot read.
    pub(crate) fn refusing_images(mut self, guardrail: Option<Arc<str>>) -> Self {
        self.media_blind = guardrail;
        self
    }

    pub(crate) fn with_monitors(mut self, monitors: Vec<ConfiguredGuardrail>) -> Self {
        if !monitors.is_empty() {
            self.keeps_all_text = true;
        }
        self.monitors = monitors;
        self
    }

    /// Starts the monitors' detached check of the text that arrived (once).
    fn run_monitors(&mut self) {
        if self.monitors.is_empty() {
            return;
        }
        let monitors = std::mem::take(&mut self.monitors);
        let texts: Vec<String> = self
            .channels
            .iter()
            .filter(|c| !c.text.is_empty())
            .map(|c| c.text.clone())
            .collect();
        if texts.is_empty() {
            return;
        }
        guardrail_tower_core::run_detached(
            &monitors,
            GuardrailMode::PostCall,
            Side::Response,
            texts,
            self.meta.clone(),
            self.log.clone(),
        );
    }

    /// Bytes held by this stream: the decoder's partial event, queued events and the buffers of
    /// kept text.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.decoder.buffered_len()
            + self
                .queue
                .iter()
                .map(|h| h.event.raw().len())
                .sum::<usize>()
            + self
                .channels
                .iter()
                .map(|c| c.text.capacity())
                .sum::<usize>()
    }

    /// The events held back, oldest first.
    #[cfg(test)]
    pub(crate) fn held_events(&self) -> impl Iterator<Item = &SseEvent> {
        self.queue.iter().map(|h| &h.event)
    }

    /// Feeds a chunk from the upstream.
    pub(crate) fn push(&mut self, chunk: Bytes) {
        if self.finished {
            return;
        }
        self.decoder.push(chunk);
        self.changed = true;
        self.take_events(SseDecoder::next_event);
    }

    /// The upstream body ended cleanly.
    pub(crate) fn push_eof(&mut self) {
        if self.finished || self.eof {
            return;
        }
        self.eof = true;
        self.changed = true;
        // At the end, a last event without its blank line counts too.
        if !self.take_events(SseDecoder::finish) {
            return;
        }
        if let Err(err) = self.end_all() {
            self.block(err);
        }
    }

    /// Processes the events `next` yields until it has none; returns false when the stream
    /// ended (a block, or an undecodable stream). `next` is generic, not a function pointer:
    /// the decoder's step is then inlined here and each event built where it is used (about 170
    /// instructions an event less, most of them copies of the event on its way).
    fn take_events(
        &mut self,
        mut next: impl FnMut(&mut SseDecoder) -> Result<Option<SseEvent>, SseError>,
    ) -> bool {
        loop {
            match next(&mut self.decoder) {
                Ok(Some(event)) => {
                    if let Err(err) = self.on_event(event) {
                        self.block(err);
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(err) => {
                    self.fail(err);
                    return false;
                }
            }
        }
    }

    /// The upstream body failed (reset, read timeout) after the head was sent: the stream ends
    /// as a block does, with what was cleared, the in-band error and the terminator; what was
    /// held unchecked (and a partial event) is dropped.
    pub(crate) fn upstream_failed(&mut self, err: Error) {
        if self.finished {
            return;
        }
        self.block_with(err, "the upstream body failed before the stream ended");
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    fn channel(&mut self, key: TextKey) -> usize {
        if let Some(i) = self.channels.iter().position(|c| c.key == key) {
            return i;
        }
        if self.channels.is_empty() {
            // Most streams carry one text: room for one channel, not the four a first push
            // reserves (kept for the whole stream, in the state and in each guardrail's).
            self.channels.reserve_exact(1);
            for guard in &mut self.guards {
                guard.channels.reserve_exact(1);
            }
        }
        self.channels.push(Channel {
            key,
            text: String::new(),
            base: 0,
            ended: false,
            replacements: Vec::new(),
            emitted: 0,
            skip_to: 0,
        });
        for guard in &mut self.guards {
            guard.channels.push(GuardChannel::default());
        }
        self.channels.len() - 1
    }

    fn on_event(&mut self, event: SseEvent) -> Result<(), Error> {
        if event.has_unknown_fields() {
            return Err(unknown_fields());
        }
        let mut texts = SmallVec::new();
        let mut ends = Vec::new();
        let (terminal, sequence_number, needs_value);
        {
            let view;
            let read = match event.data() {
                None => Default::default(),
                // Most events are plain chat chunks, read without building a view.
                Some(data) => match self.chunks.read(self.call_type, data) {
                    Some(read) => read,
                    None => match JsonView::parse(data) {
                        Ok(parsed) => {
                            view = parsed;
                            self.call_type
                                .read_event(event.event_type(), &view)
                                .map_err(|e| {
                                    Error::upstream_unavailable(format!(
                                        "the upstream stream has an event the guardrails \
                                         cannot read: {e}"
                                    ))
                                })?
                        }
                        // Data that is not JSON and may still hold text: refused, never
                        // passed unchecked.
                        Err(_) => self
                            .call_type
                            .read_non_json_event(data)
                            .ok_or_else(non_json_data)?,
                    },
                },
            };
            if let Some(guardrail) = self.media_blind.as_deref().filter(|_| read.media) {
                return Err(crate::capture::image_refused(guardrail));
            }
            terminal = read.terminal;
            sequence_number = read.sequence_number;
            needs_value = (read.has_usage, read.announces_response, read.upstream_error);
            for (key, role, text) in &read.texts {
                let idx = self.channel(*key);
                let ch = &mut self.channels[idx];
                // A complete text for a key that has had no text yet is new text, checked as a
                // delta is: the text of an item only its `.done` event carries (an MCP call's
                // output, a web search's query). Repeated as the deltas' text, it would be
                // replaced by what they brought: nothing.
                let role = match role {
                    Role::Full if ch.end() == 0 && !ch.ended => Role::Delta,
                    role => *role,
                };
                match role {
                    Role::Delta if text.is_empty() => {}
                    Role::Delta => {
                        let start = ch.end();
                        if ch.ended {
                            // Text for a text that already ended: no client expects it, and
                            // it would go out unchecked. Refuse the stream.
                            return Err(Error::upstream_unavailable(
                                "the upstream stream sent text for a part it had already ended",
                            ));
                        }
                        ch.text.push_str(text);
                        texts.push(HeldText::Delta {
                            channel: idx,
                            start,
                            end: ch.end(),
                        });
                    }
                    Role::Full => {
                        // Kept text is whole for call types with summaries; otherwise compare
                        // what is left and treat a trimmed channel as different.
                        let differs = ch.base != 0 || ch.text != **text;
                        texts.push(HeldText::Full {
                            channel: idx,
                            differs,
                        });
                    }
                }
            }
            for end in &read.ends {
                match *end {
                    End::Key(key) => ends.push(self.channel(key)),
                    End::Index(index) => ends.extend(
                        self.channels
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| End::Index(index).covers(&c.key))
                            .map(|(i, _)| i),
                    ),
                }
            }
        }
        let (has_usage, announces_response, upstream_error) = needs_value;
        if has_usage || announces_response || upstream_error {
            if let Some(value) = data_value(&event) {
                if has_usage {
                    Usage::update_from_event(
                        &mut self.usage,
                        self.call_type,
                        event.event_type(),
                        &value,
                    );
                    if let (Some(usage), Some(report)) = (self.usage, &self.report) {
                        report.set_usage(usage);
                    }
                }
                if announces_response {
                    self.responses.response = value.get("response").cloned();
                }
                if upstream_error {
                    if let Some(report) = &self.report {
                        report.set_in_band_error(upstream_error_event(&value));
                    }
                }
            }
        }
        let mut new_text: SmallVec<[usize; 2]> = SmallVec::new();
        for t in &texts {
            if let HeldText::Delta { channel, .. } = t {
                if !new_text.contains(channel) {
                    new_text.push(*channel);
                }
            }
        }
        let ended = ends.clone();
        self.queue.push_back(Held {
            event,
            texts,
            ends,
            terminal,
            sequence_number,
            detached: false,
        });
        for idx in new_text {
            self.on_text(idx)?;
        }
        for idx in ended {
            self.end_channel(idx)?;
        }
        if terminal {
            self.end_all()?;
        }
        Ok(())
    }

    /// New text arrived on channel `idx`.
    fn on_text(&mut self, idx: usize) -> Result<(), Error> {
        for gi in 0..self.guards.len() {
            match self.guards[gi].policy {
                Policy::Exact => self.exact_scan(gi, idx, false)?,
                Policy::Window { .. } => self.schedule_window(gi, idx),
                Policy::EndOfStream => {}
            }
        }
        Ok(())
    }

    fn end_channel(&mut self, idx: usize) -> Result<(), Error> {
        if self.channels[idx].ended {
            return Ok(());
        }
        self.channels[idx].ended = true;
        for gi in 0..self.guards.len() {
            match self.guards[gi].policy {
                Policy::Exact => self.exact_scan(gi, idx, true)?,
                Policy::Window { .. } => self.schedule_window(gi, idx),
                Policy::EndOfStream => self.schedule_end_of_stream(gi),
            }
        }
        self.maybe_log_exact();
        Ok(())
    }

    fn end_all(&mut self) -> Result<(), Error> {
        self.text_ended = true;
        for idx in 0..self.channels.len() {
            self.end_channel(idx)?;
        }
        for gi in 0..self.guards.len() {
            if self.guards[gi].policy == Policy::EndOfStream {
                self.schedule_end_of_stream(gi);
            }
        }
        self.maybe_log_exact();
        Ok(())
    }

    /// Exact mode: find matches in the text that can no longer change, mask or block, and clear
    /// everything but the suffix a match could still need.
    fn exact_scan(&mut self, gi: usize, idx: usize, final_check: bool) -> Result<(), Error> {
        let guard = &mut self.guards[gi];
        let ch = &mut self.channels[idx];
        let state = &mut guard.channels[idx];
        let Some(matcher) = guard.g.span_matcher() else {
            return Ok(());
        };
        let started = Instant::now();
        guard.exact.started_at.get_or_insert_with(SystemTime::now);
        let from = state.scan_from.max(ch.base);
        let end = ch.end();
        let region = ch.slice(from, end);
        // Mid-stream, the matches and how much of the region to hold back come from one call.
        let (found, region_hold) = if final_check {
            (matcher.find(region, false), None)
        } else {
            let (found, hold) = matcher.find_partial(region);
            (found, Some(hold))
        };
        let mut scan_from = from;
        let mut block = None;
        let mut masks = Vec::new();
        for m in found {
            let (start, stop) = (from + m.range.start, from + m.range.end);
            match m.action {
                SpanAction::Block => {
                    // Everything before a reported match is settled: it may still go out.
                    state.cleared = state.cleared.max(start);
                    block = Some((m.message, m.entity));
                    break;
                }
                SpanAction::Mask { replacement } => {
                    *guard.exact.masked.entry(m.entity).or_insert(0) += 1;
                    masks.push((start, stop, replacement));
                    scan_from = scan_from.max(stop);
                }
            }
        }
        // Masks go in first: at a block, the text before it may still go out, masked.
        let masked = !masks.is_empty();
        for (start, stop, text) in masks {
            ch.replace(gi, start, stop, text);
        }
        if let Some((message, entity)) = block {
            guard.exact.time += started.elapsed();
            let err = Error::guardrail_blocked(guard.g.name(), message.clone());
            let entry = exact_entry(
                &guard.g,
                &guard.exact,
                GuardrailStatus::GuardrailIntervened,
                GuardrailAction::Block,
                serde_json::json!({"message": message, "entity": entity}),
            );
            guard.exact.logged = true;
            self.log.push(entry);
            return Err(err);
        }
        if final_check {
            state.cleared = end;
            state.final_done = true;
            state.scan_from = end;
        } else {
            let tail = ch.slice(scan_from, end);
            // A mask changed the text after the region's hold was measured: measure again.
            let hold = match region_hold {
                Some(hold) if !masked => hold,
                _ => matcher.hold_back(tail),
            }
            .min(tail.len());
            let cleared = end - hold;
            state.cleared = state.cleared.max(cleared);
            state.scan_from = scan_from.max(cleared);
        }
        guard.exact.time += started.elapsed();
        Ok(())
    }

    /// Window mode: queue a check when `chars` new characters arrived, or the final one. A
    /// check reads everything not yet released (the held-back tail of the last window, then
    /// the new text).
    fn schedule_window(&mut self, gi: usize, idx: usize) {
        let Policy::Window { chars, .. } = self.guards[gi].policy else {
            return;
        };
        let ch = &self.channels[idx];
        let state = &mut self.guards[gi].channels[idx];
        if state.busy || state.final_done {
            return;
        }
        let end = ch.end();
        let checked = state.checked.max(ch.base);
        let new_chars = ch.slice(checked, end).chars().count();
        if ch.ended && new_chars == 0 && state.cleared >= end {
            state.final_done = true;
            return;
        }
        if !ch.ended && new_chars < chars {
            return;
        }
        let start = state.cleared.max(ch.base);
        state.busy = true;
        self.jobs.push_back(Job {
            guard: gi,
            parts: vec![(idx, start, end)],
            final_check: ch.ended,
        });
    }

    /// End of stream: one check of every channel's whole text once all have ended.
    fn schedule_end_of_stream(&mut self, gi: usize) {
        let all_ended = self.text_ended || self.channels.iter().all(|c| c.ended);
        let guard = &mut self.guards[gi];
        if guard.busy || !all_ended {
            return;
        }
        let parts: Vec<_> = self
            .channels
            .iter()
            .enumerate()
            .filter(|(i, c)| guard.channels[*i].covered < c.end() || !guard.channels[*i].final_done)
            .map(|(i, c)| (i, c.base, c.end()))
            .collect();
        if parts.is_empty() {
            for gc in &mut guard.channels {
                gc.final_done = true;
            }
            return;
        }
        guard.busy = true;
        self.jobs.push_back(Job {
            guard: gi,
            parts,
            final_check: true,
        });
    }

    /// Runs the next step: release what can be released, start or poll a check.
    pub(crate) fn step(&mut self, cx: &mut std::task::Context<'_>) -> Step {
        if self.finished {
            return if self.out.is_empty() {
                Step::Finished
            } else {
                Step::Progress
            };
        }
        if std::mem::take(&mut self.changed) && self.release() {
            return Step::Progress;
        }
        if let Some((_, fut)) = &mut self.running {
            return match fut.as_mut().poll(cx) {
                std::task::Poll::Ready(check) => {
                    let (job, _) = self.running.take().expect("a check is running");
                    self.changed = true;
                    if let Err(err) = self.on_check(job, check) {
                        self.block(err);
                    }
                    Step::Progress
                }
                std::task::Poll::Pending => {
                    self.detach_held();
                    Step::Waiting
                }
            };
        }
        if let Some(job) = self.jobs.pop_front() {
            self.start(job);
            return Step::Progress;
        }
        if self.eof {
            if self.queue.is_empty() {
                self.maybe_log_exact();
                self.finished = true;
                self.run_monitors();
                return if self.out.is_empty() {
                    Step::Finished
                } else {
                    Step::Progress
                };
            }
            // Every check is decided at the end of the stream, so nothing can still be held;
            // if something is, it was never cleared: it must not go out unchecked.
            tracing::error!("events were still held after the end of the stream; failing closed");
            self.block(Error::internal(
                "the stream ended with text the guardrails had not cleared",
            ));
            return Step::Progress;
        }
        Step::NeedInput
    }

    /// The events still held wait for more of the stream (a check, or an upstream with nothing
    /// ready): each gets bytes of its own, so that none keeps the upstream connection's read
    /// buffer it was cut from alive. Not before: when the next chunk is ready, the held events
    /// usually go out with it, and a copy would be work for nothing.
    pub(crate) fn detach_held(&mut self) {
        for held in self.queue.iter_mut().rev() {
            if held.detached {
                break;
            }
            held.event.detach();
            held.detached = true;
        }
    }

    fn start(&mut self, job: Job) {
        let guard = &self.guards[job.guard];
        let texts: Vec<String> = job
            .parts
            .iter()
            .map(|&(idx, start, end)| self.channels[idx].slice(start, end).to_owned())
            .collect();
        let mut input = GuardrailInput::new(
            texts,
            Side::Response,
            GuardrailMode::PostCall,
            self.meta.clone(),
        );
        if let Policy::Window { .. } = guard.policy {
            // A window holds only text not yet sent (the held-back tail of the last window,
            // then the new text), so all of it may be rewritten: no context to leave alone.
            input = input
                .with_stream_window(StreamWindow::new(vec![0; job.parts.len()], job.final_check));
        }
        let g = guard.g.clone();
        let fut: BoxFuture<'static, Check> = Box::pin(async move { g.check(&input).await });
        self.running = Some((job, fut));
    }

    fn on_check(&mut self, job: Job, check: Check) -> Result<(), Error> {
        let gi = job.guard;
        let resolved = self.guards[gi]
            .g
            .resolve(GuardrailMode::PostCall, job.parts.len(), check);
        let mut entry = resolved.entry;
        let policy = self.guards[gi].policy;
        let mut block = None;
        match resolved.effect {
            Effect::Block(err) => block = Some(err),
            Effect::Allow => {}
            Effect::Rewrite(texts) => {
                if policy == Policy::EndOfStream {
                    tracing::error!(
                        guardrail = self.guards[gi].g.name(),
                        "a post_call guardrail asked to rewrite text already sent (end_of_stream policy); \
                         use the exact, window or buffer_all policy to mask streamed responses"
                    );
                    entry.guardrail_response = serde_json::json!({
                        "applied": false,
                        "reason": "the text was already sent (end_of_stream policy)",
                    });
                } else {
                    for (&(idx, start, end), new) in job.parts.iter().zip(texts) {
                        let ch = &mut self.channels[idx];
                        // This check saw the unreleased text with more context than the last
                        // one: its masks there replace that guardrail's earlier ones.
                        ch.replacements.retain(|r| r.by != gi || r.start < start);
                        for (from, to, text) in changes(ch.slice(start, end), &new) {
                            ch.replace(gi, start + from, start + to, text);
                        }
                    }
                }
            }
        }
        self.log.push(entry);
        if let Some(err) = block {
            return Err(err);
        }
        let guard = &mut self.guards[gi];
        guard.busy = false;
        for &(idx, _, end) in &job.parts {
            let ch = &self.channels[idx];
            let state = &mut guard.channels[idx];
            state.busy = false;
            state.covered = end;
            state.checked = state.checked.max(end);
            let last = job.final_check && ch.end() == end;
            if last {
                state.cleared = state.cleared.max(end);
                state.final_done = true;
            } else if let Policy::Window { holdback, .. } = policy {
                // Hold back the tail a match with later text could still need: it is checked
                // again, first thing, in the next window.
                let text = ch.slice(state.cleared.max(ch.base), end);
                let keep = match holdback {
                    0 => 0,
                    n => text
                        .char_indices()
                        .rev()
                        .nth(n - 1)
                        .map_or(text.len(), |(i, _)| text.len() - i),
                };
                state.cleared = state.cleared.max(end - keep);
            } else {
                state.cleared = state.cleared.max(end);
            }
        }
        // Text may have arrived while the check ran.
        let idxs: Vec<usize> = job.parts.iter().map(|p| p.0).collect();
        match policy {
            Policy::Window { .. } => {
                for idx in idxs {
                    self.schedule_window(gi, idx);
                }
            }
            Policy::EndOfStream => self.schedule_end_of_stream(gi),
            Policy::Exact => {}
        }
        Ok(())
    }

    fn cleared(&self, idx: usize, end: usize) -> bool {
        self.guards.iter().all(|g| match g.policy {
            Policy::EndOfStream => true,
            _ => g.channels[idx].cleared >= end,
        })
    }

    fn final_done(&self, idx: usize) -> bool {
        self.channels[idx].ended && self.guards.iter().all(|g| g.channels[idx].final_done)
    }

    fn releasable(&self, held: &Held) -> bool {
        held.deltas().all(|(idx, _, end)| self.cleared(idx, end))
            && held.ends.iter().all(|&idx| self.final_done(idx))
            && held.fulls().all(|(idx, _)| self.final_done(idx))
            && (!held.terminal || (0..self.channels.len()).all(|i| self.final_done(i)))
    }

    /// Releases events from the front of the queue while they may go. Returns whether any did.
    fn release(&mut self) -> bool {
        let mut released = false;
        while let Some(front) = self.queue.front() {
            if !self.releasable(front) {
                break;
            }
            let held = self.queue.pop_front().expect("front exists");
            self.emit(held);
            released = true;
        }
        if released && !self.keeps_all_text {
            self.trim();
        }
        released
    }

    fn emit(&mut self, held: Held) {
        if let Some(seq) = held.sequence_number {
            self.last_sent_sequence = Some(seq);
        }
        // The new text of each delta as the client gets it (masked), and the complete text a
        // summary must repeat, by position.
        let mut replaced: SmallVec<[Option<String>; 1]> = SmallVec::with_capacity(held.texts.len());
        for t in &held.texts {
            replaced.push(match *t {
                HeldText::Delta {
                    channel,
                    start,
                    end,
                } => {
                    let ch = &mut self.channels[channel];
                    let mut skip_to = ch.skip_to;
                    let text = ch.render(start, end, &mut skip_to);
                    if let Some(report) = &self.report {
                        // What the client got, for a usage estimate if the stream is cut.
                        report.add_delivered_text(
                            text.as_deref().unwrap_or_else(|| ch.slice(start, end)),
                        );
                    }
                    ch.skip_to = skip_to;
                    ch.emitted = end;
                    text
                }
                HeldText::Full { channel, differs } => {
                    let ch = &self.channels[channel];
                    (differs || !ch.replacements.is_empty()).then(|| ch.full_output())
                }
            });
        }
        if replaced.iter().all(Option::is_none) {
            self.out.push_back(held.event.into_raw());
            return;
        }
        let rewritten = self.call_type.rewrite_event(&held.event, |i, _, _, text| {
            if let Some(Some(new)) = replaced.get(i) {
                new.clone_into(text);
            }
        });
        match rewritten {
            Some(bytes) => self.out.push_back(bytes),
            // Only JSON events carry text, so this cannot happen; never send the original.
            None => self.block(Error::internal("could not rewrite a stream event")),
        }
    }

    /// At a block: sends the text of the first held event that every guardrail has cleared,
    /// so the client gets every allowed character up to the block (not a word cut off where an
    /// event happened to end) and nothing after it.
    fn release_cleared_part_of_front(&mut self) {
        let Some(front) = self.queue.front() else {
            return;
        };
        if front.texts.is_empty()
            || front.fulls().next().is_some()
            || !front.ends.is_empty()
            || front.terminal
        {
            return;
        }
        let cuts: Vec<(usize, usize, usize)> = front
            .deltas()
            .map(|(idx, start, end)| {
                let cleared = self
                    .guards
                    .iter()
                    .map(|g| match g.policy {
                        Policy::EndOfStream => end,
                        _ => g.channels[idx].cleared,
                    })
                    .min()
                    .unwrap_or(end);
                (idx, start, cleared.clamp(start, end))
            })
            .collect();
        if cuts.iter().all(|&(_, start, cut)| cut == start) {
            return;
        }
        let held = self.queue.pop_front().expect("front exists");
        let mut parts = Vec::with_capacity(cuts.len());
        for &(idx, start, cut) in &cuts {
            let ch = &mut self.channels[idx];
            let mut skip_to = ch.skip_to;
            let text = ch
                .render(start, cut, &mut skip_to)
                .unwrap_or_else(|| ch.slice(start, cut).to_owned());
            if let Some(report) = &self.report {
                report.add_delivered_text(&text);
            }
            parts.push(text);
        }
        let Some(bytes) = self.call_type.rewrite_event(&held.event, |i, _, _, text| {
            if let Some(new) = parts.get(i) {
                new.clone_into(text);
            }
        }) else {
            return;
        };
        if let Some(seq) = held.sequence_number {
            self.last_sent_sequence = Some(seq);
        }
        self.out.push_back(bytes);
    }

    /// Drops original text no guardrail and no pending event needs any more.
    fn trim(&mut self) {
        for (idx, ch) in self.channels.iter_mut().enumerate() {
            let mut keep = ch.emitted.min(ch.skip_to.max(ch.emitted));
            for g in &self.guards {
                let gc = &g.channels[idx];
                let need = match g.policy {
                    Policy::Exact => gc.scan_from,
                    Policy::Window { .. } => gc.cleared,
                    Policy::EndOfStream => ch.base,
                };
                keep = keep.min(need);
            }
            // Cut once 256 bytes are not needed: a long stream then keeps a buffer of about
            // twice that (with 4 KiB, each of thousands of open streams kept an 8 KiB buffer;
            // with 1 KiB, 2 KiB). A cut moves only the few bytes still needed.
            if keep > ch.base + 256 {
                let mut cut = keep - ch.base;
                while !ch.text.is_char_boundary(cut) {
                    cut -= 1;
                }
                ch.text.drain(..cut);
                ch.base += cut;
                ch.replacements.retain(|r| r.end > ch.base);
            }
        }
    }

    /// A guardrail blocked: the stream ends.
    fn block(&mut self, err: Error) {
        self.block_with(err, "the stream was blocked by another guardrail");
    }

    /// Ends the stream early: sends what was already cleared (as it would have gone out had
    /// the upstream sent it in smaller chunks), drops the rest, sends the endpoint's in-band
    /// error and terminator, ends.
    fn block_with(&mut self, err: Error, note: &str) {
        self.release();
        self.release_cleared_part_of_front();
        self.queue.clear();
        self.jobs.clear();
        self.running = None;
        self.flush_exact_logs(note);
        self.responses.next_sequence_number = self.last_sent_sequence.map_or(0, |s| s + 1);
        self.out
            .push_back(err.stream_events(self.call_type, &self.responses));
        if let Some(report) = &self.report {
            report.set_in_band_error(err);
        }
        self.finished = true;
        self.run_monitors();
    }

    /// The stream cannot be decoded further (an event over the size limit): end it with an
    /// in-band error rather than hold unbounded memory.
    fn fail(&mut self, err: SseError) {
        let err = Error::upstream_unavailable(format!("the upstream stream is invalid: {err}"));
        self.block(err);
    }

    /// Logs the exact-mode guardrails whose checks are all final, once the stream's text has
    /// ended (or the upstream body has).
    fn maybe_log_exact(&mut self) {
        let all_final =
            !self.channels.is_empty() && (0..self.channels.len()).all(|i| self.final_done(i));
        if all_final || self.eof {
            self.log_exact(true, Value::Null);
        }
    }

    /// Logs the exact-mode guardrails that have not logged yet (the stream ends early).
    fn flush_exact_logs(&mut self, reason: &str) {
        self.log_exact(false, serde_json::json!({"note": reason}));
    }

    /// Writes the one entry per stream of each exact-mode guardrail not logged yet (only those
    /// whose every channel had its final check, with `only_final`).
    fn log_exact(&mut self, only_final: bool, response: Value) {
        for guard in &mut self.guards {
            if guard.policy != Policy::Exact || guard.exact.logged {
                continue;
            }
            if only_final && !guard.channels.iter().all(|c| c.final_done) {
                continue;
            }
            guard.exact.logged = true;
            let (status, action) = if guard.exact.masked.is_empty() {
                (GuardrailStatus::Success, GuardrailAction::Allow)
            } else {
                (GuardrailStatus::GuardrailIntervened, GuardrailAction::Mask)
            };
            let entry = exact_entry(&guard.g, &guard.exact, status, action, response.clone());
            self.log.push(entry);
        }
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        if !self.finished {
            self.flush_exact_logs("the client went away before the stream ended");
        }
        self.run_monitors();
    }
}

/// The spans of `old` that `new` changes, as `(start, end, replacement)` byte ranges of `old`
/// (on char boundaries), found with a character diff: a guardrail that rewrites a window
/// (masking two emails in it, say) answers with the whole window, and only what it changed
/// becomes a replacement, so text it left alone keeps flowing and later windows compose.
pub(crate) fn changes(old: &str, new: &str) -> Vec<(usize, usize, String)> {
    if old == new {
        return Vec::new();
    }
    let old_chars: Vec<char> = old.chars().collect();
    let new_chars: Vec<char> = new.chars().collect();
    let old_at: Vec<usize> = old
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(old.len()))
        .collect();
    let new_at: Vec<usize> = new
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(new.len()))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_millis(50);
    let ops = similar::capture_diff_slices_deadline(
        similar::Algorithm::Myers,
        &old_chars,
        &new_chars,
        Some(deadline),
    );
    let mut out: Vec<(usize, usize, String)> = Vec::new();
    for op in ops {
        let (tag, o, n) = op.as_tag_tuple();
        if tag == similar::DiffTag::Equal {
            continue;
        }
        let (start, end) = (old_at[o.start], old_at[o.end]);
        let text = &new[new_at[n.start]..new_at[n.end]];
        match out.last_mut() {
            // Adjacent changes are one replacement.
            Some(last) if last.1 == start => {
                last.1 = end;
                last.2.push_str(text);
            }
            _ => out.push((start, end, text.to_owned())),
        }
    }
    out
}

fn exact_entry(
    g: &ConfiguredGuardrail,
    log: &ExactLog,
    status: GuardrailStatus,
    action: GuardrailAction,
    response: Value,
) -> GuardrailLogEntry {
    let start = epoch_seconds(log.started_at.unwrap_or_else(SystemTime::now));
    let secs = log.time.as_secs_f64();
    GuardrailLogEntry {
        guardrail_name: g.name().to_owned(),
        guardrail_provider: g.provider().to_owned(),
        guardrail_mode: GuardrailMode::PostCall,
        guardrail_status: status,
        guardrail_action: action,
        guardrail_response: response,
        start_time: start,
        end_time: epoch_seconds(SystemTime::now()),
        duration: secs,
        masked_entity_count: (!log.masked.is_empty()).then(|| log.masked.clone()),
    }
}

/// Parses an event's data as JSON (for the rare events that need the full value: usage, the
/// announced response, an upstream error).
pub(crate) fn data_value(event: &SseEvent) -> Option<Value> {
    guardrail_tower_protocol::json::from_slice(event.data()?).ok()
}

#[cfg(test)]
mod tests {
    use super::changes;

    #[test]
    fn changes_are_the_spans_a_rewrite_touched() {
        assert!(changes("same", "same").is_empty());
        assert_eq!(
            changes("mail a@b.co or c@d.io now", "mail [EMAIL] or [EMAIL] now"),
            [
                (5, 11, "[EMAIL]".to_owned()),
                (15, 21, "[EMAIL]".to_owned())
            ]
        );
        assert_eq!(
            changes("café ☕ x", "café ☕ y"),
            [(10, 11, "y".to_owned())]
        );
        assert_eq!(changes("abc", ""), [(0, 3, String::new())]);
        assert_eq!(changes("", "new"), [(0, 0, "new".to_owned())]);
    }
}
