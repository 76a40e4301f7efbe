use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use guardrail_tower_core::sse::{SseDecoder, SseEvent};
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    BodyType, BoxError, BufferedCall, CallOutcome, ConfiguredGuardrail, Error, Fallback,
    GuardrailMode, Outcome, RunFuture, StreamPolicy, Usage,
};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode, response};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use serde_json::Value;
use tower_service::Service;

use crate::capture::{Capture, StreamContext};
use crate::state::{Policy, StreamState};
use crate::{GuardedBody, StreamingGuardrailBodyLayer};
use guardrail_tower_protocol::json::JsonView;
use guardrail_tower_protocol::text::{Role, TextKey};

pin_project! {
    /// The response future of [`StreamingGuardrailBody`](crate::StreamingGuardrailBody).
    pub struct ResponseFuture<B, S, ResB>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        state: State<B, S, ResB>,
        config: Arc<StreamingGuardrailBodyLayer>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, S, ResB>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        Call {
            #[pin]
            call: BufferedCall<B, S, Capture>,
        },
        ReadJson {
            parts: Option<response::Parts>,
            #[pin]
            body: ResB,
            // The first frame, kept as it came: most bodies are one frame, which is then
            // neither copied nor buffered.
            first: Option<Bytes>,
            // The frames after it, the first copied in front of them.
            buf: BytesMut,
            context: Option<StreamContext>,
        },
        CheckJson {
            run: RunFuture,
            parts: Option<response::Parts>,
            bytes: Bytes,
            context: Option<StreamContext>,
        },
        ReadAll {
            parts: Option<response::Parts>,
            body: Option<Pin<Box<ResB>>>,
            chunks: VecDeque<Bytes>,
            size: usize,
            limit: usize,
            on_overflow: Fallback,
            context: Option<StreamContext>,
        },
        CheckAll {
            run: RunFuture,
            parts: Option<response::Parts>,
            events: Vec<SseEvent>,
            keys: Vec<TextKey>,
            raw: Bytes,
            context: Option<StreamContext>,
        },
    }
}

impl<B, S, ResB> ResponseFuture<B, S, ResB>
where
    S: Service<Request<Full<Bytes>>>,
{
    pub(crate) fn new(
        call: BufferedCall<B, S, Capture>,
        config: Arc<StreamingGuardrailBodyLayer>,
    ) -> Self {
        ResponseFuture {
            state: State::Call { call },
            config,
        }
    }
}

/// The selected post_call guardrails with the policy each gets on this stream. Monitors are
/// not among them: they hold nothing back (see [`new_stream_state`]).
fn stream_guards(
    config: &StreamingGuardrailBodyLayer,
    context: &StreamContext,
) -> Vec<(ConfiguredGuardrail, StreamPolicy)> {
    config
        .guardrails
        .selected(GuardrailMode::PostCall, &context.selection)
        .filter(|g| !g.is_monitor())
        .map(|g| (g.clone(), config.effective_policy(g)))
        .collect()
}

/// Why the post-call guardrails cannot read a successful response, if they cannot: a
/// compressed body (the layer asks for `accept-encoding: identity`; decompress in front of it
/// when an upstream ignores that), or a content type that is neither JSON nor an event stream.
/// Such a response is a 502, never an unchecked pass.
fn unreadable<B>(response: &Response<B>) -> Option<Error> {
    let headers = response.headers();
    if let Some(encoding) = headers
        .get(CONTENT_ENCODING)
        .filter(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        return Some(
            Error::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the upstream response is compressed (content-encoding: {encoding}) and the post-call guardrails cannot read it"
                ),
            )
            .with_code("unreadable_upstream_response"),
        );
    }
    match BodyType::of(headers.get(CONTENT_TYPE)) {
        BodyType::Json | BodyType::EventStream => None,
        BodyType::Other | BodyType::Unspecified => {
            let content_type = headers.get(CONTENT_TYPE).map_or_else(
                || "none".to_owned(),
                |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
            );
            Some(
                Error::new(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the upstream response has a content type the post-call guardrails cannot read ({content_type})"
                    ),
                )
                .with_code("unreadable_upstream_response"),
            )
        }
    }
}

fn error_response<ResB>(err: &Error, context: &StreamContext) -> Response<GuardedBody<ResB>> {
    err.to_response(context.call_type).map(GuardedBody::full)
}

