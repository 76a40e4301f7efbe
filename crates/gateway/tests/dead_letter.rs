//! The spend log's dead-letter file is checked at start: a gateway whose dead-letter file could
//! not be written refuses to start, instead of losing the records of the first outage.

use guardrail_gateway::app::Gateway;

fn config(db: &std::path::Path, dead_letter: &std::path::Path) -> String {
    format!(
        "model_list: []\ngeneral_settings:\n  spend_logs: \"sqlite://{}\"\n  spend_logs_dead_letter_path: \"{}\"\n",
        db.display(),
        dead_letter.display()
    )
}

#[tokio::test]
async fn a_dead_letter_file_that_cannot_be_written_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("spend.db");
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"").unwrap();
    for (dead_letter, why) in [
        (a_file.join("dead.jsonl"), "not a directory"),
        (a_file.join("deeper/dead.jsonl"), "not a directory"),
        (dir.path().to_path_buf(), "it is a directory"),
    ] {
        let err = match Gateway::from_config_str(&config(&db, &dead_letter)).await {
            Ok(_) => panic!("started with {}", dead_letter.display()),
            Err(e) => e,
        };
        assert_eq!(err.key(), "general_settings.spend_logs_dead_letter_path");
        assert!(err.message().to_lowercase().contains(why), "{err}");
        assert!(
            err.message().contains(&dead_letter.display().to_string()),
            "{err}"
        );
    }
    // A missing directory is created with the first record; an existing file is appended to.
    let existing = dir.path().join("existing.jsonl");
    std::fs::write(&existing, b"{}\n").unwrap();
    for dead_letter in [dir.path().join("not/yet/there/dead.jsonl"), existing] {
        let gateway = Gateway::from_config_str(&config(&db, &dead_letter))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", dead_letter.display()));
        drop(gateway);
    }
    assert!(
        !dir.path().join("not").exists(),
        "nothing is created at start"
    );
}
