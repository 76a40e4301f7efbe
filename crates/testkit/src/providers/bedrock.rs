//! A contract mock of Amazon Bedrock Guardrails' `ApplyGuardrail`
//! (`POST /guardrail/{guardrailIdentifier}/version/{guardrailVersion}/apply`).
//!
//! Every request must carry a valid AWS Signature Version 4 for the service `bedrock`, the
//! mock's region and its access key: the mock recomputes the signature from what it received
//! (method, path, query, the signed headers including `host`, the body) with the mock's secret
//! key, using its own implementation of the algorithm, and answers `403` like AWS when the
//! signature is missing, malformed, for another key, region, service or date, or does not match.
//! Every request is recorded with the outcome of that check ([`BedrockCall::signature`]).
//!
//! A signed request must also have the body the API accepts: `source` `INPUT` or `OUTPUT`, and a
//! non-empty `content` list of `{"text": {"text": ...}}` blocks; else `400` with a
//! `ValidationException` message.
//!
//! [`Reply::Evaluate`] answers like Bedrock from the policy:
//!
//! - a text containing a blocked word (ASCII case-insensitive): `GUARDRAIL_INTERVENED`, one
//!   output with the blocked message for the source, and a `wordPolicy` assessment whose entry is
//!   `BLOCKED`;
//! - else a text containing an anonymized literal: `GUARDRAIL_INTERVENED`, one output per content
//!   block with each literal replaced by `{TYPE}`, and a `sensitiveInformationPolicy` assessment
//!   with one `ANONYMIZED` PII entity per occurrence;
//! - else `NONE`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use guardrail_tower_testkit::providers::bedrock::{BedrockMock, ACCESS_KEY_ID, REGION};
//!
//! let bedrock = BedrockMock::start().await;
//! bedrock.block_word("BLUEBIRD");
//! bedrock.anonymize("jane@corp.com", "EMAIL");
//! // A guardrail under test points `aws_bedrock_runtime_endpoint` here and signs with
//! // ACCESS_KEY_ID / SECRET_ACCESS_KEY for REGION.
//! assert!(bedrock.endpoint().starts_with("http://127.0.0.1:"));
//! assert_eq!((ACCESS_KEY_ID, REGION), ("AKIDMOCKBEDROCK00001", "us-east-1"));
//! # }
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::Response;
use http_body_util::Full;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Core, Received, Reply, json_response, start};
use crate::TestServer;

/// The access key id the mock expects by default.
pub const ACCESS_KEY_ID: &str = "AKIDMOCKBEDROCK00001";

/// The secret access key the mock verifies signatures with by default.
pub const SECRET_ACCESS_KEY: &str = "mock/Bedrock+Secret/Key0000000000000000";

/// The region the mock expects by default.
pub const REGION: &str = "us-east-1";

/// The SigV4 service name.
pub const SERVICE: &str = "bedrock";

/// The blocked message for `INPUT` (Bedrock's `blockedInputMessaging`).
pub const BLOCKED_INPUT_MESSAGE: &str = "Sorry, the model cannot answer this question.";

/// The blocked message for `OUTPUT` (Bedrock's `blockedOutputsMessaging`).
pub const BLOCKED_OUTPUT_MESSAGE: &str = "Sorry, the model cannot answer this question (output).";

/// How far a request's `x-amz-date` may be from the mock's clock (AWS allows 15 minutes).
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// The credentials the mock verifies signatures against.
#[derive(Debug, Clone)]
pub struct MockCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token a request must carry in `x-amz-security-token`, if any.
    pub session_token: Option<String>,
    /// The region.
    pub region: String,
}

impl Default for MockCredentials {
    fn default() -> Self {
        MockCredentials {
            access_key_id: ACCESS_KEY_ID.to_owned(),
            secret_access_key: SECRET_ACCESS_KEY.to_owned(),
            session_token: None,
            region: REGION.to_owned(),
        }
    }
}

/// One request the mock received, with the outcome of its signature check.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BedrockCall {
    /// What was received.
    pub received: Received,
    /// `Ok` with the signed header names when the signature verified; else why it did not.
    pub signature: Result<Vec<String>, String>,
}