/// The upstream body failed while the layer was reading it whole: a 502 in the endpoint's shape.
fn body_failed<ResB>(
    err: impl Into<BoxError>,
    context: &mut Option<StreamContext>,
) -> Response<GuardedBody<ResB>> {
    let context = context.take().expect("polled after completion");
    error_response(&Error::upstream_unavailable(err.into()), &context)
}

fn with_body<ResB>(mut parts: response::Parts, bytes: Bytes) -> Response<GuardedBody<ResB>> {
    guardrail_tower_core::set_content_length(&mut parts.headers, bytes.len());
    Response::from_parts(parts, GuardedBody::full(bytes))
}

impl<B, S, ResB> Future for ResponseFuture<B, S, ResB>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    B: Body,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<GuardedBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Call { call } => {
                    let (response, context) = match ready!(call.poll(cx))? {
                        CallOutcome::Refused(err, call_type, _) => {
                            return Poll::Ready(Ok(err
                                .to_response(call_type)
                                .map(GuardedBody::full)));
                        }
                        CallOutcome::Called(response, None) => {
                            return Poll::Ready(Ok(response.map(GuardedBody::passthrough)));
                        }
                        CallOutcome::Called(response, Some(context)) => (response, context),
                    };
                    if !response.status().is_success() {
                        return Poll::Ready(Ok(response.map(GuardedBody::passthrough)));
                    }
                    if let Some(err) = unreadable(&response) {
                        return Poll::Ready(Ok(error_response(&err, &context)));
                    }
                    match BodyType::of(response.headers().get(CONTENT_TYPE)) {
                        BodyType::Other | BodyType::Unspecified => {
                            unreachable!("unreadable() refuses other content types")
                        }
                        BodyType::Json => {
                            let (parts, body) = response.into_parts();
                            this.state.set(State::ReadJson {
                                parts: Some(parts),
                                body,
                                first: None,
                                buf: BytesMut::new(),
                                context: Some(context),
                            });
                        }
                        BodyType::EventStream => {
                            let guards = stream_guards(this.config, &context);
                            let buffer_all = guards.iter().filter_map(|(_, p)| match p {
                                StreamPolicy::BufferAll {
                                    max_bytes,
                                    on_overflow,
                                } => Some((*max_bytes, *on_overflow)),
                                _ => None,
                            });
                            let buffer_all = buffer_all.fold(
                                None,
                                |acc: Option<(usize, Fallback)>, (max, fb)| {
                                    Some(match acc {
                                        None => (max, fb),
                                        Some((m, f)) => (
                                            m.min(max),
                                            if f == Fallback::FailClosed { f } else { fb },
                                        ),
                                    })
                                },
                            );
                            let (mut parts, body) = response.into_parts();
                            parts.headers.remove(CONTENT_LENGTH);
                            if let Some((limit, on_overflow)) = buffer_all {
                                this.state.set(State::ReadAll {
                                    parts: Some(parts),
                                    body: Some(Box::pin(body)),
                                    chunks: VecDeque::new(),
                                    size: 0,
                                    limit,
                                    on_overflow,
                                    context: Some(context),
                                });
                                continue;
                            }
                            let state = new_stream_state(this.config, context, guards);
                            return Poll::Ready(Ok(Response::from_parts(
                                parts,
                                GuardedBody::sse(body, state),
                            )));
                        }
                    }
                }
                StateProj::ReadJson {
                    parts,
                    mut body,
                    first,
                    buf,
                    context,
                } => {
                    let limit = this.config.max_json_body;
                    loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                if let Ok(data) = frame.into_data() {
                                    let held = first.as_ref().map_or(0, Bytes::len);
                                    if held + buf.len() + data.len() > limit {
                                        let err = Error::new(
                                            StatusCode::BAD_GATEWAY,
                                            format!("the upstream response is larger than the {limit}-byte limit for post_call guardrails"),
                                        )
                                        .with_code("response_too_large");
                                        let context =
                                            context.take().expect("polled after completion");
                                        return Poll::Ready(Ok(error_response(&err, &context)));
                                    }
                                    if first.is_none() && buf.is_empty() {
                                        *first = Some(data);
                                    } else {
                                        if let Some(first) = first.take() {
                                            buf.put(first);
                                        }
                                        buf.put(data);
                                    }
                                }
                            }
                            Some(Err(err)) => return Poll::Ready(Ok(body_failed(err, context))),
                            None => break,
                        }
                    }
                    let context = context.take().expect("polled after completion");
                    let parts = parts.take().expect("polled after completion");
                    let bytes = match first.take() {
                        Some(first) => first,
                        None => buf.split().freeze(),
                    };
                    // One parse through a borrowed view: no `Value` unless a guardrail rewrites.
                    let (texts, usage) = match context.call_type.read_response(&bytes) {
                        Ok(read) => match context.media_blind.as_deref().filter(|_| read.media) {
                            Some(guardrail) => {
                                let err = crate::capture::image_refused(guardrail);
                                return Poll::Ready(Ok(error_response(&err, &context)));
                            }
                            None => (read.texts, read.usage),
                        },
                        Err(e) => {
                            let err = Error::upstream_unavailable(format!(
                                "the upstream sent invalid JSON: {e}"
                            ));
                            return Poll::Ready(Ok(error_response(&err, &context)));
                        }
                    };
                    if let Some(report) = &context.report {
                        report.set_observed();
                        if let Some(usage) = usage {
                            report.set_usage(usage);
                        }
                    }
                    match run_post_call(this.config, &context, texts) {
                        None => return Poll::Ready(Ok(with_body(parts, bytes))),
                        Some(run) => this.state.set(State::CheckJson {
                            run,
                            parts: Some(parts),
                            bytes,
                            context: Some(context),
                        }),
                    }
                }
                StateProj::CheckJson {
                    run,
                    parts,
                    bytes,
                    context,
                } => {
                    let outcome = ready!(Pin::new(run).poll(cx));
                    let context = context.take().expect("polled after completion");
                    let parts = parts.take().expect("polled after completion");
                    return Poll::Ready(Ok(match outcome {
                        Outcome::Blocked(err) => error_response(&err, &context),
                        Outcome::Allowed {
                            rewritten: None, ..
                        } => with_body(parts, bytes.clone()),
                        Outcome::Allowed {
                            rewritten: Some(texts),
                            ..
                        } => {
                            // The rare path: build the `Value` to write the masks into (the
                            // bytes already parsed once, with the same parser).
                            let written = serde_json::from_slice::<Value>(bytes)
                                .map_err(|e| e.to_string())
                                .and_then(|mut json| {
                                    context
                                        .call_type
                                        .set_texts(Side::Response, &mut json, &texts)
                                        .map(|()| json)
                                        .map_err(|e| e.to_string())
                                });
                            match written {
                                Ok(json) => with_body(
                                    parts,
                                    serde_json::to_vec(&json)
                                        .expect("a Value always serializes")
                                        .into(),
                                ),
                                Err(e) => error_response(
                                    &Error::internal(format!(
                                        "could not apply the guardrail rewrite: {e}"
                                    )),
                                    &context,
                                ),
                            }
                        }
                    }));
                }
                StateProj::ReadAll {
                    parts,
                    body,
                    chunks,
                    size,
                    limit,
                    on_overflow,
                    context,
                } => {
                    let inner = body.as_mut().expect("polled after completion");
                    loop {
                        match ready!(inner.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                let Ok(mut data) = frame.into_data() else {
                                    continue;
                                };
                                let chunk = data.copy_to_bytes(data.remaining());
                                *size += chunk.len();
                                chunks.push_back(chunk);
                                if *size > *limit {
                                    let context = context.take().expect("polled after completion");
                                    let parts = parts.take().expect("polled after completion");
                                    return Poll::Ready(Ok(match on_overflow {
                                        Fallback::FailClosed => {
                                            let err = Error::guardrail_failed(
                                                "buffer_all",
                                                format!(
                                                    "the streamed response is larger than the buffer_all limit of {limit} bytes"
                                                ),
                                            );
                                            error_response(&err, &context)
                                        }
                                        Fallback::FailOpen => {
                                            tracing::warn!(
                                                limit = *limit,
                                                "buffer_all limit reached; releasing the stream and checking it at the end"
                                            );
                                            let guards = stream_guards(this.config, &context)
                                                .into_iter()
                                                .map(|(g, p)| match p {
                                                    StreamPolicy::BufferAll { .. } => {
                                                        (g, StreamPolicy::EndOfStream)
                                                    }
                                                    p => (g, p),
                                                })
                                                .collect();
                                            let state =
                                                new_stream_state(this.config, context, guards);
                                            let body =
                                                body.take().expect("polled after completion");
                                            Response::from_parts(
                                                parts,
                                                GuardedBody::sse_resumed(
                                                    body,
                                                    state,
                                                    std::mem::take(chunks),
                                                ),
                                            )
                                        }
                                    }));
                                }
                            }
                            Some(Err(err)) => return Poll::Ready(Ok(body_failed(err, context))),
                            None => break,
                        }
                    }
                    *body = None;
                    let context = context.take().expect("polled after completion");
                    let parts = parts.take().expect("polled after completion");
                    let mut raw = BytesMut::with_capacity(*size);
                    for chunk in chunks.drain(..) {
                        raw.put(chunk);
                    }
                    let raw = raw.freeze();
                    let (events, keys, texts, differs) =
                        match decode_all(&raw, this.config.max_event_size, &context) {
                            Ok(decoded) => decoded,
                            Err(err) => return Poll::Ready(Ok(error_response(&err, &context))),
                        };
                    // A summary that repeats a text other than its deltas' is sent with the
                    // text that was checked, never as the upstream wrote it.
                    let original = differs.then(|| texts.clone());
                    let raw = match &original {
                        Some(texts) => reencode(context.call_type, &events, &keys, texts),
                        None => raw,
                    };
                    match run_post_call(this.config, &context, texts) {
                        None => {
                            return Poll::Ready(Ok(Response::from_parts(
                                parts,
                                GuardedBody::full(raw),
                            )));
                        }
                        Some(run) => this.state.set(State::CheckAll {
                            run,
                            parts: Some(parts),
                            events,
                            keys,
                            raw,
                            context: Some(context),
                        }),
                    }
                }
                StateProj::CheckAll {
                    run,
                    parts,
                    events,
                    keys,
                    raw,
                    context,
                } => {
                    let outcome = ready!(Pin::new(run).poll(cx));
                    let context = context.take().expect("polled after completion");
                    let parts = parts.take().expect("polled after completion");
                    return Poll::Ready(Ok(match outcome {
                        // Nothing was sent yet: the client gets a plain error response.
                        Outcome::Blocked(err) => error_response(&err, &context),
                        Outcome::Allowed {
                            rewritten: None, ..
                        } => Response::from_parts(parts, GuardedBody::full(raw.clone())),
                        Outcome::Allowed {
                            rewritten: Some(texts),
                            ..
                        } => {
                            let body = reencode(context.call_type, events, keys, &texts);
                            Response::from_parts(parts, GuardedBody::full(body))
                        }
                    }));
                }
            }
        }
    }
}

