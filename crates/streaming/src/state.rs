//! The state of one guarded SSE stream: channels of text, each guardrail's progress under its
//! policy, and the in-order queue of events waiting to be released.
//!
//! Events are released strictly in order. An event is released when every guardrail has
//! cleared the text it carries (exact: no match can still involve it; window: its window was
//! checked), when the channels it ends have had their final check, and, for Responses summary
//! events that repeat the whole text, when those channels are final. Masks are applied as text
//! is released, and summary events are rewritten with the masked text.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use guardrail_tower_core::sse::{SseDecoder, SseError, SseEvent};
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    BoxFuture, CallType, Check, ConfiguredGuardrail, Effect, Error, GuardrailAction,
    GuardrailInput, GuardrailLog, GuardrailLogEntry, GuardrailMode, GuardrailStatus, RequestMeta,
    ResponseReport, ResponsesStreamState, SpanAction, StreamPolicy, Usage, epoch_seconds,
};
use serde_json::Value;
use tokio::time::Instant;

use crate::events::{self, ChannelKey, Summary};

/// How one guardrail checks this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    Exact,
    Window { chars: usize, overlap: usize },
    EndOfStream,
}

impl Policy {
    pub(crate) fn from_stream_policy(policy: StreamPolicy) -> Policy {
        match policy {
            StreamPolicy::Exact => Policy::Exact,
            StreamPolicy::Window { chars, overlap } => Policy::Window {
                chars: chars.max(1),
                overlap,
            },
            _ => Policy::EndOfStream,
        }
    }
}

/// A replacement of original text `[start, end)` of a channel.
#[derive(Debug, Clone)]
struct Replacement {
    start: usize,
    end: usize,
    text: String,
}

#[derive(Debug)]
struct Channel {
    key: ChannelKey,
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

    /// Adds a replacement unless it overlaps one already there (the first one wins).
    fn replace(&mut self, start: usize, end: usize, text: String) {
        if start == end && text.is_empty() {
            return;
        }
        if self
            .replacements
            .iter()
            .any(|r| r.start < end && start < r.end)
        {
            return;
        }
        let at = self.replacements.partition_point(|r| r.start < start);
        self.replacements
            .insert(at, Replacement { start, end, text });
    }

    /// The output for original text `[start, end)`: the original with replacements applied.
    /// Borrowed when nothing changes.
    fn render(&self, start: usize, end: usize, skip_to: &mut usize) -> Option<String> {
        let touched = *skip_to > start
            || self
                .replacements
                .iter()
                .any(|r| r.start < end && r.end > start);
        if !touched {
            return None;
        }
        let mut out = String::new();
        let mut pos = start.max(*skip_to);
        for r in &self.replacements {
            if r.end <= pos || r.start >= end {
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

    /// The complete output text so far (for Responses summary events).
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
    /// The channels checked, with `(window start, new text start, end)` each.
    parts: Vec<(usize, usize, usize, usize)>,
    /// Whether this is a channel's (or the stream's) final check.
    final_check: bool,
}

/// An event waiting to be released.
#[derive(Debug)]
struct Held {
    event: SseEvent,
    /// `(channel, start, end)` of the text it carries.
    ranges: Vec<(usize, usize, usize)>,
    ends: Vec<usize>,
    summary: Option<Summary>,
    terminal: bool,
    sequence_number: Option<u64>,
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
    keeps_all_text: bool,
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
            queue: VecDeque::new(),
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
            keeps_all_text,
        }
    }

    /// Bytes held by this stream: the decoder's partial event, queued events and kept text.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.decoder.buffered_len()
            + self
                .queue
                .iter()
                .map(|h| h.event.raw().len())
                .sum::<usize>()
            + self.channels.iter().map(|c| c.text.len()).sum::<usize>()
    }

    /// Feeds a chunk from the upstream.
    pub(crate) fn push(&mut self, chunk: Bytes) {
        if self.finished {
            return;
        }
        self.decoder.push(chunk);
        self.take_events(SseDecoder::next_event);
    }

