//! Amazon Bedrock Guardrails: a guardrail that calls the Bedrock `ApplyGuardrail` API, configured
//! with the keys of LiteLLM's `guardrail: bedrock`.
//!
//! ```
//! use guardrail_tower_core::{ConfiguredGuardrail, GuardrailMode};
//! use guardrail_tower_guardrails::bedrock::{BedrockGuardrail, BedrockGuardrailConfig};
//! use guardrail_tower_guardrails::http::HttpClient;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // litellm_params of a `guardrail: bedrock` entry; keys it does not read are ignored.
//! let config: BedrockGuardrailConfig = serde_json::from_value(serde_json::json!({
//!     "guardrail": "bedrock",
//!     "mode": "pre_call",
//!     "guardrailIdentifier": "gr-abc123",
//!     "guardrailVersion": "DRAFT",
//!     "aws_region_name": "eu-west-1",
//!     "aws_access_key_id": "AKIDEXAMPLE",
//!     "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
//! }))?;
//! // The process environment fills what the config leaves out (AWS_REGION, ...); here a test
//! // passes an empty one.
//! let bedrock = BedrockGuardrail::with_client_and_env(config, HttpClient::new(), &|_| None)?;
//! assert_eq!(
//!     bedrock.endpoint().to_string(),
//!     "https://bedrock-runtime.eu-west-1.amazonaws.com/guardrail/gr-abc123/version/DRAFT/apply"
//! );
//! let guardrail = ConfiguredGuardrail::new("bedrock-pii", GuardrailMode::PreCall, bedrock);
//! assert_eq!(guardrail.provider(), "bedrock");
//! # Ok(())
//! # }
//! ```
//!
//! # Settings
//!
//! | key | meaning |
//! | --- | --- |
//! | `guardrailIdentifier` | the guardrail's id or ARN (required) |
//! | `guardrailVersion` | a version number or `DRAFT` (required) |
//! | `aws_region_name` | else `AWS_REGION`, `AWS_DEFAULT_REGION`, `AWS_REGION_NAME`, else `us-west-2` (LiteLLM's default; a warning is logged) |
//! | `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token` | else `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` |
//! | `aws_bedrock_runtime_endpoint` | else `AWS_BEDROCK_RUNTIME_ENDPOINT`, else `https://bedrock-runtime.{region}.amazonaws.com` |
//! | `timeout` | seconds per call (default 10) |
//!
//! Credentials come as a pair, both from the config or both from the environment; the session
//! token comes from the same place. Missing credentials, a missing identifier or version, a
//! version that is neither a number nor `DRAFT`, and the LiteLLM credential sources this
//! guardrail does not implement (`aws_role_name`, `aws_profile_name`, `aws_web_identity_token`,
//! `aws_session_name`, `aws_sts_endpoint`) are [`ConfigError`]s at construction, naming the key.
//!
//! # The call
//!
//! `POST {endpoint}/guardrail/{guardrailIdentifier}/version/{guardrailVersion}/apply` (the
//! identifier percent-encoded, so an ARN works), signed with AWS Signature Version 4 for the
//! service `bedrock` by the [`aws_sigv4`] crate, with the body
//!
//! ```json
//! {"source": "INPUT", "content": [{"text": {"text": "first text"}}, {"text": {"text": "second"}}]}
//! ```
//!
//! `source` is `INPUT` for request texts (pre_call, during_call) and `OUTPUT` for response texts
//! (post_call, including each window of a stream). Each non-empty text is one content block, in
//! order; when every text is empty no call is made.
//!
//! # The answer
//!
//! - `action: NONE`: allow.
//! - `action: GUARDRAIL_INTERVENED` with any assessment entry whose `action` is `BLOCKED`: a
//!   block, with the message `Violated guardrail policy: {outputs text}` (the guardrail's
//!   configured blocked message), or `Violated guardrail policy` when there is none.
//! - `action: GUARDRAIL_INTERVENED` whose entries are `ANONYMIZED` (none `BLOCKED`): a mask:
//!   `outputs[i].text` replaces the i-th text sent. The number of outputs must equal the number of
//!   texts sent, or the check fails (the masked text is never applied to the wrong text, and the
//!   unmasked text is not let through). `masked_entity_count` counts the anonymized PII entities
//!   by type and the anonymized regexes by name.
//! - `action: GUARDRAIL_INTERVENED` with neither `BLOCKED` nor `ANONYMIZED` entries: a block.
//!   LiteLLM lets such an answer through; an intervention this guardrail cannot explain is not
//!   treated as a pass here.
//! - anything else (no `action`, an unknown one, not JSON): the check fails.
//!
//! The answer is logged as `guardrail_response` with every `match` and `regex` value replaced by
//! `[REDACTED]` (they quote the text that matched, as LiteLLM also redacts).
//!
//! # Failures and secrets
//!
//! Connect/DNS errors, timeouts and HTTP 502/503/504 are *unreachable*; other statuses (an AWS
//! `403` for a bad signature, a `400 ValidationException`, a `429`) and bad answers are *failed*
//! (see [`crate::http`]). The secret key, the session token and the access key id never appear in
//! `Debug` output or error messages; signing runs with tracing switched off, because the signer
//! traces the canonical request, which holds the session token.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{Guardrail, GuardrailError, GuardrailInput, Verdict};
use http::Uri;
use http::header::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::{
    ConfigError, HttpClient, JsonPost, parse_base_url, parse_timeout, shared_client,
};
use crate::support::{REDACTED, env_var, kind_of, process_env, scrub, string_or_number};

