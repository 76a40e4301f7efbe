//! Deadlines for what a client sends (`general_settings.client_read_timeout`, default 30 s), so
//! a client cannot hold a connection, its task and its buffers by sending nothing, or next to
//! nothing (a slowloris): a connection that has not sent its first bytes within the limit is
//! closed, and so is one with no request in flight, none begun and nothing written to it for
//! the limit (a head that never ends, a keep-alive connection left idle, an HTTP/2 connection
//! with no stream; see [`Watchdog`]); a request body that sends nothing for the limit fails
//! with a 408 (see [`client_body`]).
//!
//! A client that stops reading is bounded too (`general_settings.client_write_timeout`,
//! default 60 s, as nginx's `send_timeout`): a write to it that cannot proceed for the limit
//! (its socket full, nothing taken) ends the connection (see [`SendDeadline`]), so the request
//! it held ends and is logged, and its upstream stream is let go. A client that reads slowly,
//! but reads, is never cut: a stream paced by the model is a slow response by design.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use guardrail_tower_core::Error;
use http::StatusCode;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::request_bytes::{BudgetedBody, RequestBytes, Reservation};
use crate::upstream::IdleTimeout;

/// The default of `general_settings.client_read_timeout`.
pub const DEFAULT_CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The default of `general_settings.client_write_timeout`.
pub const DEFAULT_CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

pin_project! {
    /// A client connection whose writes fail when one cannot proceed for `limit`: the client's
    /// socket is full and it takes nothing. Reads pass through. The timer is made only when a
    /// write first has to wait, and set again only when a write that waits follows one that
    /// went through.
    pub struct SendDeadline<IO> {
        #[pin]
        io: IO,
        limit: Duration,
        // Told of each write done (see [`Watchdog`]).
        activity: Arc<Activity>,
        timer: Option<Pin<Box<Sleep>>>,
        // A write is waiting, since the timer's last setting.
        waiting: bool,
    }
}

impl<IO> SendDeadline<IO> {
    /// Wraps a client connection whose activity is `activity`.
    pub fn new(io: IO, limit: Duration, activity: Arc<Activity>) -> Self {
        SendDeadline {
            io,
            limit,
            activity,
            timer: None,
            waiting: false,
        }
    }

    /// `outcome` of a write, flush or shutdown: passed on when it is ready; when it must wait,
    /// a timed-out error once the write has waited for the limit.
    fn deadline<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        outcome: impl FnOnce(Pin<&mut IO>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        let this = self.project();
        if let Poll::Ready(done) = outcome(this.io, cx) {
            *this.waiting = false;
            return Poll::Ready(done);
        }
        let limit = *this.limit;
        let timer = match this.timer {
            Some(timer) => {
                if !*this.waiting {
                    timer.as_mut().reset(Instant::now() + limit);
                }
                timer
            }
            None => this.timer.insert(Box::pin(tokio::time::sleep(limit))),
        };
        *this.waiting = true;
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client took nothing for {} s", limit.as_secs_f64()),
        )))
    }
}

impl<IO: AsyncRead> AsyncRead for SendDeadline<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

/// `written`, after telling `activity` of the bytes it wrote, if any (a flush or an empty
/// write is no progress: a client that trickles a head wakes the connection, which flushes).
fn wrote(
    activity: &Activity,
    written: Poll<std::io::Result<usize>>,
) -> Poll<std::io::Result<usize>> {
    if let Poll::Ready(Ok(1..)) = written {
        activity.progressed();
    }
    written
}

impl<IO: AsyncWrite> AsyncWrite for SendDeadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = self.as_mut().deadline(cx, |io, cx| io.poll_write(cx, buf));
        wrote(&self.activity, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = self
            .as_mut()
            .deadline(cx, |io, cx| io.poll_write_vectored(cx, bufs));
        wrote(&self.activity, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.deadline(cx, AsyncWrite::poll_flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.deadline(cx, AsyncWrite::poll_shutdown)
    }
}

/// A client's request body that fails when the client sends nothing for `limit` while it is
/// being read: with an [`Error`] 408 `request_timeout`, which the layer reading the body
/// answers with. A body that arrives with its head (most do) is never waited on and makes no
/// timer.
pub fn client_body<B>(body: B, limit: Duration) -> IdleTimeout<B> {
    IdleTimeout::with_error(body, limit, |limit| {
        Box::new(
            Error::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body stalled: nothing arrived for {} s",
                    limit.as_secs_f64()
                ),
            )
            .with_code("request_timeout"),
        )
    })
}