/// Runs the selected post_call guardrails on a whole response's texts; `None` when there is no
/// text or no guardrail to run.
fn run_post_call(
    config: &StreamingGuardrailBodyLayer,
    context: &StreamContext,
    texts: Vec<String>,
) -> Option<RunFuture> {
    if texts.is_empty() {
        return None;
    }
    config.guardrails.run(
        GuardrailMode::PostCall,
        &context.selection,
        Side::Response,
        texts,
        context.meta.clone(),
        context.log.clone(),
    )
}

fn new_stream_state(
    config: &StreamingGuardrailBodyLayer,
    context: StreamContext,
    guards: Vec<(ConfiguredGuardrail, StreamPolicy)>,
) -> StreamState {
    // Monitors check the whole text once the stream has ended, detached: events flow past them.
    let monitors: Vec<ConfiguredGuardrail> = config
        .guardrails
        .selected(GuardrailMode::PostCall, &context.selection)
        .filter(|g| g.is_monitor())
        .cloned()
        .collect();
    // The stream's state lives as long as the stream: what none of its guardrails reads of the
    // request (the body, the prompt however large; the headers) is not kept for minutes.
    let media_blind = context.media_blind;
    let mut meta = context.meta;
    let (reads_body, reads_headers) = guards.iter().map(|(g, _)| g).chain(&monitors).fold(
        (false, false),
        |(body, headers), g| {
            (
                body || g.reads_request_body(),
                headers || g.reads_request_headers(),
            )
        },
    );
    if !reads_body {
        meta = meta.without_body();
    }
    if !reads_headers {
        meta = meta.without_headers();
    }
    StreamState::new(
        context.call_type,
        guards
            .into_iter()
            .map(|(g, p)| {
                let policy = Policy::of(p, &g);
                (g, policy)
            })
            .collect(),
        meta,
        context.log,
        context.report,
        config.max_event_size,
    )
    .with_monitors(monitors)
    .refusing_images(media_blind)
}