/// The region used when neither the config nor the environment names one (LiteLLM's default).
pub const DEFAULT_REGION: &str = "us-west-2";

/// The environment variables an unset `aws_region_name` is read from, the first one set.
pub const REGION_ENV: [&str; 3] = ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_REGION_NAME"];

/// The environment variable an unset `aws_bedrock_runtime_endpoint` is read from.
pub const ENDPOINT_ENV: &str = "AWS_BEDROCK_RUNTIME_ENDPOINT";

/// The Bedrock runtime endpoint of an AWS region (without `aws_bedrock_runtime_endpoint`).
pub fn regional_endpoint(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// The default overall timeout of one call, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0;

/// The SigV4 service name Bedrock's runtime API is signed for.
pub const SIGNING_NAME: &str = "bedrock";

/// The start of every block message (LiteLLM's wording).
pub const BLOCK_MESSAGE: &str = "Violated guardrail policy";

/// Characters left as they are in a path segment: RFC 3986 unreserved.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// LiteLLM credential sources this guardrail does not implement.
const UNSUPPORTED: [&str; 5] = [
    "aws_role_name",
    "aws_profile_name",
    "aws_web_identity_token",
    "aws_session_name",
    "aws_sts_endpoint",
];

/// The settings of a Bedrock guardrail: LiteLLM's `litellm_params` for `guardrail: bedrock`.
///
/// Deserialized from the whole `litellm_params` map (other keys are ignored). What the config
/// leaves out is read from the environment when the guardrail is built (see the
/// [module docs](self)).
#[derive(Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct BedrockGuardrailConfig {
    /// The guardrail's id or ARN.
    #[serde(
        rename = "guardrailIdentifier",
        default,
        deserialize_with = "string_or_number"
    )]
    pub guardrail_identifier: Option<String>,
    /// The guardrail's version: a number or `DRAFT`.
    #[serde(
        rename = "guardrailVersion",
        default,
        deserialize_with = "string_or_number"
    )]
    pub guardrail_version: Option<String>,
    /// The AWS region.
    #[serde(default)]
    pub aws_region_name: Option<String>,
    /// The access key id (with `aws_secret_access_key`).
    #[serde(default)]
    pub aws_access_key_id: Option<String>,
    /// The secret access key.
    #[serde(default)]
    pub aws_secret_access_key: Option<String>,
    /// The session token of temporary credentials.
    #[serde(default)]
    pub aws_session_token: Option<String>,
    /// The runtime endpoint, replacing `https://bedrock-runtime.{region}.amazonaws.com`
    /// (a VPC endpoint, a proxy).
    #[serde(default)]
    pub aws_bedrock_runtime_endpoint: Option<String>,
    /// The longest a call may take, in seconds. Default [`DEFAULT_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    aws_role_name: Option<Value>,
    #[serde(default)]
    aws_profile_name: Option<Value>,
    #[serde(default)]
    aws_web_identity_token: Option<Value>,
    #[serde(default)]
    aws_session_name: Option<Value>,
    #[serde(default)]
    aws_sts_endpoint: Option<Value>,
}

impl BedrockGuardrailConfig {
    /// A config for the guardrail `identifier` at `version`, everything else from the
    /// environment or at its default.
    pub fn new(identifier: impl Into<String>, version: impl Into<String>) -> Self {
        BedrockGuardrailConfig {
            guardrail_identifier: Some(identifier.into()),
            guardrail_version: Some(version.into()),
            ..BedrockGuardrailConfig::default()
        }
    }

