//! The response body of a layer that either passes the inner body through or answers itself.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use guardrail_tower_protocol::ResponsesStreamState;
use guardrail_tower_sse::SseDecoder;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{CallType, Error, ResponseReport, StreamWatch};

pin_project! {
    /// Either the inner service's body, untouched, a complete body the layer wrote itself (an
    /// error response), or an event stream passed through that ends with the endpoint's
    /// in-band error event and terminator if the inner body fails ([`ResponseBody::stream`]).
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
        Stream {
            #[pin]
            body: B,
            // Boxed: every layer's body nests the next one's, and a variant holding the
            // decoder inline made each level of every response (streamed or not) larger by it.
            state: Box<StreamState>,
        },
    }
}

/// What [`Kind::Stream`] keeps besides the inner body.
struct StreamState {
    call_type: CallType,
    // Events are released whole: a stream that fails mid-event never leaves the client half
    // an event in front of the error event.
    decoder: SseDecoder,
    // What a Responses API stream announced, to end it with a well-formed `response.failed`.
    responses: Option<Box<ResponsesStreamState>>,
    report: Option<ResponseReport>,
    // Reads usage and upstream error events into `report` for the spend log, unless a layer
    // inside this one already does.
    watch: Option<StreamWatch>,
    tail: Option<Bytes>,
    ended: bool,
}

impl<B> ResponseBody<B> {
    /// The inner body, passed through.
    pub fn new(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full { data: None },
        }
    }

    /// An event stream of `call_type`, passed through byte for byte, one whole event at a
    /// time (an event split across chunks is released when its last byte arrives). If the
    /// inner body fails (the upstream reset the connection, a read timed out) or sends an
    /// event larger than the SSE decoder's limit, the stream ends the one way every layer
    /// ends a stream whose head was sent: [`Error::stream_interrupted`]'s in-band events for
    /// the endpoint and its terminator, recorded in `report` for the spend log. The client
    /// never gets a cut body nor half an event. At a clean end, a last event without its
    /// blank line is released as it came.
    ///
    /// Unless a layer inside already reads the stream for `report` (it is marked observed),
    /// this body does, with a [`StreamWatch`] over the events it frames anyway: the spend log
    /// then needs no framing of its own.
    pub fn stream(body: B, call_type: CallType, report: Option<ResponseReport>) -> Self {
        let responses = (call_type == CallType::Responses)
            .then(|| Box::new(ResponsesStreamState::new("resp_interrupted", None)));
        let watch = report
            .as_ref()
            .filter(|report| !report.is_observed())
            .map(|report| {
                report.set_observed();
                StreamWatch::new(call_type)
            });
        ResponseBody {
            kind: Kind::Stream {
                body,
                state: Box::new(StreamState {
                    call_type,
                    decoder: SseDecoder::new(),
                    responses,
                    report,
                    watch,
                    tail: None,
                    ended: false,
                }),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    // Small enough to be inlined where it is called: a body that only passes the inner one's
    // frames on (most layers, for most responses) then costs no call of its own per frame.
    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { body, state } => poll_stream(body, state, cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Stream { body, state } => {
                state.tail.is_none() && (state.ended || body.is_end_stream())
            }
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            // It may end with events the inner body did not send.
            Kind::Stream { .. } => SizeHint::default(),
        }
    }
}

/// [`ResponseBody::poll_frame`] of a stream passed through ([`ResponseBody::stream`]).
#[inline(never)]
fn poll_stream<B>(
    mut body: Pin<&mut B>,
    state: &mut StreamState,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: Body<Data = Bytes>,
{
    loop {
        let StreamState {
            call_type,
            decoder,
            responses,
            report,
            watch,
            tail,
            ended,
        } = &mut *state;
        let mut watch = watch.as_mut().zip(report.as_ref());
        if let Some(tail) = tail.take() {
            return Poll::Ready(Some(Ok(Frame::data(tail))));
        }
        if *ended {
            return Poll::Ready(None);
        }
        // Every arm that does not return or go round again is a failure: the inner
        // body failed, or an event was too large.
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    // Whole `data:` events that neither the Responses tracker nor the
                    // log reads (most chunks of a chat stream) pass as they are: framing
                    // them would give the same bytes and leave the decoder as it is.
                    if responses.is_none()
                        && decoder.is_whole_data_events(&data)
                        && watch
                            .as_ref()
                            .is_none_or(|(w, _)| w.ignores_data_events(&data))
                    {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    decoder.push(data);
                    match whole_events(decoder, responses.as_deref_mut(), &mut watch, false) {
                        Ok(Some(events)) => {
                            return Poll::Ready(Some(Ok(Frame::data(events))));
                        }
                        Ok(None) => continue,
                        Err(()) => {}
                    }
                }
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(_)) => {}
            None => {
                *ended = true;
                let events = whole_events(decoder, responses.as_deref_mut(), &mut watch, true);
                if let Ok(events) = events {
                    *tail = events;
                    continue;
                }
            }
        }
        tracing::warn!(
            call_type = call_type.as_str(),
            "the upstream stream failed after the response head was sent"
        );
        *ended = true;
        let error = Error::stream_interrupted();
        let state = responses.as_deref().cloned().unwrap_or_default();
        let mut events = error.stream_events(*call_type, &state);
        if let Some(report) = report {
            report.set_in_band_error(error);
        }
        *tail = Some(events.copy_to_bytes(events.remaining()));
    }
}