impl BedrockCall {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        self.received.json().unwrap_or(Value::Null)
    }

    /// The texts of the `content` blocks.
    pub fn texts(&self) -> Vec<String> {
        self.json()["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["text"]["text"].as_str().map(str::to_owned))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Policy {
    blocked_words: Vec<String>,
    anonymize: Vec<(String, String)>,
}

/// A running Bedrock Guardrails mock. Stops when dropped. See the [module docs](self).
#[derive(Debug)]
pub struct BedrockMock {
    server: TestServer,
    core: Arc<Core>,
    policy: Arc<Mutex<Policy>>,
    credentials: MockCredentials,
}

impl BedrockMock {
    /// Starts a mock expecting the default [`MockCredentials`].
    pub async fn start() -> BedrockMock {
        BedrockMock::with_credentials(MockCredentials::default()).await
    }

    /// Starts a mock expecting `credentials`.
    pub async fn with_credentials(credentials: MockCredentials) -> BedrockMock {
        let core = Core::new();
        let policy: Arc<Mutex<Policy>> = Arc::default();
        let (p, c) = (policy.clone(), credentials.clone());
        let server = start(core.clone(), move |received| {
            let verdict = verify(received, &c, SystemTime::now());
            answer(
                received,
                verdict,
                &p.lock().unwrap_or_else(PoisonError::into_inner),
            )
        })
        .await;
        BedrockMock {
            server,
            core,
            policy,
            credentials,
        }
    }

    /// `http://127.0.0.1:PORT`: the guardrail's `aws_bedrock_runtime_endpoint`.
    pub fn endpoint(&self) -> String {
        self.server.url("")
    }

    /// Blocks texts containing `word` (ASCII case-insensitive).
    pub fn block_word(&self, word: &str) {
        self.policy().blocked_words.push(word.to_owned());
    }

    /// Anonymizes `literal` as `{pii_type}` (for example `EMAIL`).
    pub fn anonymize(&self, literal: &str, pii_type: &str) {
        self.policy()
            .anonymize
            .push((literal.to_owned(), pii_type.to_owned()));
    }

    /// Uses `reply` once, before the default (in the order pushed).
    pub fn push_reply(&self, reply: Reply) {
        self.core.push_reply(reply);
    }

    /// Sets the default reply ([`Reply::Evaluate`] until changed).
    pub fn set_reply(&self, reply: Reply) {
        self.core.set_reply(reply);
    }

    /// Every request received, in order, each with the outcome of its signature check (also
    /// for requests that got a scripted reply).
    pub fn requests(&self) -> Vec<BedrockCall> {
        self.core
            .requests()
            .into_iter()
            .map(|received| BedrockCall {
                signature: verify(&received, &self.credentials, SystemTime::now()),
                received,
            })
            .collect()
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, Policy> {
        self.policy.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An AWS-style error body.
fn aws_error(status: u16, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let mut response = json_response(status, json!({ "message": message }).to_string());
    response.headers_mut().insert(
        "x-amzn-errortype",
        http::HeaderValue::from_str(kind).expect("a valid header"),
    );
    response
}

fn answer(
    received: &Received,
    signature: Result<Vec<String>, String>,
    policy: &Policy,
) -> Response<Full<Bytes>> {
    if let Err(why) = signature {
        return aws_error(403, "InvalidSignatureException", &why);
    }
    if received.method != http::Method::POST || !is_apply_path(&received.path) {
        return aws_error(
            404,
            "UnknownOperationException",
            &format!("no operation at {} {}", received.method, received.path),
        );
    }
    let Some(body) = received.json() else {
        return aws_error(400, "ValidationException", "the body is not JSON");
    };
    let source = body["source"].as_str().unwrap_or_default();
    if source != "INPUT" && source != "OUTPUT" {
        return aws_error(
            400,
            "ValidationException",
            "1 validation error detected: Value at 'source' failed to satisfy constraint: Member must satisfy enum value set: [INPUT, OUTPUT]",
        );
    }
    let Some(content) = body["content"].as_array().filter(|c| !c.is_empty()) else {
        return aws_error(
            400,
            "ValidationException",
            "1 validation error detected: Value at 'content' failed to satisfy constraint: Member must have length greater than or equal to 1",
        );
    };
    let mut texts = Vec::new();
    for block in content {
        match block["text"]["text"].as_str() {
            Some(text) => texts.push(text.to_owned()),
            None => {
                return aws_error(
                    400,
                    "ValidationException",
                    "each content block must be {\"text\": {\"text\": string}}",
                );
            }
        }
    }
    let usage = json!({"topicPolicyUnits": 1, "contentPolicyUnits": 1, "wordPolicyUnits": 1,
                       "sensitiveInformationPolicyUnits": 1, "sensitiveInformationPolicyFreeUnits": 0,
                       "contextualGroundingPolicyUnits": 0});
    let lower: Vec<String> = texts.iter().map(|t| t.to_ascii_lowercase()).collect();
    if let Some(word) = policy
        .blocked_words
        .iter()
        .find(|w| lower.iter().any(|t| t.contains(&w.to_ascii_lowercase())))
    {
        let message = if source == "INPUT" {
            BLOCKED_INPUT_MESSAGE
        } else {
            BLOCKED_OUTPUT_MESSAGE
        };
        return json_response(
            200,
            json!({
                "usage": usage,
                "action": "GUARDRAIL_INTERVENED",
                "actionReason": "Guardrail blocked.",
                "outputs": [{"text": message}],
                "assessments": [{"wordPolicy": {"customWords": [{"match": word, "action": "BLOCKED", "detected": true}]}}]
            })
            .to_string(),
        );
    }
    let mut entities = Vec::new();
    let outputs: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut out = text.clone();
            for (literal, kind) in &policy.anonymize {
                for _ in 0..out.matches(literal.as_str()).count() {
                    entities.push(json!({"match": literal, "type": kind, "action": "ANONYMIZED", "detected": true}));
                }
                out = out.replace(literal.as_str(), &format!("{{{kind}}}"));
            }
            json!({ "text": out })
        })
        .collect();
    if !entities.is_empty() {
        return json_response(
            200,
            json!({
                "usage": usage,
                "action": "GUARDRAIL_INTERVENED",
                "actionReason": "Guardrail masked.",
                "outputs": outputs,
                "assessments": [{"sensitiveInformationPolicy": {"piiEntities": entities, "regexes": []}}]
            })
            .to_string(),
        );
    }
    json_response(
        200,
        json!({"usage": usage, "action": "NONE", "outputs": [], "assessments": [{}]}).to_string(),
    )
}

/// `/guardrail/{id}/version/{version}/apply`, with one non-empty segment for each.
fn is_apply_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts.as_slice(), ["", "guardrail", id, "version", v, "apply"] if !id.is_empty() && !v.is_empty())
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// URI-encodes every byte but RFC 3986 unreserved ones (and `/` when `keep_slash`).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` as seconds since the epoch.
fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> { s.get(r)?.parse().ok() };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = (y as i64 - i64::from(m <= 2), m as i64);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + (hh * 3600 + mm * 60 + ss) as i64).ok()
}

