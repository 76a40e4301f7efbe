//! The JSON lines sink.

use guardrail_tower_spend_log::{
    BlockSummaryRow, JsonlSink, SpendLogFilter, SpendLogSink, SpendLogStore, SpendLogWriter,
    SpendRecord, SpendStatus,
};

use crate::common::{full_record, guarded, record, t, temp_dir};

#[tokio::test]
async fn appends_one_valid_json_object_per_line() {
    let dir = temp_dir("jsonl-lines");
    let path = dir.path().join("spend.jsonl");
    let sink = JsonlSink::open(&path).await.unwrap();
    let a = full_record("a");
    let b = record("b", "2026-11-21T13:00:00Z", SpendStatus::Success);
    let c = record("c", "2026-11-21T14:00:00Z", SpendStatus::Success);
    sink.write_batch(&[a.clone(), b.clone()]).await.unwrap();
    sink.write_batch(std::slice::from_ref(&c)).await.unwrap();
    // Reopening appends.
    let sink = JsonlSink::open(&path).await.unwrap();
    let d = record("d", "2026-11-21T15:00:00Z", SpendStatus::Failure);
    sink.write_batch(std::slice::from_ref(&d)).await.unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    let parsed: Vec<SpendRecord> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed, vec![a, b, c, d]);
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["startTime"], "2026-11-21T12:00:00.125Z");
    assert_eq!(
        first["metadata"]["guardrail_information"][1]["guardrail_action"],
        "block"
    );
    assert_eq!(first["status"], "failure");
}

#[tokio::test]
async fn query_filters_orders_and_deduplicates() {
    let dir = temp_dir("jsonl-query");
    let path = dir.path().join("spend.jsonl");
    let sink = JsonlSink::open(&path).await.unwrap();
    let records = vec![
        record("r1", "2026-11-20T10:00:00Z", SpendStatus::Success),
        record("r2", "2026-11-21T10:00:00Z", SpendStatus::Failure),
        record("r3", "2026-11-21T11:00:00Z", SpendStatus::Success),
        record("r4", "2026-11-22T10:00:00Z", SpendStatus::Success),
    ];
    sink.write_batch(&records).await.unwrap();
    // The same request id again (a second submit): the first line wins.
    let mut dup = records[0].clone();
    dup.model = "other".into();
    sink.write_batch(&[dup]).await.unwrap();
    // A line that is not a record is skipped.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"not json\n"))
        .unwrap();

    let ids = |v: Vec<SpendRecord>| v.into_iter().map(|r| r.request_id).collect::<Vec<_>>();
    assert_eq!(
        ids(sink.query(&SpendLogFilter::new()).await.unwrap()),
        ["r4", "r3", "r2", "r1"]
    );
    let r1 = sink
        .query(&SpendLogFilter::new().request_id("r1"))
        .await
        .unwrap();
    assert_eq!(r1, vec![records[0].clone()]);
    let day =
        SpendLogFilter::from_query_string("start_date=2026-11-21&end_date=2026-11-21").unwrap();
    assert_eq!(ids(sink.query(&day).await.unwrap()), ["r3", "r2"]);
    let failures = SpendLogFilter::new().status(SpendStatus::Failure);
    assert_eq!(ids(sink.query(&failures).await.unwrap()), ["r2"]);
    let page = SpendLogFilter::new().limit(2).offset(1);
    assert_eq!(ids(sink.query(&page).await.unwrap()), ["r3", "r2"]);
}

#[tokio::test]
async fn block_summary_and_the_writer() {
    let dir = temp_dir("jsonl-blocks");
    let path = dir.path().join("spend.jsonl");
    let sink = JsonlSink::open(&path).await.unwrap();
    let handle = SpendLogWriter::new().spawn(sink.clone());
    handle.submit(guarded(
        "b1",
        "2026-11-20T10:00:00Z",
        &[("pii", "mask"), ("toxicity", "block")],
    ));
    handle.submit(guarded(
        "b2",
        "2026-11-20T23:59:59.999Z",
        &[("toxicity", "block")],
    ));
    handle.submit(guarded(
        "b3",
        "2026-11-21T00:00:00Z",
        &[("toxicity", "block"), ("jailbreak", "block")],
    ));
    handle.submit(guarded(
        "b4",
        "2026-11-21T08:00:00Z",
        &[("jailbreak", "allow")],
    ));
    handle.submit(full_record("b5"));
    handle.shutdown().await.unwrap();

    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
    assert_eq!(
        sink.block_summary(None, None).await.unwrap(),
        vec![
            BlockSummaryRow::new("2026-11-20", "toxicity", 2),
            BlockSummaryRow::new("2026-11-21", "content-filter", 1),
            BlockSummaryRow::new("2026-11-21", "jailbreak", 1),
            BlockSummaryRow::new("2026-11-21", "toxicity", 1),
        ]
    );
    assert_eq!(
        sink.block_summary(
            Some(t("2026-11-21T00:00:00Z")),
            Some(t("2026-11-21T10:00:00Z"))
        )
        .await
        .unwrap(),
        vec![
            BlockSummaryRow::new("2026-11-21", "jailbreak", 1),
            BlockSummaryRow::new("2026-11-21", "toxicity", 1),
        ]
    );
}
