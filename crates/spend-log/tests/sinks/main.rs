//! Integration tests of the spend-log sinks, the batching writer and the query API, against
//! real databases (SQLite files; PostgreSQL when `GUARDRAIL_TOWER_TEST_PG_URL` is set).

mod common;
#[cfg(feature = "jsonl")]
mod jsonl;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod writer;