/// Verifies the request's SigV4 signature against `credentials`, at `now`. `Ok` holds the signed
/// header names.
pub fn verify(
    received: &Received,
    credentials: &MockCredentials,
    now: SystemTime,
) -> Result<Vec<String>, String> {
    verify_for(received, credentials, now, SERVICE)
}

fn verify_for(
    received: &Received,
    credentials: &MockCredentials,
    now: SystemTime,
    expected_service: &str,
) -> Result<Vec<String>, String> {
    let auth = received
        .header("authorization")
        .ok_or("Missing Authentication Token")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("the Authorization header is not AWS4-HMAC-SHA256")?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        } else {
            return Err(format!("unexpected Authorization element '{part}'"));
        }
    }
    let (credential, signed_headers, signature) = match (credential, signed_headers, signature) {
        (Some(c), Some(h), Some(s)) => (c, h, s),
        _ => {
            return Err(
                "the Authorization header lacks Credential, SignedHeaders or Signature".into(),
            );
        }
    };
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err("the signature is not 64 lowercase hex digits".into());
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, terminal] = scope.as_slice() else {
        return Err(format!("malformed credential scope '{credential}'"));
    };
    if *key_id != credentials.access_key_id {
        return Err(
            "The security token included in the request is invalid (unknown access key id)".into(),
        );
    }
    if *region != credentials.region {
        return Err(format!(
            "Credential should be scoped to a valid region, not '{region}'"
        ));
    }
    if *service != expected_service {
        return Err(format!(
            "Credential should be scoped to correct service: '{expected_service}', not '{service}'"
        ));
    }
    if *terminal != "aws4_request" {
        return Err("the credential scope must end with aws4_request".into());
    }
    let amz_date = received
        .header("x-amz-date")
        .ok_or("x-amz-date is missing")?;
    if !amz_date.starts_with(date) || date.len() != 8 {
        return Err(format!(
            "the credential date {date} does not match x-amz-date {amz_date}"
        ));
    }
    let signed_at = parse_amz_date(amz_date).ok_or("x-amz-date is not YYYYMMDDTHHMMSSZ")?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    if now.abs_diff(signed_at) > MAX_SKEW.as_secs() {
        return Err("Signature expired or not yet current (x-amz-date too far from now)".into());
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted != names
        || names
            .iter()
            .any(|n| n.is_empty() || *n != n.to_ascii_lowercase())
    {
        return Err("SignedHeaders must be lowercase, sorted and unique".into());
    }
    for required in ["host", "x-amz-date"] {
        if !names.contains(&required) {
            return Err(format!("'{required}' must be a signed header"));
        }
    }
    match (
        &credentials.session_token,
        received.header("x-amz-security-token"),
    ) {
        (Some(want), Some(got)) if want == got => {
            if !names.contains(&"x-amz-security-token") {
                return Err("x-amz-security-token must be signed".into());
            }
        }
        (Some(_), _) => return Err("The security token included in the request is invalid".into()),
        (None, Some(_)) => return Err("a session token was sent for long-term credentials".into()),
        (None, None) => {}
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<&str> = received
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                v.to_str()
                    .map_err(|_| format!("header {name} is not visible ASCII"))
            })
            .collect::<Result<_, _>>()?;
        if values.is_empty() {
            return Err(format!("signed header '{name}' is not in the request"));
        }
        let value = values
            .iter()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(",");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let mut query: Vec<(String, String)> = received
        .query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    // Services other than S3 sign the path as sent, encoded once more.
    let canonical_uri = uri_encode(&received.path, true);
    let canonical_request = format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        received.method,
        hex(&Sha256::digest(&received.body))
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = hmac(
        format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    let key = hmac(&key, region.as_bytes());
    let key = hmac(&key, service.as_bytes());
    let key = hmac(&key, b"aws4_request");
    let expected = hex(&hmac(&key, string_to_sign.as_bytes()));
    if expected != signature {
        return Err("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.".into());
    }
    Ok(names.into_iter().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_parse() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    /// The worked example of the AWS SigV4 documentation (GET, IAM ListUsers, us-east-1).
    #[test]
    fn the_documented_example_verifies() {
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "iam.amazonaws.com".parse().unwrap());
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
                .parse()
                .unwrap(),
        );
        let received = Received {
            method: http::Method::GET,
            path: "/".into(),
            query: Some("Action=ListUsers&Version=2010-05-08".into()),
            headers,
            body: Bytes::new(),
        };
        let credentials = MockCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            region: "us-east-1".into(),
        };
        let at = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert_eq!(
            verify_for(&received, &credentials, at, "iam"),
            Ok(vec![
                "content-type".into(),
                "host".into(),
                "x-amz-date".into()
            ])
        );
        // The mock itself only accepts `bedrock`.
        let err = verify(&received, &credentials, at).unwrap_err();
        assert!(err.contains("correct service"), "{err}");
        // One changed byte anywhere fails.
        let mut tampered = received.clone();
        tampered.query = Some("Action=ListUsers&Version=2010-05-09".into());
        assert!(
            verify_for(&tampered, &credentials, at, "iam")
                .unwrap_err()
                .contains("does not match")
        );
        let mut other_host = received.clone();
        other_host
            .headers
            .insert("host", "iam.amazonaws.com.evil".parse().unwrap());
        assert!(verify_for(&other_host, &credentials, at, "iam").is_err());
        let late = at + Duration::from_secs(16 * 60);
        assert!(
            verify_for(&received, &credentials, late, "iam")
                .unwrap_err()
                .contains("expired")
        );
    }
}
