//! A bound on the memory client request bodies hold, all clients together
//! (`general_settings.max_request_bytes_in_flight`).
//!
//! Each request body is bounded (`max_request_body_bytes`, 16 MiB by default), and so are the
//! connections (`max_client_connections`); but a connection can carry 200 HTTP/2 streams, so
//! their product is far beyond any machine's memory: a client sending large bodies on every
//! stream of a few hundred connections would have the gateway buffer them all until it was
//! killed for memory, with the spend-log records in its queue. Here a request's body bytes are
//! counted from their arrival until its response has been sent (or dropped), the time the
//! gateway holds them, and a request that would take the total past the limit is refused with
//! a 503 `server_overloaded` and `retry-after: 1`, through the layers, so its spend-log row is
//! written. Requests already admitted lose nothing.
//!
//! A body that declares its length (`content-length`) is counted at once, as a whole, before
//! any byte of it is read: over the limit, it is refused unread. One without (chunked, or an
//! HTTP/2 stream without the header) is counted as its bytes arrive, and refused at the chunk
//! that would pass the limit.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Buf;
use guardrail_tower_core::{BoxError, Error};
use http::{HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::app::EveryMinute;

/// The request body bytes the gateway holds, all clients together, against the limit
/// (`general_settings.max_request_bytes_in_flight`); shared by every connection.
#[derive(Debug)]
pub struct RequestBytes {
    held: AtomicUsize,
    limit: usize,
    refused: AtomicU64,
    warned: EveryMinute,
}

impl RequestBytes {
    /// A count of nothing held, against `limit` bytes.
    pub fn new(limit: usize) -> Self {
        RequestBytes {
            held: AtomicUsize::new(0),
            limit,
            refused: AtomicU64::new(0),
            warned: EveryMinute::default(),
        }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit under the limit with what is held.
    fn reserve(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The error a request refused gets, counted, and said in a `warn` line at most once a
    /// minute.
    fn refuse(&self) -> Box<Error> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if self.warned.due() {
            tracing::warn!(
                max_request_bytes_in_flight = self.limit,
                "request bodies at general_settings.max_request_bytes_in_flight: new requests \
                 are refused with 503 until the ones in flight end"
            );
        }
        Box::new(
            Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway holds as many request bytes as it may at once \
                 (general_settings.max_request_bytes_in_flight); retry shortly",
            )
            .with_code("server_overloaded")
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
        )
    }

    /// Admits a request body: the body to read it through and what to keep until its response
    /// has been sent. A length the body declares (its exact size hint) up to `declared_cap`
    /// (the body limit: a longer one is refused unread with a 413 by the layers) is taken at
    /// once; any other body is counted as it arrives.
    pub(crate) fn admit<B: Body>(
        self: &Arc<Self>,
        body: B,
        declared_cap: usize,
    ) -> (BudgetedBody<B>, Reservation) {
        let declared = body
            .size_hint()
            .exact()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= declared_cap);
        let (counter, reservation) = match declared {
            Some(0) => (Counter::Taken, Reservation::None),
            Some(n) if self.reserve(n) => (
                Counter::Taken,
                Reservation::Taken {
                    bytes: Arc::clone(self),
                    n,
                },
            ),
            Some(_) => (Counter::Refused(Some(self.refuse())), Reservation::None),
            None => {
                let share = Arc::new(Share {
                    bytes: Arc::clone(self),
                    n: AtomicUsize::new(0),
                });
                (
                    Counter::Counting(Arc::clone(&share)),
                    Reservation::Counted { _share: share },
                )
            }
        };
        (BudgetedBody { body, counter }, reservation)
    }
}

/// The bytes one request holds, given back when it is dropped: kept with the request until its
/// response has been sent.
#[derive(Debug)]
pub(crate) enum Reservation {
    /// Nothing (no body, or a body refused).
    None,
    /// A declared length, taken at once.
    Taken { bytes: Arc<RequestBytes>, n: usize },
    /// What a body without a declared length has sent, counted by its [`BudgetedBody`].
    Counted { _share: Arc<Share> },
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Reservation::Taken { bytes, n } = self {
            bytes.release(*n);
        }
    }
}

/// The bytes a body without a declared length has sent, given back when both the body and the
/// request's [`Reservation`] are gone.
#[derive(Debug)]
pub(crate) struct Share {
    bytes: Arc<RequestBytes>,
    n: AtomicUsize,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.bytes.release(*self.n.get_mut());
    }
}

#[derive(Debug)]
enum Counter {
    /// Taken at once (or no body): nothing to count.
    Taken,
    /// Each chunk's bytes are taken as it arrives.
    Counting(Arc<Share>),
    /// No room: the first read fails with this, unread.
    Refused(Option<Box<Error>>),
}

