//! Reading structured input from fuzz bytes, splitting bodies, and driving futures with hang
//! detection.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;

/// A cursor over fuzz bytes. Reading past the end yields zeros and empty slices, so every
/// input, however short, is valid.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// One byte (0 at the end).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A count byte (at most 16) and that many `u16` split points.
    pub fn points(&mut self) -> Vec<usize> {
        let n = self.byte() % 17;
        (0..n).map(|_| usize::from(self.u16())).collect()
    }

    /// Whether any bytes are left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The remaining bytes.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// `bytes` cut at `points` (each taken modulo `len + 1`, so empty chunks happen too).
pub fn split(bytes: &[u8], points: &[usize]) -> Vec<Bytes> {
    let mut points: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::with_capacity(points.len() + 1);
    let mut last = 0;
    for p in points.into_iter().chain([bytes.len()]) {
        chunks.push(Bytes::copy_from_slice(&bytes[last..p]));
        last = p;
    }
    chunks
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// Polls `fut` to completion inside a current-thread tokio runtime's context.
///
/// Everything the targets run is in memory and synchronous underneath (test bodies, the
/// content filter), so a `Pending` that nobody woke is a hang: it panics at once instead of
/// waiting for libFuzzer's timeout. So does a future that needs more than a million polls.
pub fn drive<F: Future>(fut: F) -> F::Output {
    RUNTIME.with(|rt| {
        let _guard = rt.enter();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(fut);
        for _ in 0..1_000_000 {
            flag.0.store(false, Ordering::SeqCst);
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(out) => return out,
                Poll::Pending => assert!(
                    flag.0.load(Ordering::SeqCst),
                    "hang: pending and nothing will wake it"
                ),
            }
        }
        panic!("hang: no result after a million polls");
    })
}

/// Lossy text for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
