//! Small helpers the provider guardrails share: reading settings from the environment, keeping
//! secrets out of error messages, and lenient config values.

use guardrail_tower_core::{GuardrailError, GuardrailErrorKind};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// What stands in for a secret in an error message.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// Reads an environment variable; an empty value counts as unset.
pub(crate) fn env_var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// The process environment, as [`env_var`] reads it.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `error` with every occurrence of a secret in its text replaced by [`REDACTED`].
///
/// A service may quote what it received in an error body (AWS quotes the canonical request,
/// which carries the session token); the error's text reaches logs and the guardrail log entry,
/// so it must never carry a credential. An error without a secret is returned unchanged (with
/// its source); one with a secret is rebuilt from its redacted text, keeping its kind.
pub(crate) fn scrub(error: GuardrailError, secrets: &[String]) -> GuardrailError {
    let text = error.to_string();
    let secrets: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty() && text.contains(*s))
        .collect();
    if secrets.is_empty() {
        return error;
    }
    let mut redacted = text;
    for secret in secrets {
        redacted = redacted.replace(secret, REDACTED);
    }
    match error.kind() {
        GuardrailErrorKind::Unreachable | GuardrailErrorKind::Timeout => {
            GuardrailError::unreachable(redacted)
        }
        _ => GuardrailError::failed(redacted),
    }
}

/// Deserializes an optional string that YAML may have written as a number (`guardrailVersion: 1`).
pub(crate) fn string_or_number<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(serde::de::Error::custom("expected a string")),
    }
}

/// What kind of JSON value this is, for error messages.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn scrub_removes_secrets_and_keeps_the_kind() {
        let secrets = vec!["s3cr3t".to_owned(), String::new()];
        let err = scrub(
            GuardrailError::failed("HTTP 403: token s3cr3t rejected"),
            &secrets,
        );
        assert_eq!(err.kind(), GuardrailErrorKind::Failed);
        assert_eq!(err.to_string(), "HTTP 403: token [REDACTED] rejected");
        let err = scrub(GuardrailError::unreachable("503 s3cr3t"), &secrets);
        assert_eq!(err.kind(), GuardrailErrorKind::Unreachable);
        assert_eq!(err.to_string(), "503 [REDACTED]");
        let clean = scrub(GuardrailError::timeout(Duration::from_millis(5)), &secrets);
        assert_eq!(clean.kind(), GuardrailErrorKind::Timeout);
    }
}
