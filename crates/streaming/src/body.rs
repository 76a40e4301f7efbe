use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use guardrail_tower_core::{BoxError, Error};

use crate::state::{Step, StreamState};

pin_project! {
    /// The response body of [`StreamingGuardrailBody`](crate::StreamingGuardrailBody): the
    /// upstream body untouched, a complete body the layer wrote (a checked JSON response), or a
    /// guarded server-sent events stream.
    ///
    /// A guarded stream reports an unknown size (it may rewrite), passes trailers and upstream
    /// errors through, never polls the upstream while it has something to send or a check is
    /// running (backpressure), and drops the upstream body as soon as the stream is over or
    /// blocked.
    pub struct GuardedBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Passthrough {
            #[pin]
            body: B,
        },
        Full {
            data: Option<Bytes>,
        },
        Sse {
            #[pin]
            body: Option<B>,
            // The upstream body when a buffer_all check read part of it before the head.
            boxed: Option<Pin<Box<B>>>,
            state: Box<StreamState>,
            replay: VecDeque<Bytes>,
            trailers: Option<HeaderMap>,
        },
    }
}

impl<B> GuardedBody<B> {
    pub(crate) fn passthrough(body: B) -> Self {
        GuardedBody {
            kind: Kind::Passthrough { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        GuardedBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// A guarded stream.
    pub(crate) fn sse(body: B, state: StreamState) -> Self {
        GuardedBody {
            kind: Kind::Sse {
                body: Some(body),
                boxed: None,
                state: Box::new(state),
                replay: VecDeque::new(),
                trailers: None,
            },
        }
    }

    /// A guarded stream continuing after `replay`, chunks already read from `body`.
    pub(crate) fn sse_resumed(
        body: Pin<Box<B>>,
        state: StreamState,
        replay: VecDeque<Bytes>,
    ) -> Self {
        GuardedBody {
            kind: Kind::Sse {
                body: None,
                boxed: Some(body),
                state: Box::new(state),
                replay,
                trailers: None,
            },
        }
    }
}

#[cfg(test)]
impl<B> GuardedBody<B> {
    /// The events a guarded stream holds back, oldest first.
    pub(crate) fn held_events(&self) -> Vec<&guardrail_tower_core::sse::SseEvent> {
        match &self.kind {
            Kind::Sse { state, .. } => state.held_events().collect(),
            _ => Vec::new(),
        }
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = B::Error;

    // Small enough to be inlined where it is called: a body passed through costs no call of
    // its own per frame; a guarded stream's step is out of line.
    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Passthrough { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Sse {
                body,
                boxed,
                state,
                replay,
                trailers,
            } => poll_sse(body, boxed, state, replay, trailers, cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Sse {
                state, trailers, ..
            } => state.is_finished() && state.out.is_empty() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Sse { .. } => SizeHint::default(),
        }
    }
}

/// [`GuardedBody::poll_frame`] of a guarded stream.
#[inline(never)]
fn poll_sse<B>(
    mut body: Pin<&mut Option<B>>,
    boxed: &mut Option<Pin<Box<B>>>,
    state: &mut StreamState,
    replay: &mut VecDeque<Bytes>,
    trailers: &mut Option<HeaderMap>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    loop {
        if let Some(bytes) = state.out.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        match state.step(cx) {
            Step::Progress => continue,
            Step::Waiting => return Poll::Pending,
            Step::Finished => {
                body.set(None);
                *boxed = None;
                return Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            Step::NeedInput => {}
        }
        if let Some(chunk) = replay.pop_front() {
            state.push(chunk);
            continue;
        }
        let polled = match (body.as_mut().as_pin_mut(), boxed.as_mut()) {
            (Some(inner), _) => inner.poll_frame(cx),
            (None, Some(inner)) => inner.as_mut().poll_frame(cx),
            (None, None) => {
                state.push_eof();
                continue;
            }
        };
        let Poll::Ready(polled) = polled else {
            // The stream waits for its upstream: what it holds must not pin the
            // upstream's read buffer meanwhile.
            state.detach_held();
            return Poll::Pending;
        };
        match polled {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    state.push(chunk);
                    let ended = match (body.as_ref().as_pin_ref(), boxed.as_ref()) {
                        (Some(b), _) => b.is_end_stream(),
                        (None, Some(b)) => b.is_end_stream(),
                        (None, None) => true,
                    };
                    if ended {
                        state.push_eof();
                        body.set(None);
                        *boxed = None;
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        *trailers = Some(t);
                    }
                }
            },
            Some(Err(err)) => {
                // After the head, a failure ends the stream as a block does: the
                // endpoint's in-band error event and its terminator, not a cut body.
                let err: BoxError = err.into();
                tracing::warn!(error = %err, "the upstream stream failed after the response head was sent");
                state.upstream_failed(Error::stream_interrupted());
                body.set(None);
                *boxed = None;
                continue;
            }
            None => {
                state.push_eof();
                body.set(None);
                *boxed = None;
            }
        }
    }
}

impl<B> fmt::Debug for GuardedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough { .. } => "passthrough",
            Kind::Full { .. } => "full",
            Kind::Sse { .. } => "sse",
        };
        f.debug_struct("GuardedBody").field("kind", &kind).finish()
    }
}
