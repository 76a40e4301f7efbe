//! Bodies for tests.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// What a [`TestBody`] does after its chunks.
#[derive(Debug, Clone)]
enum End {
    Eof,
    Trailers(HeaderMap),
    Error(String),
    Pending,
}

/// A body that yields given chunks, one per poll, then ends as configured. Counts its polls and
/// records its drop when asked to.
#[derive(Clone)]
pub struct TestBody {
    chunks: VecDeque<Bytes>,
    end: Option<End>,
    exact: Option<u64>,
    // `is_end_stream()` stays false even after the last chunk (`http_body`'s default, which
    // many bodies keep).
    never_ends_early: bool,
    polls: Option<Arc<AtomicUsize>>,
    dropped: Option<Arc<AtomicBool>>,
}

/// A body of these chunks, then the end of the stream.
pub fn chunks<I, C>(chunks: I) -> TestBody
where
    I: IntoIterator<Item = C>,
    C: Into<Bytes>,
{
    TestBody {
        chunks: chunks.into_iter().map(Into::into).collect(),
        end: Some(End::Eof),
        exact: None,
        never_ends_early: false,
        polls: None,
        dropped: None,
    }
}

/// `bytes` split at the given offsets (out-of-range and duplicate offsets are ignored).
pub fn split_at(bytes: &[u8], points: &[usize]) -> TestBody {
    let mut points: Vec<usize> = points
        .iter()
        .copied()
        .filter(|p| *p > 0 && *p < bytes.len())
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points.into_iter().chain([bytes.len()]) {
        out.push(Bytes::copy_from_slice(&bytes[last..p]));
        last = p;
    }
    chunks(out)
}

/// `bytes` split at the given points taken modulo its length, so that any `usize` a property
/// test draws is a cut somewhere (with [`split_at`], an out-of-range point is no cut at all).
pub fn split_anywhere(bytes: &[u8], points: &[usize]) -> TestBody {
    let len = bytes.len().max(1);
    let points: Vec<usize> = points.iter().map(|p| p % len).collect();
    split_at(bytes, &points)
}

/// `text` cut into pieces (stream deltas) at `cuts`: character positions taken modulo the
/// number of characters plus one; no piece is empty.
pub fn deltas(text: &str, cuts: &[usize]) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (chars.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points.into_iter().chain([chars.len()]) {
        if p > last {
            out.push(chars[last..p].iter().collect());
            last = p;
        }
    }
    out
}

impl TestBody {
    /// Ends with these trailers instead of EOF.
    pub fn with_trailers(mut self, trailers: HeaderMap) -> Self {
        self.end = Some(End::Trailers(trailers));
        self
    }

    /// Fails with an IO error (kind `ConnectionReset`) after the chunks, as an upstream that
    /// dies mid-stream.
    pub fn then_error(mut self, message: &str) -> Self {
        self.end = Some(End::Error(message.to_owned()));
        self
    }

    /// Stays pending forever after the chunks (a stream that never ends).
    pub fn then_pending(mut self) -> Self {
        self.end = Some(End::Pending);
        self
    }

    /// Reports an exact size and `is_end_stream()` after the last chunk, so a reader may never
    /// poll it to `None`.
    pub fn exact(mut self) -> Self {
        self.exact = Some(self.chunks.iter().map(|c| c.len() as u64).sum());
        self
    }

    /// Reports an exact size but never `is_end_stream()` (as many bodies do, e.g.
    /// tower-http's decompression body): a server stops after the announced bytes anyway.
    pub fn exact_without_end(mut self) -> Self {
        self = self.exact();
        self.never_ends_early = true;
        self
    }

    /// Counts calls to `poll_frame` in `counter`.
    pub fn count_polls(mut self, counter: Arc<AtomicUsize>) -> Self {
        self.polls = Some(counter);
        self
    }

    /// Sets `flag` when dropped.
    pub fn flag_drop(mut self, flag: Arc<AtomicBool>) -> Self {
        self.dropped = Some(flag);
        self
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(polls) = &this.polls {
            polls.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(chunk) = this.chunks.pop_front() {
            if let Some(exact) = &mut this.exact {
                *exact -= chunk.len() as u64;
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match this.end.take() {
            None | Some(End::Eof) => Poll::Ready(None),
            Some(End::Trailers(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Some(End::Error(message)) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                message,
            )))),
            Some(End::Pending) => {
                this.end = Some(End::Pending);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.never_ends_early
            && self.exact.is_some()
            && self.chunks.is_empty()
            && matches!(self.end, Some(End::Eof) | None)
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for TestBody {
    fn drop(&mut self) {
        if let Some(flag) = &self.dropped {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

impl fmt::Debug for TestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestBody")
            .field("chunks", &self.chunks.len())
            .field("end", &self.end)
            .finish()
    }
}
