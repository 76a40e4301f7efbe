//! A contract mock of Microsoft Presidio: the analyzer's `POST /analyze` and the anonymizer's
//! `POST /anonymize`, on one socket (point both base URLs at [`PresidioMock::base_url`]).
//!
//! It answers in Presidio's shapes, with offsets in characters as Presidio (Python) counts
//! them. Its recognizers are fixed, so tests can predict every finding:
//!
//! | entity | what | score |
//! | --- | --- | --- |
//! | `EMAIL_ADDRESS` | `local@host.tld` | 1.0 |
//! | `US_SSN` | `ddd-dd-dddd` | 0.85 |
//! | `PHONE_NUMBER` | `ddd-dddd` or `ddd-ddd-dddd` | 0.75 |
//! | `CREDIT_CARD` | 16 digits, in groups of four separated by a space or `-` or not | 1.0 |
//! | `PERSON` | the names in [`NAMES`] (whole words, any case) | 0.85, `Jordan` 0.4 |
//!
//! `entities` restricts the answer to those types; a `language` other than `en`, `de`, `es`
//! or `fr` is a 500 (`No matching recognizers were found to serve the request.`), as Presidio
//! answers; a body without `text` is a 400.
//!
//! The anonymizer removes overlapping results (the higher score wins, then the longer), then
//! applies each result's operator from `anonymizers` (by entity type, else `DEFAULT`):
//! `replace` (`new_value`, default `<ENTITY_TYPE>`), `redact` and `mask` (`masking_char`,
//! `chars_to_mask`, `from_end`); any other operator, or a result outside the text, is a 422.
//! It answers `{"text": ..., "items": [{"start", "end", "entity_type", "text", "operator"}]}`
//! with the items' offsets in the new text.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use guardrail_tower_testkit::providers::presidio::PresidioMock;
//! use guardrail_tower_testkit::providers::service::Behavior;
//!
//! let presidio = PresidioMock::start().await?;
//! presidio.once_on("/anonymize", Behavior::status(503)); // the next anonymization fails
//! assert!(presidio.base_url().starts_with("http://127.0.0.1:"));
//! # Ok(())
//! # }
//! ```

use std::io;
use std::ops::Deref;

use serde_json::{Map, Value, json};

use super::service::{Answer, ServiceMock, find_emails, find_phrase, json_body};
use crate::mock::RecordedRequest;

/// The names the `PERSON` recognizer knows, with their scores.
pub const NAMES: [(&str, f64); 5] = [
    ("Jane Doe", 0.85),
    ("John Smith", 0.85),
    ("Zoë Martin", 0.85),
    ("Alice", 0.85),
    ("Jordan", 0.4),
];

/// The languages the analyzer serves.
pub const LANGUAGES: [&str; 4] = ["en", "de", "es", "fr"];

/// A running Presidio mock. Dereferences to its [`ServiceMock`] (recorded requests, scripts).
#[derive(Debug)]
pub struct PresidioMock {
    service: ServiceMock,
}

impl Deref for PresidioMock {
    type Target = ServiceMock;

    fn deref(&self) -> &ServiceMock {
        &self.service
    }
}

impl PresidioMock {
    /// Binds `127.0.0.1:0` and serves `/analyze` and `/anonymize`.
    pub async fn start() -> io::Result<PresidioMock> {
        Ok(PresidioMock {
            service: ServiceMock::start(answer).await?,
        })
    }

    /// The base URL of both the analyzer and the anonymizer.
    pub fn base_url(&self) -> String {
        self.service.origin()
    }
}

fn answer(request: &RecordedRequest) -> Answer {
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/analyze") => json_body(request).map_or_else(|e| e, |body| analyze(&body)),
        ("POST", "/anonymize") => json_body(request).map_or_else(|e| e, |body| anonymize(&body)),
        ("GET", "/health") => (200, json!("Presidio service is up")),
        _ => (404, json!({"error": "Not Found"})),
    }
}

/// One finding, in character offsets.
struct Found {
    entity: &'static str,
    start: usize,
    end: usize,
    score: f64,
}

