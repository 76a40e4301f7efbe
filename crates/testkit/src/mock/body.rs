//! The mock's response body: prepared frames, an optional delay before each (or a fixed pace),
//! then an end, an abort, or an endless stream.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep};

use super::shapes::EndlessDeltas;

/// How long an aborting body pauses after its last frame, so the connection flushes the bytes
/// already written before the abort closes it (hyper drops its write buffer on a body error).
const ABORT_PAUSE: Duration = Duration::from_millis(20);

/// The error an aborting body returns; hyper then closes the connection mid-body.
#[derive(Debug)]
pub(super) struct MockError(pub(super) &'static str);

impl fmt::Display for MockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for MockError {}

/// What happens after the prepared frames.
#[derive(Debug)]
pub(super) enum Tail {
    /// The body ends.
    End,
    /// The body fails (after [`ABORT_PAUSE`]), so the client sees an incomplete body.
    Abort,
    /// A filler delta after each delay, forever.
    Endless(Box<EndlessDeltas>),
}

/// The response body of every mock response.
///
/// Its size is unknown (the default hint): a stream goes out chunked, and a whole JSON body
/// carries the `content-length` header the handler sets.
#[derive(Debug)]
pub(super) struct MockBody {
    frames: VecDeque<Bytes>,
    /// Waited before each frame (and before the abort or each endless delta).
    delay: Option<Duration>,
    /// A fixed schedule instead of `delay`: frame `i` (from 0) is due at `start + i * interval`.
    pace: Option<Pace>,
    /// One timer, reset for each wait.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` is set for the frame being waited for.
    armed: bool,
    tail: Tail,
}

/// A fixed schedule: `sent` frames so far, frame `i` due at `start + i * interval`, so a slow
/// poll does not push the later frames back (no drift, unlike a delay before each frame).
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    start: Instant,
    interval: Duration,
    sent: u32,
}

impl Pace {
    /// `per_second` frames a second, the first due now.
    pub(super) fn per_second(per_second: u32) -> Pace {
        Pace {
            start: Instant::now(),
            interval: Duration::from_secs(1) / per_second.max(1),
            sent: 0,
        }
    }

    fn due(&self) -> Instant {
        self.start + self.interval * self.sent
    }
}

impl MockBody {
    /// A body of `frames`, waiting `delay` before each, then `tail`.
    pub(super) fn new(frames: Vec<Bytes>, delay: Option<Duration>, tail: Tail) -> MockBody {
        MockBody {
            frames: frames.into(),
            delay,
            pace: None,
            sleep: None,
            armed: false,
            tail,
        }
    }

    /// The same body with its frames sent on `pace` (which replaces any delay).
    pub(super) fn paced(mut self, pace: Option<Pace>) -> MockBody {
        if pace.is_some() {
            self.pace = pace;
            self.delay = None;
        }
        self
    }

    /// One whole frame, sent at once.
    pub(super) fn full(bytes: impl Into<Bytes>) -> MockBody {
        MockBody::new(vec![bytes.into()], None, Tail::End)
    }

    fn wait(&mut self, cx: &mut Context<'_>, duration: Duration) -> Poll<()> {
        self.wait_until(cx, Instant::now() + duration)
    }

    fn wait_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        ready!(sleep.as_mut().poll(cx));
        self.armed = false;
        Poll::Ready(())
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = MockError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MockError>>> {
        let this = self.get_mut();
        if this.is_end_stream() {
            return Poll::Ready(None);
        }
        if matches!(this.tail, Tail::Abort) && this.frames.is_empty() {
            let pause = this.delay.unwrap_or_default().max(ABORT_PAUSE);
            ready!(this.wait(cx, pause));
        } else if let Some(pace) = this.pace {
            ready!(this.wait_until(cx, pace.due()));
            if let Some(pace) = &mut this.pace {
                pace.sent = pace.sent.saturating_add(1);
            }
        } else if let Some(delay) = this.delay {
            ready!(this.wait(cx, delay));
        }
        if let Some(frame) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        match &mut this.tail {
            Tail::End => Poll::Ready(None),
            Tail::Abort => {
                this.tail = Tail::End;
                Poll::Ready(Some(Err(MockError("x-mock-fault: connection aborted"))))
            }
            Tail::Endless(deltas) => Poll::Ready(Some(Ok(Frame::data(deltas.next_delta())))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && matches!(self.tail, Tail::End)
    }
}
