//! SpendLogLayer: one spend-log record per request, for every endpoint and every outcome.

mod record;
pub mod sink;

pub use record::{SpendRecord, SpendStatus, rfc3339};
