//! Every config in `examples/configs/` parses with the gateway's config parser, without a
//! warning, and every supported guardrail type has an example there and a row in the README's
//! provider table: the examples and the docs cannot rot.

use std::collections::BTreeMap;
use std::path::Path;

use guardrail_gateway::config::{GatewayConfig, supported_guardrail_types};

/// The `NAME`s of the `os.environ/NAME` references in `text`.
fn env_references(text: &str) -> Vec<String> {
    text.split("os.environ/")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn examples() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_example_config_parses_without_warnings() {
    let examples = examples();
    assert!(examples.len() >= 5, "{examples:?}");
    for (name, text) in &examples {
        // The environment holds exactly the variables the file references.
        let env: BTreeMap<String, String> = env_references(text)
            .into_iter()
            .map(|var| (var.clone(), format!("example-{}", var.to_lowercase())))
            .collect();
        let config = GatewayConfig::from_yaml_with_env(text, &|var| env.get(var).cloned())
            .unwrap_or_else(|e| panic!("examples/configs/{name}: {e}"));
        assert!(
            config.warnings.is_empty(),
            "examples/configs/{name}: {:?}",
            config.warnings
        );
        assert!(!config.guardrails.is_empty(), "examples/configs/{name}");
    }
}

#[test]
fn every_guardrail_type_has_an_example_and_a_readme_row() {
    let examples = examples();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for kind in supported_guardrail_types() {
        assert!(
            examples
                .iter()
                .any(|(_, text)| text.contains(&format!("guardrail: {kind}\n"))),
            "no example in examples/configs/ uses `guardrail: {kind}`"
        );
        assert!(
            readme.contains(&format!("| `{kind}` |")),
            "the README's provider table has no row for `{kind}`"
        );
    }
}