fn analyze(body: &Value) -> Answer {
    let Some(text) = body.get("text").and_then(Value::as_str) else {
        return (400, json!({"error": "No text provided"}));
    };
    let language = body.get("language").and_then(Value::as_str).unwrap_or("");
    if !LANGUAGES.contains(&language) {
        return (
            500,
            json!({"error": "No matching recognizers were found to serve the request."}),
        );
    }
    let wanted: Option<Vec<&str>> = body
        .get("entities")
        .and_then(Value::as_array)
        .map(|e| e.iter().filter_map(Value::as_str).collect());
    let mut found = recognize(text);
    if let Some(wanted) = wanted {
        found.retain(|f| wanted.contains(&f.entity));
    }
    found.sort_by_key(|f| (f.start, f.end));
    let results: Vec<Value> = found
        .iter()
        .map(|f| {
            json!({
                "entity_type": f.entity,
                "start": f.start,
                "end": f.end,
                "score": f.score,
                "analysis_explanation": null,
                "recognition_metadata": {
                    "recognizer_name": format!("Mock{}Recognizer", f.entity),
                    "recognizer_identifier": format!("mock-{}", f.entity.to_lowercase()),
                },
            })
        })
        .collect();
    (200, Value::Array(results))
}

fn recognize(text: &str) -> Vec<Found> {
    let mut found: Vec<Found> = find_emails(text)
        .into_iter()
        .map(|(start, end)| Found {
            entity: "EMAIL_ADDRESS",
            start,
            end,
            score: 1.0,
        })
        .collect();
    for (start, end, groups) in digit_runs(text) {
        let (entity, score) = match groups.as_slice() {
            [3, 2, 4] => ("US_SSN", 0.85),
            [3, 4] | [3, 3, 4] => ("PHONE_NUMBER", 0.75),
            [4, 4, 4, 4] | [16] => ("CREDIT_CARD", 1.0),
            _ => continue,
        };
        found.push(Found {
            entity,
            start,
            end,
            score,
        });
    }
    for (name, score) in NAMES {
        for (start, end) in find_phrase(text, &name.to_lowercase()) {
            found.push(Found {
                entity: "PERSON",
                start,
                end,
                score,
            });
        }
    }
    found
}

/// Runs of digit groups separated by single `-` or spaces, as (start, end, group lengths), in
/// characters.
fn digit_runs(text: &str) -> Vec<(usize, usize, Vec<usize>)> {
    let chars: Vec<char> = text.chars().collect();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() || (i > 0 && chars[i - 1].is_alphanumeric()) {
            i += 1;
            continue;
        }
        let start = i;
        let mut groups = Vec::new();
        let mut end;
        loop {
            let group_start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            groups.push(i - group_start);
            end = i;
            let separated = i + 1 < chars.len()
                && (chars[i] == '-' || chars[i] == ' ')
                && chars[i + 1].is_ascii_digit();
            if !separated {
                break;
            }
            i += 1;
        }
        if end >= chars.len() || !chars[end].is_alphanumeric() {
            runs.push((start, end, groups));
        }
        i = end.max(start + 1);
    }
    runs
}

