//! The facade's feature contract, read from `cargo tree -e normal` (what a user's build compiles,
//! without dev-dependencies): the default features are the layers alone, with no database, no
//! TLS stack and no HTTP client; each opt-in feature brings what it names and nothing heavier.
//!
//! That every feature set also compiles on its own is checked by `.ci/features` (a `cargo
//! check` per feature), which `.ci/run` runs.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates that mean a database client was compiled.
const DATABASE: &[&str] = &[
    "rusqlite",
    "libsqlite3-sys",
    "tokio-postgres",
    "postgres-protocol",
];

/// Crates that mean a TLS stack was compiled.
const TLS: &[&str] = &[
    "rustls",
    "tokio-rustls",
    "hyper-rustls",
    "rustls-native-certs",
    "webpki-roots",
    "ring",
    "aws-lc-rs",
    "aws-lc-sys",
    "openssl",
    "openssl-sys",
    "native-tls",
];

/// The layer crates the default features re-export.
const LAYERS: &[&str] = &[
    "guardrail-tower-error",
    "guardrail-tower-model-merge",
    "guardrail-tower-pre-call",
    "guardrail-tower-streaming",
    "guardrail-tower-spend-log",
];

/// The package names in the facade's normal dependency tree with `features`.
fn tree(features: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "-p", "guardrail-tower", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"]);
    match features {
        ["default"] => {}
        [] => {
            command.arg("--no-default-features");
        }
        features => {
            command
                .arg("--no-default-features")
                .arg("--features")
                .arg(features.join(","));
        }
    }
    let output = command.output().expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree {features:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn present<'a>(tree: &BTreeSet<String>, names: &[&'a str]) -> Vec<&'a str> {
    names
        .iter()
        .copied()
        .filter(|name| tree.contains(*name))
        .collect()
}

#[test]
fn default_features_are_the_layers_alone() {
    let tree = tree(&["default"]);
    assert_eq!(present(&tree, LAYERS), LAYERS, "{tree:#?}");
    assert_eq!(present(&tree, DATABASE), [] as [&str; 0], "{tree:#?}");
    assert_eq!(present(&tree, TLS), [] as [&str; 0], "{tree:#?}");
    for absent in ["guardrail-tower-guardrails", "hyper-util", "regex"] {
        assert!(!tree.contains(absent), "{absent} in {tree:#?}");
    }
}

#[test]
fn no_default_features_is_core_alone() {
    let tree = tree(&[]);
    assert!(tree.contains("guardrail-tower-core"), "{tree:#?}");
    assert_eq!(present(&tree, LAYERS), [] as [&str; 0], "{tree:#?}");
    assert_eq!(present(&tree, DATABASE), [] as [&str; 0], "{tree:#?}");
    assert_eq!(present(&tree, TLS), [] as [&str; 0], "{tree:#?}");
}

#[test]
fn each_sink_brings_its_own_database_only() {
    let sqlite = tree(&["sqlite"]);
    assert_eq!(
        present(&sqlite, DATABASE),
        ["rusqlite", "libsqlite3-sys"],
        "{sqlite:#?}"
    );
    assert_eq!(present(&sqlite, TLS), [] as [&str; 0], "{sqlite:#?}");

    let postgres = tree(&["postgres"]);
    assert_eq!(
        present(&postgres, DATABASE),
        ["tokio-postgres", "postgres-protocol"],
        "{postgres:#?}"
    );
    assert_eq!(present(&postgres, TLS), [] as [&str; 0], "{postgres:#?}");

    let jsonl = tree(&["jsonl"]);
    assert!(jsonl.contains("guardrail-tower-spend-log"), "{jsonl:#?}");
    assert_eq!(present(&jsonl, DATABASE), [] as [&str; 0], "{jsonl:#?}");
    assert_eq!(present(&jsonl, TLS), [] as [&str; 0], "{jsonl:#?}");
}

#[test]
fn local_guardrails_need_no_http_client_and_remote_ones_bring_tls() {
    let local = tree(&["guardrails"]);
    assert!(local.contains("guardrail-tower-guardrails"), "{local:#?}");
    assert!(local.contains("regex"), "{local:#?}");
    assert_eq!(present(&local, TLS), [] as [&str; 0], "{local:#?}");
    assert!(!local.contains("hyper-util"), "{local:#?}");

    let remote = tree(&["guardrails-http"]);
    assert!(remote.contains("hyper-util"), "{remote:#?}");
    assert!(remote.contains("hyper-rustls"), "{remote:#?}");
    assert!(remote.contains("rustls"), "{remote:#?}");
    assert_eq!(present(&remote, DATABASE), [] as [&str; 0], "{remote:#?}");
}