    fn unsupported(&self) -> Option<&'static str> {
        let set = [
            &self.aws_role_name,
            &self.aws_profile_name,
            &self.aws_web_identity_token,
            &self.aws_session_name,
            &self.aws_sts_endpoint,
        ];
        UNSUPPORTED
            .iter()
            .zip(set)
            .find(|(_, v)| v.as_ref().is_some_and(|v| !v.is_null()))
            .map(|(k, _)| *k)
    }
}

fn redacted(value: &Option<String>) -> Option<&'static str> {
    value.as_ref().map(|_| "<redacted>")
}

impl fmt::Debug for BedrockGuardrailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockGuardrailConfig")
            .field("guardrail_identifier", &self.guardrail_identifier)
            .field("guardrail_version", &self.guardrail_version)
            .field("aws_region_name", &self.aws_region_name)
            .field("aws_access_key_id", &redacted(&self.aws_access_key_id))
            .field(
                "aws_secret_access_key",
                &redacted(&self.aws_secret_access_key),
            )
            .field("aws_session_token", &redacted(&self.aws_session_token))
            .field(
                "aws_bedrock_runtime_endpoint",
                &self.aws_bedrock_runtime_endpoint,
            )
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Where the credentials came from (for `Debug` and logs; never the credentials themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredentialSource {
    Config,
    Environment,
}

/// A guardrail that asks Amazon Bedrock Guardrails (`ApplyGuardrail`). See the
/// [module docs](self).
#[derive(Clone)]
pub struct BedrockGuardrail {
    client: HttpClient,
    post: JsonPost,
    credentials: Credentials,
    source: CredentialSource,
    region: String,
    /// Every credential string, to scrub from error messages.
    secrets: Vec<String>,
}

impl BedrockGuardrail {
    /// Checks `config`, fills it from the process environment, and builds the guardrail on the
    /// [`shared_client`].
    pub fn new(config: BedrockGuardrailConfig) -> Result<Self, ConfigError> {
        BedrockGuardrail::with_client_and_env(config, shared_client(), &process_env)
    }

    /// Like [`new`](Self::new), on the given client.
    pub fn with_client(
        config: BedrockGuardrailConfig,
        client: HttpClient,
    ) -> Result<Self, ConfigError> {
        BedrockGuardrail::with_client_and_env(config, client, &process_env)
    }

    /// Like [`with_client`](Self::with_client), reading environment variables through `env`
    /// instead of the process environment (an empty value counts as unset).
    pub fn with_client_and_env(
        config: BedrockGuardrailConfig,
        client: HttpClient,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if let Some(key) = config.unsupported() {
            return Err(ConfigError::new(
                key,
                "is not supported by this guardrail: give aws_access_key_id and \
                 aws_secret_access_key (or the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 environment variables)",
            ));
        }
        let identifier = required(config.guardrail_identifier, "guardrailIdentifier")?;
        let version = required(config.guardrail_version, "guardrailVersion")?;
        if !valid_version(&version) {
            return Err(ConfigError::new(
                "guardrailVersion",
                format!("'{version}' is not a guardrail version (a number from 1, or DRAFT)"),
            ));
        }
        let region = match non_empty(config.aws_region_name)
            .or_else(|| REGION_ENV.iter().find_map(|var| env_var(env, var)))
        {
            Some(region) => region,
            None => {
                tracing::warn!(
                    region = DEFAULT_REGION,
                    "bedrock guardrail: no aws_region_name and no AWS_REGION; using {DEFAULT_REGION}"
                );
                DEFAULT_REGION.to_owned()
            }
        };
        if !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::new(
                "aws_region_name",
                format!("'{region}' is not an AWS region (like us-east-1)"),
            ));
        }
        let (credentials, source, secrets) = credentials(
            non_empty(config.aws_access_key_id),
            non_empty(config.aws_secret_access_key),
            non_empty(config.aws_session_token),
            env,
        )?;
        let (endpoint_key, endpoint) = match non_empty(config.aws_bedrock_runtime_endpoint) {
            Some(endpoint) => ("aws_bedrock_runtime_endpoint", endpoint),
            None => match env_var(env, ENDPOINT_ENV) {
                Some(endpoint) => ("aws_bedrock_runtime_endpoint", endpoint),
                None => ("aws_region_name", regional_endpoint(&region)),
            },
        };
        let url = format!(
            "{}/guardrail/{}/version/{}/apply",
            endpoint.trim().trim_end_matches('/'),
            utf8_percent_encode(&identifier, PATH_SEGMENT),
            utf8_percent_encode(&version, PATH_SEGMENT),
        );
        let uri = parse_base_url(endpoint_key, &url)?;
        let timeout = match config.timeout {
            Some(secs) => parse_timeout("timeout", secs)?,
            None => Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS),
        };
        Ok(BedrockGuardrail {
            client,
            post: JsonPost::new(uri).timeout(timeout),
            credentials,
            source,
            region,
            secrets,
        })
    }

    /// The full URL called.
    pub fn endpoint(&self) -> &Uri {
        self.post.uri()
    }

    /// The region the calls are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The JSON request body for `texts` from `side` (see the [module docs](self)).
    pub fn request_body(side: Side, texts: &[String]) -> Value {
        serde_json::to_value(ApplyRequest::new(side, texts)).unwrap_or(Value::Null)
    }

    /// The post for one call: the JSON post with the SigV4 headers for `body`.
    fn signed(&self, body: &[u8]) -> Result<JsonPost, GuardrailError> {
        let uri = self.post.uri().to_string();
        // The signer traces the canonical request, which holds the session token: sign with
        // no subscriber.
        let signed = tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
            let identity = self.credentials.clone().into();
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(&self.region)
                .name(SIGNING_NAME)
                .time(SystemTime::now())
                .settings(SigningSettings::default())
                .build()
                .map_err(|e| e.to_string())?
                .into();
            let request = SignableRequest::new(
                "POST",
                uri.as_str(),
                std::iter::once(("content-type", "application/json")),
                SignableBody::Bytes(body),
            )
            .map_err(|e| e.to_string())?;
            let (instructions, _signature) = sign(request, &params)
                .map_err(|e| e.to_string())?
                .into_parts();
            Ok::<_, String>(instructions.into_parts().0)
        })
        .map_err(|e| GuardrailError::failed(format!("could not sign the Bedrock request: {e}")))?;
        let mut post = self.post.clone();
        for header in signed {
            let name = HeaderName::try_from(header.name()).map_err(|_| {
                GuardrailError::failed(format!(
                    "the signer produced an invalid header name '{}'",
                    header.name()
                ))
            })?;
            let mut value = HeaderValue::from_str(header.value()).map_err(|_| {
                GuardrailError::failed(format!(
                    "the signer produced an invalid {} header",
                    header.name()
                ))
            })?;
            value.set_sensitive(header.sensitive() || name == http::header::AUTHORIZATION);
            post = post.header(name, value);
        }
        Ok(post)
    }
}