/// A client's request body under its deadline (see [`client_body`]) and the bound on the bytes
/// all request bodies hold at once (see [`crate::request_bytes`]).
pub type ClientBody<B> = BudgetedBody<IdleTimeout<B>>;

/// What one connection is doing, for its [`Watchdog`]: how many requests are in flight
/// (begun, and their response not yet handed over whole, or dropped), and a count of progress
/// (requests begun and ended, writes to the client done).
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    progress: AtomicUsize,
}

impl Activity {
    fn progressed(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request in flight on a connection: counted from its start to the end (or drop) of its
/// response, which carries it (see [`Watched`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.progressed();
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        // A request's end is activity too: a look right after it must not find the connection
        // idle since the last one.
        self.0.progressed();
    }
}

/// A connection's service: each request body under the client's deadline ([`client_body`])
/// and counted in the bytes all request bodies hold ([`RequestBytes`]), each request counted
/// in flight, in the connection's [`Activity`]; both until its response has been sent (its
/// body ended or dropped).
#[derive(Debug, Clone)]
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    limit: Duration,
    bytes: Arc<RequestBytes>,
    body_limit: usize,
}

impl<S> Watched<S> {
    /// `inner`, for a connection whose activity is `activity`; request bodies fail after
    /// `limit` of silence, and are refused when they do not fit in `bytes` (a body whose
    /// declared length is over `body_limit`, which the layers refuse unread, is counted as it
    /// arrives rather than at once).
    pub fn new(
        inner: S,
        activity: Arc<Activity>,
        limit: Duration,
        bytes: Arc<RequestBytes>,
        body_limit: usize,
    ) -> Self {
        Watched {
            inner,
            activity,
            limit,
            bytes,
            body_limit,
        }
    }
}

/// What a request holds until its response has been sent: its place in flight and its body's
/// bytes.
#[derive(Debug)]
struct Held {
    _in_flight: InFlight,
    _bytes: Reservation,
}

impl<S, B, ResB> tower_service::Service<http::Request<B>> for Watched<S>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<guardrail_tower_core::BoxError>,
    S: tower_service::Service<http::Request<ClientBody<B>>, Response = http::Response<ResB>>,
{
    type Response = http::Response<WatchedBody<ResB>>;
    type Error = S::Error;
    type Future = WatchedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let in_flight = InFlight::start(&self.activity);
        let (parts, body) = request.into_parts();
        let (body, bytes) = self
            .bytes
            .admit(client_body(body, self.limit), self.body_limit);
        WatchedFuture {
            inner: self.inner.call(http::Request::from_parts(parts, body)),
            held: Some(Held {
                _in_flight: in_flight,
                _bytes: bytes,
            }),
        }
    }
}

pin_project! {
    /// The future of [`Watched`]: the request stays in flight, and its body's bytes held,
    /// while it runs.
    pub struct WatchedFuture<F> {
        #[pin]
        inner: F,
        held: Option<Held>,
    }
}

impl<F, ResB, E> Future for WatchedFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
{
    type Output = Result<http::Response<WatchedBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let held = this.held.take();
        Poll::Ready(Ok(response.map(|body| WatchedBody { body, _held: held })))
    }
}

pin_project! {
    /// A response body that keeps its request in flight, and its body's bytes held, until
    /// it is dropped (hyper drops it once it has sent it whole, or when the connection ends).
    pub struct WatchedBody<B> {
        #[pin]
        body: B,
        _held: Option<Held>,
    }
}

impl<B: http_body::Body> http_body::Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// A served connection that ends when, for a whole `limit`, it had no request in flight,
    /// began none and wrote nothing to the client: a client that sends a head byte by byte,
    /// leaves a keep-alive connection idle, or keeps an HTTP/2 connection with no stream. It
    /// looks once a `limit` (one timer per connection, moved on at each look, never set per
    /// request: hyper's own header read timeout boxed and registered a timer for every request
    /// on a keep-alive connection), so such a connection ends between one and two limits after
    /// its last activity; a request that runs, however long, keeps its connection, and so does
    /// a response the client is still reading.
    pub struct Watchdog<C> {
        #[pin]
        conn: C,
        #[pin]
        timer: Sleep,
        activity: Arc<Activity>,
        limit: Duration,
        // `progress` at the last look.
        seen: usize,
        // The waker the timer holds since it was last polled.
        armed: Option<Waker>,
    }
}