/// The raw bytes of the whole events `decoder` holds (with `finish`, also a last event without
/// its blank line), observed by the Responses tracker and the watch; `Err` when an event is too
/// large.
fn whole_events(
    decoder: &mut SseDecoder,
    mut responses: Option<&mut ResponsesStreamState>,
    watch: &mut Option<(&mut StreamWatch, &ResponseReport)>,
    finish: bool,
) -> Result<Option<Bytes>, ()> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    loop {
        // Framed only: the fields are split out for the Responses tracker alone.
        let event = if finish {
            decoder.finish_raw()
        } else {
            decoder.next_raw()
        };
        let Some(event) = event.map_err(|_| ())? else {
            break;
        };
        let event = match responses.as_deref_mut() {
            Some(state) => {
                let event = event.parse();
                if let Some(data) = event.data() {
                    state.observe(data);
                }
                if let Some((watch, report)) = watch {
                    watch.observe(&event, report);
                }
                event.into_raw()
            }
            None => {
                if let Some((watch, report)) = watch {
                    watch.observe_raw(&event, report);
                }
                event.into_raw()
            }
        };
        match (&mut first, &mut joined) {
            (None, _) => first = Some(event),
            (Some(first), None) => {
                let mut buf = BytesMut::with_capacity(first.len() + event.len());
                buf.extend_from_slice(first);
                buf.extend_from_slice(&event);
                joined = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&event),
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first))
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Full { data } => f.debug_tuple("ResponseBody::Full").field(data).finish(),
            Kind::Stream { state, .. } => f
                .debug_struct("ResponseBody::Stream")
                .field("call_type", &state.call_type)
                .finish_non_exhaustive(),
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        ResponseBody::empty()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    #[test]
    fn each_level_adds_a_pointer_not_a_decoder() {
        // Layers nest their bodies (the gateway's responses are four `ResponseBody` levels
        // deep) and the response climbs the stack by value: a level is the inner body and a
        // pointer to the stream state, whatever variant it is in.
        type Inner = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;
        let one = std::mem::size_of::<ResponseBody<Inner>>();
        let four =
            std::mem::size_of::<ResponseBody<ResponseBody<ResponseBody<ResponseBody<Inner>>>>>();
        assert!(one <= 48, "one level: {one} bytes");
        assert!(four <= 96, "four levels: {four} bytes");
    }

    #[tokio::test]
    async fn full_and_inner() {
        let b: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::from_static(b"err"));
        assert_eq!(b.size_hint().exact(), Some(3));
        assert!(!b.is_end_stream());
        assert_eq!(b.collect().await.unwrap().to_bytes(), "err");

        let b = ResponseBody::new(Full::new(Bytes::from_static(b"ok")));
        assert_eq!(b.size_hint().exact(), Some(2));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "ok");

        let b: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::new());
        assert!(b.is_end_stream());
    }

    fn failing(chunks: &[&'static str]) -> impl Body<Data = Bytes, Error = std::io::Error> + use<> {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .chain(std::iter::once(Err(std::io::Error::other("reset"))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn chunks(chunks: Vec<String>) -> impl Body<Data = Bytes, Error = std::io::Error> + use<> {
        StreamBody::new(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(Frame::data(Bytes::from(c))))
                .collect::<Vec<_>>(),
        ))
    }

    /// Chunks of whole `data:` events pass unframed; the bytes are the upstream's, and the log
    /// still gets the usage and an in-band error, whether they come in a chunk of their own,
    /// after other events in one chunk, or split across chunks.
    #[tokio::test]
    async fn whole_data_events_pass_and_the_log_still_reads_usage_and_errors() {
        let delta = |t: &str| {
            format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}\"}}}}]}}\n\n")
        };
        let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n";
        let error = "data: {\"error\":{\"message\":\"filtered\",\"code\":\"content_policy_violation\"}}\n\n";
        let cases: Vec<Vec<String>> = vec![
            // One event a chunk, the usage on its own.
            vec![
                delta("a"),
                delta("b"),
                delta("c"),
                usage.into(),
                "data: [DONE]\n\n".into(),
            ],
            // The usage after a delta in one chunk.
            vec![delta("a"), delta("b") + usage, "data: [DONE]\n\n".into()],
            // The usage cut in two, then whole events again.
            vec![
                delta("a"),
                usage[..20].into(),
                usage[20..].to_owned() + &delta("b"),
                delta("c"),
            ],
        ];
        // The chunks through the error layer's body: the bytes come out as they went in; what
        // the log read is in the report.
        async fn passed(case: &[String]) -> ResponseReport {
            let report = ResponseReport::new();
            let body = ResponseBody::stream(
                chunks(case.to_vec()),
                CallType::ChatCompletions,
                Some(report.clone()),
            );
            let got = body.collect().await.unwrap().to_bytes();
            assert_eq!(got, case.concat(), "{case:?}");
            report
        }
        for case in cases {
            let report = passed(&case).await;
            assert_eq!(report.usage().map(|u| u.total_tokens), Some(5), "{case:?}");
            assert!(report.in_band_error().is_none());
        }
        for case in [
            vec![delta("a"), delta("b"), error.to_owned()],
            vec![delta("a"), delta("b") + error],
        ] {
            let report = passed(&case).await;
            let error = report.in_band_error().expect("the in-band error is read");
            assert_eq!(error.code(), Some("content_policy_violation"));
        }
    }

    #[tokio::test]
    async fn a_failing_stream_ends_with_the_in_band_error_and_terminator() {
        let chat = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        let report = ResponseReport::new();
        let body = ResponseBody::stream(
            failing(&[chat]),
            CallType::ChatCompletions,
            Some(report.clone()),
        );
        let got = body.collect().await.unwrap().to_bytes();
        let want = [
            chat.as_bytes(),
            &Error::stream_interrupted().chat_stream_event(),
        ]
        .concat();
        assert_eq!(got, want);
        assert_eq!(
            report.in_band_error().unwrap().code(),
            Some("upstream_stream_error")
        );

        let responses = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"model\":\"m\",\"output\":[]}}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n";
        let body = ResponseBody::stream(failing(&[responses]), CallType::Responses, None);
        let got = body.collect().await.unwrap().to_bytes();
        let tail = String::from_utf8(got[responses.len()..].to_vec()).unwrap();
        assert!(
            tail.starts_with(
                "event: error\ndata: {\"type\":\"error\",\"code\":\"upstream_stream_error\""
            ),
            "{tail}"
        );
        assert!(tail.contains("\"sequence_number\":2"), "{tail}");
        assert!(
            tail.contains("\"sequence_number\":3,\"response\":{\"id\":\"resp_1\""),
            "{tail}"
        );

        let body = ResponseBody::stream(failing(&[]), CallType::AnthropicMessages, None);
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got, Error::stream_interrupted().anthropic_stream_event());
    }
}