impl fmt::Debug for BedrockGuardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockGuardrail")
            .field("endpoint", self.post.uri())
            .field("region", &self.region)
            .field("credentials", &self.source)
            .field("timeout", &self.post.get_timeout())
            .finish_non_exhaustive()
    }
}

impl Guardrail for BedrockGuardrail {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        let texts = input.texts();
        let request = ApplyRequest::new(input.side(), texts);
        if request.content.is_empty() {
            return Ok(Verdict::allow());
        }
        let body = serde_json::to_vec(&request).map_err(|e| {
            GuardrailError::failed(format!("could not encode the Bedrock request: {e}"))
        })?;
        let post = self.signed(&body)?;
        let answer = self
            .client
            .post_json(&post, Bytes::from(body))
            .await
            .map_err(|e| scrub(e, &self.secrets))?;
        interpret(answer, texts).map_err(|e| scrub(e, &self.secrets))
    }

    fn provider(&self) -> &str {
        "bedrock"
    }

    /// Only the texts it is given.
    fn reads_request_body(&self) -> bool {
        false
    }

    /// Nor the request's headers.
    fn reads_request_headers(&self) -> bool {
        false
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn required(value: Option<String>, key: &str) -> Result<String, ConfigError> {
    non_empty(value).ok_or_else(|| ConfigError::new(key, "is required"))
}

/// `DRAFT` or a number from 1 with at most 8 digits (the API's pattern).
fn valid_version(version: &str) -> bool {
    version == "DRAFT"
        || (!version.is_empty()
            && version.len() <= 8
            && !version.starts_with('0')
            && version.bytes().all(|b| b.is_ascii_digit()))
}

/// The credentials, from the config or else the environment, as a pair.
fn credentials(
    key_id: Option<String>,
    secret: Option<String>,
    token: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Credentials, CredentialSource, Vec<String>), ConfigError> {
    let (key_id, secret, token, source) = match (key_id, secret) {
        (Some(key_id), Some(secret)) => (key_id, secret, token, CredentialSource::Config),
        (Some(_), None) => {
            return Err(ConfigError::new(
                "aws_secret_access_key",
                "is required with aws_access_key_id",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "aws_access_key_id",
                "is required with aws_secret_access_key",
            ));
        }
        (None, None) => {
            if token.is_some() {
                return Err(ConfigError::new(
                    "aws_session_token",
                    "is set without aws_access_key_id and aws_secret_access_key",
                ));
            }
            match (
                env_var(env, "AWS_ACCESS_KEY_ID"),
                env_var(env, "AWS_SECRET_ACCESS_KEY"),
            ) {
                (Some(key_id), Some(secret)) => (
                    key_id,
                    secret,
                    env_var(env, "AWS_SESSION_TOKEN"),
                    CredentialSource::Environment,
                ),
                (Some(_), None) => {
                    return Err(ConfigError::new(
                        "aws_secret_access_key",
                        "is required: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        "aws_access_key_id",
                        "is required: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
                    ));
                }
                (None, None) => {
                    return Err(ConfigError::new(
                        "aws_access_key_id",
                        "is required: no AWS credentials (set aws_access_key_id and \
                         aws_secret_access_key, or the AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY environment variables)",
                    ));
                }
            }
        }
    };
    for (key, value) in [
        ("aws_access_key_id", Some(&key_id)),
        ("aws_secret_access_key", Some(&secret)),
        ("aws_session_token", token.as_ref()),
    ] {
        if value
            .is_some_and(|v| HeaderValue::from_str(v).is_err() || v.contains(char::is_whitespace))
        {
            return Err(ConfigError::new(
                key,
                "holds characters no AWS credential has (whitespace or control characters)",
            ));
        }
    }
    let mut secrets = vec![key_id.clone(), secret.clone()];
    secrets.extend(token.clone());
    let credentials = Credentials::new(key_id, secret, token, None, "guardrail-config");
    Ok((credentials, source, secrets))
}

/// The `ApplyGuardrail` body, borrowing the texts. Empty texts are not sent.
#[derive(Serialize)]
struct ApplyRequest<'a> {
    source: &'static str,
    content: Vec<ContentBlock<'a>>,
}