impl<C> Watchdog<C> {
    /// Watches `conn`, whose requests are counted in `activity`.
    pub fn new(conn: C, activity: Arc<Activity>, limit: Duration) -> Self {
        Watchdog {
            conn,
            timer: tokio::time::sleep(limit),
            activity,
            limit,
            seen: 0,
            armed: None,
        }
    }
}

impl<C: Future> Future for Watchdog<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // A connection wakes several times a request; the timer is polled only when it fired
        // or when it does not hold this task's waker (at the first poll, say), not at each.
        let holds_waker = this
            .armed
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if !holds_waker || this.timer.is_elapsed() {
            while this.timer.as_mut().poll(cx).is_ready() {
                let progress = this.activity.progress.load(Ordering::Relaxed);
                if progress == *this.seen && this.activity.in_flight.load(Ordering::Relaxed) == 0 {
                    // Nothing for a whole limit: let the connection go.
                    return Poll::Ready(());
                }
                *this.seen = progress;
                // From now, not from the deadline: a look that came late (a busy runtime)
                // must not make the next one early, and close a connection that just worked.
                this.timer.as_mut().reset(Instant::now() + *this.limit);
            }
            *this.armed = Some(cx.waker().clone());
        }
        this.conn.poll(cx).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::tests::paced;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_fails_only_after_the_client_took_nothing_for_the_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let secs = Duration::from_secs;
        let (client, server) = tokio::io::duplex(16);
        let mut server = SendDeadline::new(server, secs(60), Arc::default());
        let mut client = client;
        // A client that reads 16 bytes every 59 s: slow, but never 60 s without taking any.
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 16];
            while got < 64 {
                tokio::time::sleep(secs(59)).await;
                got += client.read(&mut buf).await.unwrap();
            }
            client
        });
        server.write_all(&[b'x'; 80]).await.unwrap();
        let mut client = reader.await.unwrap();

        // A client that takes nothing more: the write waiting on it fails at the limit.
        let started = Instant::now();
        let err = server.write_all(&[b'y'; 64]).await.unwrap_err();
        assert_eq!(started.elapsed(), secs(60));
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "the client took nothing for 60 s");
        // What was sent before it is still there to read.
        let mut buf = [0u8; 16];
        assert_eq!(client.read(&mut buf).await.unwrap(), 16);
        assert_eq!(buf, [b'x'; 16]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_lets_a_connection_go_only_after_a_whole_limit_of_nothing() {
        let secs = Duration::from_secs;
        // A connection that never ends by itself; when did the watchdog end it?
        let watched = |activity: &Arc<Activity>| {
            let dog = Watchdog::new(std::future::pending::<()>(), Arc::clone(activity), secs(30));
            tokio::spawn(async move {
                let started = Instant::now();
                dog.await;
                started.elapsed()
            })
        };

        // Nothing at all: ended at the first look.
        let idle = Arc::new(Activity::default());
        assert_eq!(watched(&idle).await.unwrap(), secs(30));

        // A request in flight for two minutes keeps it; after its end, one look with
        // progress, then one without.
        let busy = Arc::new(Activity::default());
        let dog = watched(&busy);
        let request = InFlight::start(&busy);
        tokio::time::sleep(secs(120)).await;
        drop(request);
        assert_eq!(dog.await.unwrap(), secs(150));

        // Writes to the client keep it (a response it is still reading); a flush does not
        // count (see `wrote`).
        let reading = Arc::new(Activity::default());
        let dog = watched(&reading);
        for _ in 0..5 {
            tokio::time::sleep(secs(20)).await;
            let _ = wrote(&reading, Poll::Ready(Ok(100)));
            let _ = wrote(&reading, Poll::Ready(Ok(0)));
        }
        // The last write at 100 s: seen at the look at 120 s, nothing more by 150 s.
        assert_eq!(dog.await.unwrap(), secs(150));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_fails_only_after_the_limit_without_a_frame() {
        let secs = Duration::from_secs;
        // Gaps under the limit, however many and however long in all: read whole.
        let body = client_body(paced(vec![secs(29), secs(29), secs(29), secs(0)]), secs(30));
        let read = body.collect().await.unwrap().to_bytes();
        assert_eq!(read, "xxxx");

        // A gap over the limit: a 408 that says so, after the frames before it.
        let mut body = std::pin::pin!(client_body(paced(vec![secs(1), secs(31)]), secs(30)));
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), secs(30));
        let err = err.downcast::<Error>().unwrap();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            err.message(),
            "the request body stalled: nothing arrived for 30 s"
        );
    }
}