/// A whole buffered stream: its events, the text of each key in order of first appearance,
/// and whether a summary event repeats a text other than the one its deltas carried.
type Decoded = (Vec<SseEvent>, Vec<TextKey>, Vec<String>, bool);

/// Decodes a whole buffered stream through the protocol's text view.
fn decode_all(
    raw: &Bytes,
    max_event_size: usize,
    context: &StreamContext,
) -> Result<Decoded, Error> {
    let mut decoder = SseDecoder::with_max_event_size(max_event_size);
    decoder.push(raw.clone());
    let mut events = Vec::new();
    let invalid = |e: &dyn std::fmt::Display| {
        Error::upstream_unavailable(format!("the upstream stream is invalid: {e}"))
    };
    while let Some(event) = decoder.next_event().map_err(|e| invalid(&e))? {
        events.push(event);
    }
    while let Some(event) = decoder.finish().map_err(|e| invalid(&e))? {
        events.push(event);
    }
    let mut keys: Vec<TextKey> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    let mut fulls: Vec<(TextKey, String)> = Vec::new();
    let mut usage = None;
    for event in &events {
        if event.has_unknown_fields() {
            return Err(crate::state::unknown_fields());
        }
        let Some(data) = event.data() else { continue };
        let view;
        let read = match JsonView::parse(data) {
            Ok(parsed) => {
                view = parsed;
                let read = context
                    .call_type
                    .read_event(event.event_type(), &view)
                    .map_err(|e| invalid(&e))?;
                if let Some(guardrail) = context.media_blind.as_deref().filter(|_| read.media) {
                    return Err(crate::capture::image_refused(guardrail));
                }
                read
            }
            // Data that is not JSON and may still hold text: refused, as event by event
            // (`[DONE]` and empty data are read as what they are).
            Err(_) => context
                .call_type
                .read_non_json_event(data)
                .ok_or_else(crate::state::non_json_data)?,
        };
        if read.has_usage {
            if let Some(value) = crate::state::data_value(event) {
                Usage::update_from_event(&mut usage, context.call_type, event.event_type(), &value);
            }
        }
        for (key, role, text) in read.texts {
            match role {
                Role::Delta => match keys.iter().position(|k| *k == key) {
                    Some(i) => texts[i].push_str(&text),
                    None => {
                        keys.push(key);
                        texts.push(text.into_owned());
                    }
                },
                // The complete text of a key no delta brought (an item only its `.done`
                // event carries): new text, as in a stream read event by event.
                Role::Full if !keys.contains(&key) => {
                    keys.push(key);
                    texts.push(text.into_owned());
                }
                Role::Full => fulls.push((key, text.into_owned())),
            }
        }
    }
    let differs = fulls.iter().any(|(key, full)| {
        keys.iter()
            .position(|k| k == key)
            .map_or(!full.is_empty(), |i| texts[i] != *full)
    });
    if let Some(report) = &context.report {
        report.set_observed();
        if let Some(usage) = usage {
            report.set_usage(usage);
        }
    }
    Ok((events, keys, texts, differs))
}