    /// The upstream body ended cleanly.
    pub(crate) fn push_eof(&mut self) {
        if self.finished || self.eof {
            return;
        }
        self.eof = true;
        // At the end, a last event without its blank line counts too.
        if !self.take_events(SseDecoder::finish) {
            return;
        }
        if let Err(err) = self.end_all() {
            self.block(err);
        }
    }

    /// Processes the events `next` yields until it has none; returns false when the stream
    /// ended (a block, or an undecodable stream).
    fn take_events(
        &mut self,
        next: fn(&mut SseDecoder) -> Result<Option<SseEvent>, SseError>,
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

    /// The upstream body failed: drop what was not released, log what ran.
    pub(crate) fn upstream_failed(&mut self) {
        self.queue.clear();
        self.jobs.clear();
        self.running = None;
        self.flush_exact_logs("the upstream body failed before the stream ended");
        self.finished = true;
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    fn channel(&mut self, key: ChannelKey) -> usize {
        if let Some(i) = self.channels.iter().position(|c| c.key == key) {
            return i;
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
        let info = events::classify(self.call_type, &event);
        if info.has_usage || info.announces_response || info.upstream_error {
            if let Some(value) = events::data_value(&event) {
                if info.has_usage {
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
                if info.announces_response {
                    self.responses.response = value.get("response").cloned();
                }
                if info.upstream_error {
                    if let Some(report) = &self.report {
                        report.set_in_band_error(upstream_error(&value));
                    }
                }
            }
        }
        let mut ranges = Vec::with_capacity(info.texts.len());
        for (key, text) in &info.texts {
            let idx = self.channel(*key);
            let ch = &mut self.channels[idx];
            let start = ch.end();
            ch.text.push_str(text);
            ranges.push((idx, start, ch.end()));
        }
        let ends: Vec<usize> = info.ends.iter().map(|k| self.channel(*k)).collect();
        let summary = info.summary.clone();
        let terminal = info.terminal;
        let sequence_number = info.sequence_number;
        drop(info);
        // Channels to check, without cloning the ranges into the held event (empty vectors
        // do not allocate: most events touch one channel and end none).
        let first = ranges.first().map(|r| r.0);
        let more: Vec<usize> = ranges.iter().skip(1).map(|r| r.0).collect();
        let ended = ends.clone();
        self.queue.push_back(Held {
            event,
            ranges,
            ends,
            summary,
            terminal,
            sequence_number,
        });
        for idx in first.into_iter().chain(more) {
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
        let found = matcher.find(region, !final_check);
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
        for (start, stop, text) in masks {
            ch.replace(start, stop, text);
        }
        if final_check {
            state.cleared = end;
            state.final_done = true;
            state.scan_from = end;
        } else {
            let tail = ch.slice(scan_from, end);
            let hold = matcher.hold_back(tail).min(tail.len());
            let cleared = end - hold;
            state.cleared = state.cleared.max(cleared);
            state.scan_from = scan_from.max(cleared);
        }
        guard.exact.time += started.elapsed();
        Ok(())
    }

    /// Window mode: queue a check when enough new text arrived, or the final one.
    fn schedule_window(&mut self, gi: usize, idx: usize) {
        let Policy::Window { chars, overlap } = self.guards[gi].policy else {
            return;
        };
        let ch = &self.channels[idx];
        let state = &mut self.guards[gi].channels[idx];
        if state.busy || state.final_done {
            return;
        }
        let end = ch.end();
        let start = state.cleared.max(ch.base);
        let new_chars = ch.slice(start, end).chars().count();
        if ch.ended && new_chars == 0 {
            state.cleared = end;
            state.final_done = true;
            return;
        }
        if !ch.ended && new_chars < chars {
            return;
        }
        let before = ch.slice(ch.base, start);
        let window_start = before
            .char_indices()
            .rev()
            .nth(overlap.saturating_sub(1))
            .map_or(ch.base, |(i, _)| ch.base + i);
        let window_start = if overlap == 0 { start } else { window_start };
        state.busy = true;
        self.jobs.push_back(Job {
            guard: gi,
            parts: vec![(idx, window_start, start, end)],
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
            .map(|(i, c)| (i, c.base, c.base, c.end()))
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
        if self.release() {
            return Step::Progress;
        }
        if let Some((_, fut)) = &mut self.running {
            return match fut.as_mut().poll(cx) {
                std::task::Poll::Ready(check) => {
                    let (job, _) = self.running.take().expect("a check is running");
                    if let Err(err) = self.on_check(job, check) {
                        self.block(err);
                    }
                    Step::Progress
                }
                std::task::Poll::Pending => Step::Waiting,
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
                return if self.out.is_empty() {
                    Step::Finished
                } else {
                    Step::Progress
                };
            }
            // Every check is decided at EOF, so nothing can still be held; if something is, a
            // bug kept it: send it rather than hang the stream.
            tracing::error!("events were still held after the end of the stream; releasing them");
            self.release_all();
            return Step::Progress;
        }
        Step::NeedInput
    }

    fn start(&mut self, job: Job) {
        let guard = &self.guards[job.guard];
        let texts: Vec<String> = job
            .parts
            .iter()
            .map(|&(idx, window_start, _, end)| {
                self.channels[idx].slice(window_start, end).to_owned()
            })
            .collect();
        let input = GuardrailInput::new(
            texts,
            Side::Response,
            GuardrailMode::PostCall,
            self.meta.clone(),
        );
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
                    for ((idx, window_start, start, end), new) in job.parts.iter().zip(texts) {
                        let ch = &mut self.channels[*idx];
                        let prefix = ch.slice(*window_start, *start);
                        let new_part = match new.strip_prefix(prefix) {
                            Some(rest) => rest.to_owned(),
                            None => {
                                tracing::warn!(
                                    guardrail = self.guards[gi].g.name(),
                                    "a window rewrite changed text already sent; only the new text is replaced"
                                );
                                let mut cut = prefix.len().min(new.len());
                                while !new.is_char_boundary(cut) {
                                    cut -= 1;
                                }
                                new[cut..].to_owned()
                            }
                        };
                        if new_part != ch.slice(*start, *end) {
                            ch.replace(*start, *end, new_part);
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
        for &(idx, _, _, end) in &job.parts {
            let state = &mut guard.channels[idx];
            state.busy = false;
            state.cleared = state.cleared.max(end);
            state.covered = end;
            if job.final_check && self.channels[idx].end() == end {
                state.final_done = true;
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
        held.ranges
            .iter()
            .all(|&(idx, _, end)| self.cleared(idx, end))
            && held.ends.iter().all(|&idx| self.final_done(idx))
            && match &held.summary {
                None => true,
                Some(summary) => self
                    .channels
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| events::summary_covers(summary, c.key))
                    .all(|(i, _)| self.final_done(i)),
            }
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

    fn release_all(&mut self) {
        while let Some(held) = self.queue.pop_front() {
            self.emit(held);
        }
    }

    fn emit(&mut self, held: Held) {
        if let Some(seq) = held.sequence_number {
            self.last_sent_sequence = Some(seq);
        }
        let mut rewritten: Option<Value> = None;
        for &(idx, start, end) in &held.ranges {
            let ch = &mut self.channels[idx];
            let mut skip_to = ch.skip_to;
            let text = ch.render(start, end, &mut skip_to);
            if let Some(report) = &self.report {
                report.add_delivered_text(text.as_deref().unwrap_or_else(|| ch.slice(start, end)));
            }
            ch.skip_to = skip_to;
            ch.emitted = end;
            if let Some(text) = text {
                let data = rewritten
                    .get_or_insert_with(|| events::data_value(&held.event).unwrap_or(Value::Null));
                events::set_delta_text(self.call_type, data, ch.key, &text);
            }
        }
        if let Some(summary) = &held.summary {
            let changed = self
                .channels
                .iter()
                .any(|c| events::summary_covers(summary, c.key) && !c.replacements.is_empty());
            if changed {
                let data = rewritten
                    .get_or_insert_with(|| events::data_value(&held.event).unwrap_or(Value::Null));
                let channels = &self.channels;
                events::set_summary_texts(data, &|key| {
                    channels
                        .iter()
                        .find(|c| c.key == key && !c.replacements.is_empty())
                        .map(Channel::full_output)
                });
            }
        }
        match rewritten {
            Some(data) if !data.is_null() => self.out.push_back(events::encode(&held.event, &data)),
            _ => self.out.push_back(held.event.raw().clone()),
        }
    }

    /// At a block: sends the text of the first held event that every guardrail has cleared,
    /// so the client gets every allowed character up to the block (not a word cut off where an
    /// event happened to end) and nothing after it.
    fn release_cleared_part_of_front(&mut self) {
        let Some(front) = self.queue.front() else {
            return;
        };
        if front.ranges.is_empty()
            || !front.ends.is_empty()
            || front.summary.is_some()
            || front.terminal
        {
            return;
        }
        let cuts: Vec<(usize, usize, usize)> = front
            .ranges
            .iter()
            .map(|&(idx, start, end)| {
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
        let mut data = events::data_value(&held.event).unwrap_or(Value::Null);
        if data.is_null() {
            return;
        }
        for (idx, start, cut) in cuts {
            let ch = &mut self.channels[idx];
            let mut skip_to = ch.skip_to;
            let text = ch
                .render(start, cut, &mut skip_to)
                .unwrap_or_else(|| ch.slice(start, cut).to_owned());
            if let Some(report) = &self.report {
                report.add_delivered_text(&text);
            }
            events::set_delta_text(self.call_type, &mut data, ch.key, &text);
        }
        if let Some(seq) = held.sequence_number {
            self.last_sent_sequence = Some(seq);
        }
        self.out.push_back(events::encode(&held.event, &data));
    }

    /// Drops original text no guardrail and no pending event needs any more.
    fn trim(&mut self) {
        for (idx, ch) in self.channels.iter_mut().enumerate() {
            let mut keep = ch.emitted.min(ch.skip_to.max(ch.emitted));
            for g in &self.guards {
                let gc = &g.channels[idx];
                let need = match g.policy {
                    Policy::Exact => gc.scan_from,
                    // The next window looks back `overlap` chars: keep a generous margin.
                    Policy::Window { overlap, .. } => gc.cleared.saturating_sub(overlap * 4),
                    Policy::EndOfStream => ch.base,
                };
                keep = keep.min(need);
            }
            if keep > ch.base + 4096 {
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

    /// A guardrail blocked: send what was already cleared (as it would have gone out had the
    /// upstream sent it in smaller chunks), drop the rest, send the endpoint's in-band error,
    /// end.
    fn block(&mut self, err: Error) {
        self.release();
        self.release_cleared_part_of_front();
        self.queue.clear();
        self.jobs.clear();
        self.running = None;
        self.flush_exact_logs("the stream was blocked by another guardrail");
        self.responses.next_sequence_number = self.last_sent_sequence.map_or(0, |s| s + 1);
        self.out
            .push_back(err.stream_events(self.call_type, &self.responses));
        if let Some(report) = &self.report {
            report.set_in_band_error(err);
        }
        self.finished = true;
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
    }
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

/// The error an upstream error event stands for (passed through to the client as it came).
fn upstream_error(value: &Value) -> Error {
    let error = value.get("error").unwrap_or(value);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("the upstream sent an error event");
    let mut err = Error::upstream_unavailable(message.to_owned());
    if let Some(code) = error.get("code").and_then(Value::as_str) {
        err = err.with_code(code.to_owned());
    }
    err
}