pin_project! {
    /// A client's request body under the bound of [`RequestBytes`]: a body that does not fit
    /// fails with a 503 (see the [module](self)).
    #[derive(Debug)]
    pub struct BudgetedBody<B> {
        #[pin]
        body: B,
        counter: Counter,
    }
}

impl<B> Body for BudgetedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        let share = match this.counter {
            Counter::Taken => None,
            Counter::Counting(share) => Some(share),
            Counter::Refused(error) => {
                return Poll::Ready(error.take().map(|error| Err(error as BoxError)));
            }
        };
        let frame = match std::task::ready!(this.body.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
            None => return Poll::Ready(None),
        };
        if let (Some(share), Some(data)) = (share, frame.data_ref()) {
            let n = data.remaining();
            if !share.bytes.reserve(n) {
                let error = share.bytes.refuse();
                *this.counter = Counter::Refused(None);
                return Poll::Ready(Some(Err(error)));
            }
            share.n.fetch_add(n, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.counter {
            Counter::Refused(error) => error.is_none(),
            _ => self.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.counter {
            Counter::Refused(_) => SizeHint::with_exact(0),
            _ => self.body.size_hint(),
        }
    }
}

/// What `general_settings.max_request_bytes_in_flight` is when the config does not set it: an
/// eighth of the memory the gateway may use (see [`crate::process::memory_limit`]; a request
/// held costs a few times its body: the copy parsed, the texts, a rewrite), and at least one
/// body of the largest size (`body_limit`). `None` (memory unknown): 1 GiB.
pub fn default_max_request_bytes_in_flight(memory: Option<u64>, body_limit: usize) -> usize {
    let eighth = memory.map_or(1 << 30, |m| m / 8);
    usize::try_from(eighth)
        .unwrap_or(usize::MAX)
        .max(body_limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn chunked(
        chunks: &[&'static str],
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>>>
    {
        let frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[test]
    fn the_default_is_an_eighth_of_memory_and_at_least_one_body() {
        assert_eq!(
            default_max_request_bytes_in_flight(Some(24 << 30), 16 << 20),
            3 << 30
        );
        assert_eq!(
            default_max_request_bytes_in_flight(Some(64 << 20), 16 << 20),
            16 << 20
        );
        assert_eq!(default_max_request_bytes_in_flight(None, 16 << 20), 1 << 30);
    }

    #[tokio::test]
    async fn a_declared_length_is_taken_at_once_and_given_back_with_the_reservation() {
        let bytes = Arc::new(RequestBytes::new(10));
        let body = Full::new(Bytes::from_static(b"123456"));
        let (body, reservation) = bytes.admit(body, 100);
        assert_eq!(bytes.held(), 6);
        // A second one of 6 does not fit: refused unread.
        let second = Full::new(Bytes::from_static(b"abcdef"));
        let (refused, none) = bytes.admit(second, 100);
        let error = refused.collect().await.unwrap_err();
        let error = error.downcast::<Error>().unwrap();
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.code(), Some("server_overloaded"));
        assert_eq!(error.headers()["retry-after"], "1");
        assert_eq!((bytes.held(), bytes.refused()), (6, 1));
        drop(none);
        // The body read and dropped, its bytes are still held until the response is sent.
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"123456");
        assert_eq!(bytes.held(), 6);
        drop(reservation);
        assert_eq!(bytes.held(), 0);
    }

    #[tokio::test]
    async fn a_body_without_a_length_is_counted_as_it_arrives_and_refused_at_the_chunk_past_the_limit()
     {
        let bytes = Arc::new(RequestBytes::new(10));
        let body = chunked(&["1234", "5678"]);
        let (body, first) = bytes.admit(body, 100);
        assert_eq!(bytes.held(), 0);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 8);
        assert_eq!(bytes.held(), 8);
        let body = chunked(&["ab", "cd"]);
        let (mut body, second) = bytes.admit(body, 100);
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(
            error.downcast::<Error>().unwrap().code(),
            Some("server_overloaded")
        );
        assert!(body.frame().await.is_none());
        assert_eq!((bytes.held(), bytes.refused()), (10, 1));
        drop(first);
        assert_eq!(bytes.held(), 2);
        drop((body, second));
        assert_eq!(bytes.held(), 0);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_body_limit_is_counted_as_it_arrives() {
        // The layers refuse it unread (413): nothing is taken for it up front; a route that
        // reads it all the same has its bytes counted.
        let bytes = Arc::new(RequestBytes::new(20));
        let body = Full::new(Bytes::from_static(b"0123456789abcdef"));
        let (body, reservation) = bytes.admit(body, 8);
        assert_eq!(bytes.held(), 0);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 16);
        assert_eq!(bytes.held(), 16);
        drop(reservation);
        assert_eq!(bytes.held(), 0);
    }
}
