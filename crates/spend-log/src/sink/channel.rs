//! [`ChannelSink`]: records sent to an in-process channel.

use tokio::sync::mpsc;

use super::{SinkError, SinkFuture, SpendLogSink};
use crate::record::SpendRecord;

/// A sink that sends every record to an unbounded [`mpsc`] channel: for tests, and for embedding
/// (forwarding records to your own pipeline).
///
/// A write fails with [`SinkErrorKind::Closed`](super::SinkErrorKind::Closed) once the receiver
/// is dropped. Records are delivered as given: there is no `request_id` deduplication.
#[derive(Debug, Clone)]
pub struct ChannelSink {
    tx: mpsc::UnboundedSender<SpendRecord>,
}

impl ChannelSink {
    /// A sink and the receiver of the records written to it.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> (ChannelSink, mpsc::UnboundedReceiver<SpendRecord>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ChannelSink { tx }, rx)
    }

    /// A sink that sends to an existing channel.
    pub fn from_sender(tx: mpsc::UnboundedSender<SpendRecord>) -> Self {
        ChannelSink { tx }
    }
}

impl SpendLogSink for ChannelSink {
    fn write_batch<'a>(&'a self, records: &'a [SpendRecord]) -> SinkFuture<'a, ()> {
        let result = if self.tx.is_closed() {
            Err(SinkError::closed(
                "the spend-log channel's receiver was dropped",
            ))
        } else {
            records.iter().try_for_each(|r| {
                self.tx
                    .send(r.clone())
                    .map_err(|_| SinkError::closed("the spend-log channel's receiver was dropped"))
            })
        };
        Box::pin(std::future::ready(result))
    }
}