fn anonymize(body: &Value) -> Answer {
    let Some(text) = body.get("text").and_then(Value::as_str) else {
        return (
            422,
            json!({"error": "Invalid input, text can not be empty"}),
        );
    };
    let Some(results) = body.get("analyzer_results").and_then(Value::as_array) else {
        return (
            422,
            json!({"error": "Invalid input, analyzer results can not be empty"}),
        );
    };
    let chars: Vec<char> = text.chars().collect();
    let mut kept: Vec<(usize, usize, String, f64)> = Vec::new();
    for result in results {
        let entity = result.get("entity_type").and_then(Value::as_str);
        let start = result.get("start").and_then(Value::as_u64);
        let end = result.get("end").and_then(Value::as_u64);
        let score = result.get("score").and_then(Value::as_f64).unwrap_or(0.0);
        let (Some(entity), Some(start), Some(end)) = (entity, start, end) else {
            return (
                422,
                json!({"error": "Invalid input, analyzer result is missing fields"}),
            );
        };
        let (start, end) = (start as usize, end as usize);
        if start >= end || end > chars.len() {
            return (
                422,
                json!({"error": format!("Invalid analyzer result, start: {start} and end: {end}, while text length is only {}.", chars.len())}),
            );
        }
        kept.push((start, end, entity.to_owned(), score));
    }
    // Conflicts: the higher score wins, then the longer span, then the earlier one.
    kept.sort_by(|a, b| {
        b.3.total_cmp(&a.3)
            .then((b.1 - b.0).cmp(&(a.1 - a.0)))
            .then(a.0.cmp(&b.0))
    });
    let mut chosen: Vec<(usize, usize, String)> = Vec::new();
    for (start, end, entity, _) in kept {
        if chosen.iter().all(|(s, e, _)| end <= *s || start >= *e) {
            chosen.push((start, end, entity));
        }
    }
    chosen.sort_by_key(|c| c.0);
    let operators = body.get("anonymizers").and_then(Value::as_object);
    let mut out = String::new();
    let mut out_len = 0;
    let mut pos = 0;
    let mut items = Vec::new();
    for (start, end, entity) in chosen {
        let original: String = chars[start..end].iter().collect();
        let replacement = match operate(operators, &entity, &original) {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        let before: String = chars[pos..start].iter().collect();
        out_len += before.chars().count();
        out.push_str(&before);
        let item_start = out_len;
        out_len += replacement.1.chars().count();
        out.push_str(&replacement.1);
        items.push(json!({
            "start": item_start,
            "end": out_len,
            "entity_type": entity,
            "text": replacement.1,
            "operator": replacement.0,
        }));
        pos = end;
    }
    out.extend(&chars[pos..]);
    (200, json!({"text": out, "items": items}))
}

/// The operator name and the replacement for one entity.
fn operate(
    operators: Option<&Map<String, Value>>,
    entity: &str,
    original: &str,
) -> Result<(String, String), Answer> {
    let config = operators.and_then(|o| o.get(entity).or_else(|| o.get("DEFAULT")));
    let kind = config
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("replace");
    let param = |name: &str| config.and_then(|c| c.get(name));
    let replacement = match kind {
        "replace" => param("new_value")
            .and_then(Value::as_str)
            .map_or_else(|| format!("<{entity}>"), str::to_owned),
        "redact" => String::new(),
        "mask" => {
            let masking = param("masking_char")
                .and_then(Value::as_str)
                .and_then(|s| s.chars().next())
                .unwrap_or('*');
            let count = param("chars_to_mask")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX) as usize;
            let from_end = param("from_end").and_then(Value::as_bool).unwrap_or(false);
            let chars: Vec<char> = original.chars().collect();
            let n = count.min(chars.len());
            let masked = |i: usize| {
                if from_end {
                    i >= chars.len() - n
                } else {
                    i < n
                }
            };
            chars
                .iter()
                .enumerate()
                .map(|(i, c)| if masked(i) { masking } else { *c })
                .collect()
        }
        other => {
            return Err((
                422,
                json!({"error": format!("Invalid operator class '{other}'.")}),
            ));
        }
    };
    Ok((kind.to_owned(), replacement))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizers_find_what_they_document() {
        let text = "Zoë Martin (zoë@x.fr, 555-0100) has SSN 123-45-6789 and card 4111 1111 1111 1111; Jordan too";
        let (status, body) = analyze(&json!({"text": text, "language": "en"}));
        assert_eq!(status, 200);
        let chars: Vec<char> = text.chars().collect();
        let found: Vec<(String, String)> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let (s, e) = (
                    r["start"].as_u64().unwrap() as usize,
                    r["end"].as_u64().unwrap() as usize,
                );
                (
                    r["entity_type"].as_str().unwrap().to_owned(),
                    chars[s..e].iter().collect(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("PERSON", "Zoë Martin"),
            ("EMAIL_ADDRESS", "zoë@x.fr"),
            ("PHONE_NUMBER", "555-0100"),
            ("US_SSN", "123-45-6789"),
            ("CREDIT_CARD", "4111 1111 1111 1111"),
            ("PERSON", "Jordan"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(found, want);
        let (status, body) =
            analyze(&json!({"text": text, "language": "en", "entities": ["US_SSN"]}));
        assert_eq!((status, body.as_array().unwrap().len()), (200, 1));
        assert_eq!(analyze(&json!({"text": "x", "language": "xx"})).0, 500);
    }

    #[test]
    fn the_anonymizer_resolves_conflicts_and_applies_operators() {
        let (status, body) = anonymize(&json!({
            "text": "call Zoë at 555-0100",
            "anonymizers": {"PHONE_NUMBER": {"type": "mask", "masking_char": "#", "chars_to_mask": 4, "from_end": true}},
            "analyzer_results": [
                {"entity_type": "PERSON", "start": 5, "end": 8, "score": 0.85},
                {"entity_type": "LOCATION", "start": 5, "end": 8, "score": 0.5},
                {"entity_type": "PHONE_NUMBER", "start": 12, "end": 20, "score": 0.75}
            ]
        }));
        assert_eq!(status, 200);
        assert_eq!(body["text"], "call <PERSON> at 555-####");
        assert_eq!(
            body["items"][0],
            json!({"start": 5, "end": 13, "entity_type": "PERSON", "text": "<PERSON>", "operator": "replace"})
        );
        assert_eq!(
            anonymize(&json!({"text": "ab", "analyzer_results": [{"entity_type": "X", "start": 0, "end": 3, "score": 1.0}]})).0,
            422
        );
    }
}