#[derive(Serialize)]
struct ContentBlock<'a> {
    text: TextBlock<'a>,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    text: &'a str,
}

impl<'a> ApplyRequest<'a> {
    fn new(side: Side, texts: &'a [String]) -> Self {
        ApplyRequest {
            source: match side {
                Side::Request => "INPUT",
                Side::Response => "OUTPUT",
            },
            content: texts
                .iter()
                .filter(|t| !t.is_empty())
                .map(|text| ContentBlock {
                    text: TextBlock { text },
                })
                .collect(),
        }
    }
}

/// What the assessments say.
#[derive(Debug, Default)]
struct Findings {
    blocked: bool,
    anonymized: bool,
    /// Anonymized entities per type (PII) or name (regexes).
    masked: BTreeMap<String, u64>,
}

/// Walks every assessment for `action` values; counts anonymized PII entities and regexes.
fn findings(assessments: &[Value]) -> Findings {
    fn walk(value: &Value, out: &mut Findings) {
        match value {
            Value::Object(map) => {
                match map.get("action").and_then(Value::as_str) {
                    Some("BLOCKED") => out.blocked = true,
                    Some("ANONYMIZED") => out.anonymized = true,
                    _ => {}
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Findings::default();
    for assessment in assessments {
        walk(assessment, &mut out);
        let Some(sensitive) = assessment.get("sensitiveInformationPolicy") else {
            continue;
        };
        for (list, label) in [("piiEntities", "type"), ("regexes", "name")] {
            for entry in sensitive
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if entry.get("action").and_then(Value::as_str) == Some("ANONYMIZED") {
                    let label = entry
                        .get(label)
                        .and_then(Value::as_str)
                        .unwrap_or(list)
                        .to_owned();
                    *out.masked.entry(label).or_default() += 1;
                }
            }
        }
    }
    out
}

/// The answer as logged: every `match` and `regex` value replaced by `[REDACTED]`.
fn redact_matches(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if (key == "match" || key == "regex") && !v.is_null() {
                    *v = Value::String(REDACTED.to_owned());
                } else {
                    redact_matches(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_matches),
        _ => {}
    }
}

/// The texts of `outputs`, in order.
fn output_texts(answer: &Value) -> Result<Vec<String>, GuardrailError> {
    let outputs = match answer.get("outputs") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(outputs)) => outputs,
        Some(other) => {
            return Err(GuardrailError::failed(format!(
                "Bedrock's `outputs` is {}, not an array",
                kind_of(other)
            )));
        }
    };
    outputs
        .iter()
        .map(|o| match o.get("text") {
            Some(Value::String(text)) => Ok(text.clone()),
            None | Some(Value::Null) => Ok(String::new()),
            Some(other) => Err(GuardrailError::failed(format!(
                "a Bedrock output's `text` is {}, not a string",
                kind_of(other)
            ))),
        })
        .collect()
}

/// Turns Bedrock's answer into a verdict for `texts` (of which the non-empty ones were sent).
fn interpret(mut answer: Value, texts: &[String]) -> Result<Verdict, GuardrailError> {
    if !answer.is_object() {
        return Err(GuardrailError::failed(format!(
            "Bedrock answered {}, not a JSON object",
            kind_of(&answer)
        )));
    }
    let action = match answer.get("action") {
        Some(Value::String(action)) => action.clone(),
        None | Some(Value::Null) => {
            return Err(GuardrailError::failed(
                "Bedrock's answer has no `action` (expected NONE or GUARDRAIL_INTERVENED)",
            ));
        }
        Some(other) => {
            return Err(GuardrailError::failed(format!(
                "Bedrock's `action` is {}, not a string",
                kind_of(other)
            )));
        }
    };
    let assessments = match answer.get("assessments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            return Err(GuardrailError::failed(format!(
                "Bedrock's `assessments` is {}, not an array",
                kind_of(other)
            )));
        }
    };
    let outputs = output_texts(&answer)?;
    redact_matches(&mut answer);
    match action.as_str() {
        "NONE" => Ok(Verdict::allow().with_detail(answer)),
        "GUARDRAIL_INTERVENED" => {
            let found = findings(&assessments);
            if found.blocked || !found.anonymized {
                let said = outputs
                    .iter()
                    .map(|t| t.trim())
                    .filter(|t| !t.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                let message = if said.is_empty() {
                    BLOCK_MESSAGE.to_owned()
                } else {
                    format!("{BLOCK_MESSAGE}: {said}")
                };
                return Ok(Verdict::block(message).with_detail(answer));
            }
            let sent = texts.iter().filter(|t| !t.is_empty()).count();
            if outputs.len() != sent {
                return Err(GuardrailError::failed(format!(
                    "Bedrock anonymized the content but returned {} outputs for {sent} texts sent; \
                     the mask cannot be applied",
                    outputs.len()
                )));
            }
            let mut outputs = outputs.into_iter();
            let masked: Vec<String> = texts
                .iter()
                .map(|t| {
                    if t.is_empty() {
                        String::new()
                    } else {
                        outputs.next().unwrap_or_default()
                    }
                })
                .collect();
            let verdict = if masked == texts {
                Verdict::allow()
            } else {
                Verdict::rewrite(masked)
            };
            Ok(verdict
                .with_detail(answer)
                .with_masked_entity_count(found.masked))
        }
        other => Err(GuardrailError::failed(format!(
            "Bedrock answered an unknown action '{other}' (expected NONE or GUARDRAIL_INTERVENED)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardrail_tower_core::Decision;
    use serde_json::json;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn build(
        config: BedrockGuardrailConfig,
        vars: &'static [(&'static str, &'static str)],
    ) -> Result<BedrockGuardrail, ConfigError> {
        BedrockGuardrail::with_client_and_env(config, HttpClient::new(), &env(vars))
    }

    fn keyed() -> BedrockGuardrailConfig {
        let mut config = BedrockGuardrailConfig::new("gr-1", "1");
        config.aws_access_key_id = Some("AKIDCONFIG".into());
        config.aws_secret_access_key = Some("config-secret".into());
        config
    }

    #[test]
    fn the_endpoint_follows_region_and_override() {
        let g = build(keyed(), &[("AWS_REGION", "eu-central-1")]).unwrap();
        assert_eq!(
            g.endpoint().to_string(),
            "https://bedrock-runtime.eu-central-1.amazonaws.com/guardrail/gr-1/version/1/apply"
        );
        let g = build(keyed(), &[("AWS_DEFAULT_REGION", "ap-south-1")]).unwrap();
        assert_eq!(g.region(), "ap-south-1");
        let g = build(keyed(), &[]).unwrap();
        assert_eq!(g.region(), DEFAULT_REGION);
        let mut config = keyed();
        config.aws_region_name = Some("us-east-2".into());
        config.aws_bedrock_runtime_endpoint = Some("http://vpce.local:8080/proxy/".into());
        config.guardrail_identifier =
            Some("arn:aws:bedrock:us-east-2:123456789012:guardrail/abc".into());
        let g = build(config, &[("AWS_REGION", "eu-west-1")]).unwrap();
        assert_eq!(g.region(), "us-east-2");
        assert_eq!(
            g.endpoint().to_string(),
            "http://vpce.local:8080/proxy/guardrail/arn%3Aaws%3Abedrock%3Aus-east-2%3A123456789012%3Aguardrail%2Fabc/version/1/apply"
        );
    }

    #[test]
    fn credentials_come_in_pairs_from_one_place() {
        let env_keys: &[(&str, &str)] = &[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-token"),
        ];
        let g = build(BedrockGuardrailConfig::new("g", "DRAFT"), env_keys).unwrap();
        assert_eq!(g.source, CredentialSource::Environment);
        assert_eq!(g.secrets, ["AKIDENV", "env-secret", "env-token"]);
        // Config keys win, and the environment's session token is not mixed in.
        let g = build(keyed(), env_keys).unwrap();
        assert_eq!(g.source, CredentialSource::Config);
        assert_eq!(g.secrets, ["AKIDCONFIG", "config-secret"]);

        let field = |config, vars| build(config, vars).unwrap_err().field().to_owned();
        assert_eq!(
            field(BedrockGuardrailConfig::new("g", "1"), &[]),
            "aws_access_key_id"
        );
        let mut half = BedrockGuardrailConfig::new("g", "1");
        half.aws_access_key_id = Some("AKID".into());
        assert_eq!(field(half, &[]), "aws_secret_access_key");
        assert_eq!(
            field(
                BedrockGuardrailConfig::new("g", "1"),
                &[("AWS_ACCESS_KEY_ID", "AKID")]
            ),
            "aws_secret_access_key"
        );
        let mut token_only = BedrockGuardrailConfig::new("g", "1");
        token_only.aws_session_token = Some("t".into());
        assert_eq!(field(token_only, env_keys), "aws_session_token");
        let mut bad = keyed();
        bad.aws_secret_access_key = Some("line\nbreak".into());
        assert_eq!(field(bad, &[]), "aws_secret_access_key");
    }

    #[test]
    fn required_and_unsupported_keys_are_named() {
        let field = |value: Value| {
            let config: BedrockGuardrailConfig = serde_json::from_value(value).unwrap();
            build(
                config,
                &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")],
            )
            .unwrap_err()
            .field()
            .to_owned()
        };
        assert_eq!(
            field(json!({"guardrailVersion": "1"})),
            "guardrailIdentifier"
        );
        assert_eq!(
            field(json!({"guardrailIdentifier": "g"})),
            "guardrailVersion"
        );
        for bad in ["v1", "0", "draft", "123456789", ""] {
            assert_eq!(
                field(json!({"guardrailIdentifier": "g", "guardrailVersion": bad})),
                "guardrailVersion",
                "{bad}"
            );
        }
        assert_eq!(
            field(json!({"guardrailIdentifier": "g", "guardrailVersion": 1, "aws_role_name": "r"})),
            "aws_role_name"
        );
        assert_eq!(
            field(
                json!({"guardrailIdentifier": "g", "guardrailVersion": 1, "aws_region_name": "us east"})
            ),
            "aws_region_name"
        );
        assert_eq!(
            field(
                json!({"guardrailIdentifier": "g", "guardrailVersion": 1, "aws_bedrock_runtime_endpoint": "ftp://x"})
            ),
            "aws_bedrock_runtime_endpoint"
        );
        assert_eq!(
            field(json!({"guardrailIdentifier": "g", "guardrailVersion": 1, "timeout": 0})),
            "timeout"
        );
        // A numeric version from YAML is accepted.
        let config: BedrockGuardrailConfig =
            serde_json::from_value(json!({"guardrailIdentifier": "g", "guardrailVersion": 12}))
                .unwrap();
        assert_eq!(config.guardrail_version.as_deref(), Some("12"));
    }

    #[test]
    fn debug_never_shows_credentials() {
        let mut config = keyed();
        config.aws_session_token = Some("the-token".into());
        let shown = format!("{config:?}");
        let g = build(config, &[]).unwrap();
        let shown = format!("{shown} {g:?}");
        for secret in ["AKIDCONFIG", "config-secret", "the-token"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("Config"), "{shown}");
    }

    fn texts(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn answers_are_interpreted() {
        let input = texts(&["hello", "", "mail me at a@b.c"]);
        let v = interpret(json!({"action": "NONE", "outputs": []}), &input).unwrap();
        assert_eq!(v.decision(), &Decision::Allow);

        let blocked = json!({
            "action": "GUARDRAIL_INTERVENED",
            "outputs": [{"text": "Sorry, I cannot help with that."}],
            "assessments": [{"topicPolicy": {"topics": [{"name": "Finance", "type": "DENY", "action": "BLOCKED"}]},
                             "wordPolicy": {"customWords": [{"match": "secretword", "action": "BLOCKED"}]}}]
        });
        let v = interpret(blocked, &input).unwrap();
        assert_eq!(
            v.decision(),
            &Decision::Block {
                message: "Violated guardrail policy: Sorry, I cannot help with that.".into()
            }
        );
        let detail = v.detail().unwrap().to_string();
        assert!(!detail.contains("secretword"), "{detail}");
        assert!(detail.contains("[REDACTED]"), "{detail}");

        let masked = json!({
            "action": "GUARDRAIL_INTERVENED",
            "outputs": [{"text": "hello"}, {"text": "mail me at {EMAIL}"}],
            "assessments": [{"sensitiveInformationPolicy": {
                "piiEntities": [{"type": "EMAIL", "match": "a@b.c", "action": "ANONYMIZED"}],
                "regexes": [{"name": "ticket", "regex": "T-\\d+", "match": "T-1", "action": "ANONYMIZED"}]
            }}]
        });
        let v = interpret(masked, &input).unwrap();
        assert_eq!(
            v.decision(),
            &Decision::Rewrite {
                texts: texts(&["hello", "", "mail me at {EMAIL}"])
            }
        );
        assert_eq!(
            v.masked_entity_count().unwrap(),
            &BTreeMap::from([("EMAIL".to_owned(), 1), ("ticket".to_owned(), 1)])
        );
        assert!(!v.detail().unwrap().to_string().contains("a@b.c"));

        // BLOCKED wins over ANONYMIZED; an unexplained intervention blocks.
        let mixed = json!({"action": "GUARDRAIL_INTERVENED", "outputs": [{"text": "no"}],
            "assessments": [{"sensitiveInformationPolicy": {"piiEntities": [
                {"type": "EMAIL", "action": "ANONYMIZED"}, {"type": "US_SOCIAL_SECURITY_NUMBER", "action": "BLOCKED"}]}}]});
        assert!(matches!(
            interpret(mixed, &input).unwrap().decision(),
            Decision::Block { .. }
        ));
        let bare = json!({"action": "GUARDRAIL_INTERVENED"});
        assert_eq!(
            interpret(bare, &input).unwrap().decision(),
            &Decision::Block {
                message: BLOCK_MESSAGE.into()
            }
        );

        // A mask that does not line up with the texts sent fails.
        let misaligned = json!({"action": "GUARDRAIL_INTERVENED", "outputs": [{"text": "x"}],
            "assessments": [{"sensitiveInformationPolicy": {"piiEntities": [{"type": "EMAIL", "action": "ANONYMIZED"}]}}]});
        let err = interpret(misaligned, &input).unwrap_err();
        assert!(err.message().contains("1 outputs for 2 texts"), "{err}");

        for bad in [
            json!([]),
            json!({}),
            json!({"action": 3}),
            json!({"action": "MAYBE"}),
            json!({"action": "NONE", "assessments": {}}),
            json!({"action": "GUARDRAIL_INTERVENED", "outputs": "x"}),
            json!({"Output": {"__type": "com.amazon.coral.service#UnknownOperationException"}}),
        ] {
            assert!(interpret(bad.clone(), &input).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_body_skips_empty_texts() {
        assert_eq!(
            BedrockGuardrail::request_body(Side::Response, &texts(&["a", "", "b"])),
            json!({"source": "OUTPUT", "content": [{"text": {"text": "a"}}, {"text": {"text": "b"}}]})
        );
        assert_eq!(
            BedrockGuardrail::request_body(Side::Request, &texts(&["x"]))["source"],
            "INPUT"
        );
    }
}
