//! Deadlines for what a client sends (`general_settings.client_read_timeout`, default 30 s), so
//! a client cannot hold a connection, its task and its buffers by sending nothing, or next to
//! nothing (a slowloris): a connection that has not sent its first bytes, or a request's whole
//! head, within the limit is closed (hyper's header read timeout, which on a keep-alive
//! connection also bounds the wait for the next request); a request body that sends nothing
//! for the limit fails with a 408 (see [`client_body`]).
//!
//! A client that stops reading is bounded too (`general_settings.client_write_timeout`,
//! default 60 s, as nginx's `send_timeout`): a write to it that cannot proceed for the limit
//! (its socket full, nothing taken) ends the connection (see [`SendDeadline`]), so the request
//! it held ends and is logged, and its upstream stream is let go. A client that reads slowly,
//! but reads, is never cut: a stream paced by the model is a slow response by design.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use guardrail_tower_core::Error;
use http::StatusCode;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

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
        timer: Option<Pin<Box<Sleep>>>,
        // A write is waiting, since the timer's last setting.
        waiting: bool,
    }
}

impl<IO> SendDeadline<IO> {
    /// Wraps a client connection.
    pub fn new(io: IO, limit: Duration) -> Self {
        SendDeadline {
            io,
            limit,
            timer: None,
            waiting: false,
        }
    }
}

impl<IO> SendDeadline<IO> {
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

impl<IO: AsyncWrite> AsyncWrite for SendDeadline<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.deadline(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.deadline(cx, |io, cx| io.poll_write_vectored(cx, bufs))
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
pub fn client_body<B>(body: B, limit: Duration) -> ClientBody<B> {
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

/// A client's request body under its deadline (see [`client_body`]).
pub type ClientBody<B> = IdleTimeout<B>;

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
        let mut server = SendDeadline::new(server, secs(60));
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
