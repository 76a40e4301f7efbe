//! A served connection that shuts down gracefully when the server stops, checked with one
//! atomic load per wakeup.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use hyper_util::server::graceful::{GracefulConnection, Watcher};
use pin_project_lite::pin_project;
use tokio::sync::watch;

pin_project! {
    /// `conn`, told to shut down gracefully (finish the request in flight, then close; close
    /// at once when idle) when the server starts stopping, and counted by the server's
    /// `GracefulShutdown` until it ends.
    ///
    /// hyper-util's `Watcher::watch` does the same, but polls its stop signal (a watch
    /// channel's `changed()`) at every wakeup of the connection, and a streamed response wakes
    /// it twice an event. Here the signal's future is polled to register the task's waker (at
    /// the first poll, and again only if the connection is polled by another task), and every
    /// wakeup reads the channel's version instead.
    pub(crate) struct Drained<C, F> {
        #[pin]
        conn: C,
        #[pin]
        stop: F,
        // The server's `stopping` channel: its only message is the stop, so any new version
        // (or a closed channel) means the server is stopping.
        version: watch::Receiver<bool>,
        // The waker `stop` holds since it was last polled.
        registered: Option<Waker>,
        shut: bool,
        // Dropped with the connection: the server's shutdown waits for every watcher.
        _watcher: Watcher,
    }
}

/// `conn`, drained when `stopping` says the server stops; `watcher` counts it until it ends.
pub(crate) fn drained<C: GracefulConnection>(
    conn: C,
    watcher: Watcher,
    stopping: watch::Receiver<bool>,
) -> Drained<C, impl Future<Output = ()>> {
    let mut signal = stopping.clone();
    Drained {
        conn,
        stop: async move {
            let _ = signal.wait_for(|stopping| *stopping).await;
        },
        version: stopping,
        registered: None,
        shut: false,
        _watcher: watcher,
    }
}

impl<C, F> Future for Drained<C, F>
where
    C: GracefulConnection,
    F: Future<Output = ()>,
{
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.shut {
            let stopping = this.version.has_changed().unwrap_or(true)
                || match this.registered {
                    // `stop` will wake this task when the signal comes.
                    Some(waker) if waker.will_wake(cx.waker()) => false,
                    registered => {
                        let stopped = this.stop.as_mut().poll(cx).is_ready();
                        *registered = Some(cx.waker().clone());
                        stopped
                    }
                };
            if stopping {
                *this.shut = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}