/// Re-encodes a buffered stream with the checked texts: each key's whole text goes in the first
/// delta that carried text of it (later deltas carry none), and summary events repeat it.
fn reencode(
    call_type: guardrail_tower_core::CallType,
    events: &[SseEvent],
    keys: &[TextKey],
    texts: &[String],
) -> Bytes {
    let mut out = BytesMut::new();
    let mut started = vec![false; keys.len()];
    for event in events {
        let Some(data) = event.data() else {
            out.put_slice(event.raw());
            continue;
        };
        let roles: Vec<(TextKey, Role)> = match JsonView::parse(data) {
            Ok(view) => match call_type.read_event(event.event_type(), &view) {
                Ok(read) => read.texts.into_iter().map(|(k, r, _)| (k, r)).collect(),
                Err(_) => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        if roles.is_empty() {
            out.put_slice(event.raw());
            continue;
        }
        let rewritten = call_type.rewrite_event(event, |i, _, _, text| {
            let Some(&(key, role)) = roles.get(i) else {
                return;
            };
            let found = keys.iter().position(|k| *k == key);
            *text = match (role, found) {
                // The first delta that carried text, not an announcement with none (`""` in
                // `response.content_part.added`, `content_block_start`): clients that print
                // only the delta events must read the text.
                (Role::Delta, Some(j)) if !started[j] && !text.is_empty() => {
                    started[j] = true;
                    texts[j].clone()
                }
                (Role::Full, Some(j)) => texts[j].clone(),
                _ => String::new(),
            };
        });
        match rewritten {
            Some(bytes) => out.put(bytes),
            None => out.put_slice(event.raw()),
        }
    }
    out.freeze()
}
