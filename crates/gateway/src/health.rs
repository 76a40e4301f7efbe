//! The health probes, at LiteLLM's paths. They answer without a key (they are health probes)
//! and name nothing but guardrails and statuses: no URL, host or error detail.
//!
//! - `GET /health/liveliness` (and `/health/liveness`): `"I'm alive!"`, as LiteLLM.
//! - `GET /health/readiness`: LiteLLM's readiness object (`status`, `db`, `cache`,
//!   `litellm_version`, `success_callbacks`), plus `spend_logs` (the writer's queue and
//!   counters) and `guardrails` (each guardrail's name and whether its service answers).
//!   `db` is `connected` when a cheap read of the spend-log database (a primary-key lookup)
//!   answers within [`DB_TIMEOUT`], `disconnected` when it does not (the answer is then a
//!   503, `status: unhealthy`), and `Not connected` for a JSON lines spend log (no
//!   database). A guardrail's `status` is `reachable` when a TCP connection to each of its
//!   services opens within [`PROBE_TIMEOUT`], `unreachable` when one does not (`status:
//!   degraded`, still a 200: requests keep flowing under each guardrail's
//!   `unreachable_fallback`), and `local` for a guardrail that calls no service.
//!
//! Each answer is cached (a database check for [`DB_TTL`], a service check for
//! [`PROBE_TTL`]; a failed one for [`FAILED_TTL`]) and checks of one target never overlap:
//! a storm of probes causes at most one database read and one connection per service per
//! period.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use guardrail_tower_spend_log::{SpendLogFilter, SpendLogHandle, SpendLogStore};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The longest the database check may take.
pub const DB_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a database answer is reused.
pub const DB_TTL: Duration = Duration::from_secs(5);
/// The longest a guardrail service's TCP connect may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a guardrail service's answer is reused.
pub const PROBE_TTL: Duration = Duration::from_secs(10);
/// How long a failed check (database or service) is reused.
pub const FAILED_TTL: Duration = Duration::from_secs(1);

/// A service a guardrail calls: where to open a TCP connection. Never shown to a client.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ServiceAddr {
    host: String,
    port: u16,
}

impl std::fmt::Debug for ServiceAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The host and port of an `http(s)://` URL (user-info dropped, default ports filled in).
fn addr_of(url: &str) -> Option<ServiceAddr> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port.parse().ok()?),
            None => (authority.to_owned(), default_port),
        }
    };
    (!host.is_empty()).then_some(ServiceAddr { host, port })
}

/// The services a guardrail of type `kind` with (resolved) `params` calls, with the defaults
/// and environment variables its type falls back to.
pub(crate) fn service_addrs(
    kind: &str,
    params: &Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<ServiceAddr> {
    use guardrail_tower_guardrails::{aim, bedrock, lakera, openai_moderation, presidio};
    // A parameter, else the first of `vars` set, read as the guardrails read them: a blank
    // parameter and an empty variable count as unset.
    let param = |key: &str| {
        params
            .get(key)
            .and_then(Value::as_str)
            .filter(|v| !v.trim().is_empty())
            .map(str::to_owned)
    };
    let or_env = |key: &str, vars: &[&str]| {
        param(key).or_else(|| vars.iter().find_map(|v| env(v).filter(|v| !v.is_empty())))
    };
    let urls: Vec<Option<String>> = match kind {
        "litellm_content_filter" => Vec::new(),
        "generic_guardrail_api" | "azure/text_moderations" | "azure/prompt_shield" => {
            vec![param("api_base")]
        }
        "openai_moderation" => {
            vec![Some(param("api_base").unwrap_or_else(|| {
                openai_moderation::DEFAULT_API_BASE.into()
            }))]
        }
        "presidio" => vec![
            or_env(
                "presidio_analyzer_api_base",
                &[presidio::ANALYZER_API_BASE_ENV],
            ),
            or_env(
                "presidio_anonymizer_api_base",
                &[presidio::ANONYMIZER_API_BASE_ENV],
            ),
        ],
        "lakera_v2" => vec![Some(
            or_env("api_base", &[lakera::API_BASE_ENV])
                .unwrap_or_else(|| lakera::DEFAULT_API_BASE.into()),
        )],
        "aim" => vec![Some(
            or_env("api_base", &[aim::API_BASE_ENV])
                .unwrap_or_else(|| aim::DEFAULT_API_BASE.into()),
        )],
        "bedrock" => vec![Some(
            or_env("aws_bedrock_runtime_endpoint", &[bedrock::ENDPOINT_ENV]).unwrap_or_else(|| {
                let region = or_env("aws_region_name", &bedrock::REGION_ENV)
                    .unwrap_or_else(|| bedrock::DEFAULT_REGION.into());
                bedrock::regional_endpoint(&region)
            }),
        )],
        _ => Vec::new(),
    };
    let mut out: Vec<ServiceAddr> = urls
        .into_iter()
        .flatten()
        .filter_map(|u| addr_of(&u))
        .collect();
    out.dedup();
    out
}

/// A check's answer, kept for a while.
#[derive(Debug, Clone, Copy)]
struct Cached {
    at: Instant,
    ok: bool,
}

impl Cached {
    fn fresh(&self, ttl: Duration) -> bool {
        self.at.elapsed() < if self.ok { ttl } else { FAILED_TTL }
    }
}

/// One guardrail's services and their last check.
struct GuardrailProbe {
    name: String,
    services: Vec<ServiceAddr>,
    last: Mutex<Option<Cached>>,
}

impl GuardrailProbe {
    /// `None` for a guardrail that calls no service.
    async fn reachable(&self) -> Option<bool> {
        if self.services.is_empty() {
            return None;
        }
        // Held across the check: concurrent probes wait for this one and reuse its answer.
        let mut last = self.last.lock().await;
        if let Some(c) = *last {
            if c.fresh(PROBE_TTL) {
                return Some(c.ok);
            }
        }
        let checks = self.services.iter().map(|s| async move {
            matches!(
                tokio::time::timeout(
                    PROBE_TIMEOUT,
                    tokio::net::TcpStream::connect((s.host.as_str(), s.port))
                )
                .await,
                Ok(Ok(_))
            )
        });
        let ok = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .all(|ok| ok);
        if !ok {
            tracing::warn!(
                guardrail = %self.name,
                "readiness: a service of this guardrail did not accept a connection within {PROBE_TIMEOUT:?}"
            );
        }
        *last = Some(Cached {
            at: Instant::now(),
            ok,
        });
        Some(ok)
    }
}

/// What the spend log is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// SQLite (a file, or the temporary file of a config without `spend_logs`).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// A JSON lines file: no database.
    Jsonl,
}

impl Backend {
    fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Jsonl => "jsonl",
        }
    }
}

struct Probes {
    backend: Backend,
    store: Arc<dyn SpendLogStore>,
    writer: SpendLogHandle,
    db: Mutex<Option<Cached>>,
    guardrails: Vec<GuardrailProbe>,
}

impl Probes {
    /// `Some(connected)` for a database, `None` for a JSON lines file.
    async fn db_connected(&self) -> Option<bool> {
        if self.backend == Backend::Jsonl {
            return None;
        }
        let mut last = self.db.lock().await;
        if let Some(c) = *last {
            if c.fresh(DB_TTL) {
                return Some(c.ok);
            }
        }
        // A lookup by primary key of an id no request has: one index probe.
        let filter = SpendLogFilter::new()
            .request_id("health-readiness-probe")
            .limit(1);
        let ok = match tokio::time::timeout(DB_TIMEOUT, self.store.query(&filter)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the spend-log database did not answer");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "readiness: the spend-log database did not answer within {DB_TIMEOUT:?}"
                );
                false
            }
        };
        *last = Some(Cached {
            at: Instant::now(),
            ok,
        });
        Some(ok)
    }
}

/// The health routes: `/health/liveliness`, `/health/liveness` and `/health/readiness`.
pub(crate) fn router(
    backend: Backend,
    store: Arc<dyn SpendLogStore>,
    writer: SpendLogHandle,
    guardrails: Vec<(String, Vec<ServiceAddr>)>,
) -> Router {
    let probes = Arc::new(Probes {
        backend,
        store,
        writer,
        db: Mutex::new(None),
        guardrails: guardrails
            .into_iter()
            .map(|(name, services)| GuardrailProbe {
                name,
                services,
                last: Mutex::new(None),
            })
            .collect(),
    });
    Router::new()
        .route("/health/readiness", get(readiness))
        .route("/health/liveliness", get(liveliness))
        .route("/health/liveness", get(liveliness))
        .with_state(probes)
}

/// `GET /health/liveliness`: LiteLLM's answer.
async fn liveliness() -> Response {
    axum::Json("I'm alive!").into_response()
}

async fn readiness(State(probes): State<Arc<Probes>>) -> Response {
    let (db, guardrails) = tokio::join!(
        probes.db_connected(),
        futures_util::future::join_all(probes.guardrails.iter().map(|g| async move {
            let status = match g.reachable().await {
                None => "local",
                Some(true) => "reachable",
                Some(false) => "unreachable",
            };
            json!({"guardrail_name": g.name, "status": status})
        }))
    );
    let stats = probes.writer.stats();
    let writer_open = !probes.writer.is_closed();
    let db_ok = db.unwrap_or(true) && writer_open;
    let degraded = guardrails.iter().any(|g| g["status"] == "unreachable");
    let status = match (db_ok, degraded) {
        (false, _) => "unhealthy",
        (true, true) => "degraded",
        (true, false) => "healthy",
    };
    let body = json!({
        "status": status,
        "db": match db {
            Some(true) => "connected",
            Some(false) => "disconnected",
            None => "Not connected",
        },
        "cache": null,
        "litellm_version": env!("CARGO_PKG_VERSION"),
        "success_callbacks": [],
        "spend_logs": {
            "backend": probes.backend.as_str(),
            "writer": if writer_open { "running" } else { "stopped" },
            "queue_depth": stats.queue_depth,
            "pending": stats.pending,
            "written": stats.written,
            "retried": stats.retried,
            "failed_writes": stats.failed_writes,
            "dead_lettered": stats.dead_lettered,
            "dropped": stats.dropped,
        },
        "guardrails": guardrails,
    });
    let code = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(host: &str, port: u16) -> ServiceAddr {
        ServiceAddr {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            addr_of("https://guard.example/v1"),
            Some(addr("guard.example", 443))
        );
        assert_eq!(
            addr_of("http://u:p@10.0.0.1:8080/x?y"),
            Some(addr("10.0.0.1", 8080))
        );
        assert_eq!(addr_of("http://[::1]:9/"), Some(addr("::1", 9)));
        assert_eq!(addr_of("http://host"), Some(addr("host", 80)));
        assert_eq!(addr_of("ftp://host"), None);
        assert_eq!(addr_of("not a url"), None);
    }

    #[test]
    fn provider_defaults_and_environment() {
        let env = |name: &str| (name == "AWS_REGION").then(|| "eu-central-1".to_owned());
        assert_eq!(
            service_addrs("bedrock", &json!({}), &env),
            [addr("bedrock-runtime.eu-central-1.amazonaws.com", 443)]
        );
        assert_eq!(
            service_addrs("lakera_v2", &json!({}), &env),
            [addr("api.lakera.ai", 443)]
        );
        assert_eq!(
            service_addrs(
                "presidio",
                &json!({"presidio_analyzer_api_base": "http://a:1", "presidio_anonymizer_api_base": "http://b:2"}),
                &env
            ),
            [addr("a", 1), addr("b", 2)]
        );
        assert!(service_addrs("litellm_content_filter", &json!({}), &env).is_empty());

        // The endpoint the Bedrock guardrail calls when AWS_BEDROCK_RUNTIME_ENDPOINT is set
        // (the listing named the regional endpoint instead); an empty variable is unset.
        let env = |name: &str| match name {
            "AWS_BEDROCK_RUNTIME_ENDPOINT" => {
                Some("https://vpce-1.bedrock.example:8443".to_owned())
            }
            "AWS_REGION" => Some(String::new()),
            "AWS_DEFAULT_REGION" => Some("ap-south-1".to_owned()),
            "AIM_API_BASE" => Some("http://aim.internal:9000".to_owned()),
            _ => None,
        };
        assert_eq!(
            service_addrs("bedrock", &json!({}), &env),
            [addr("vpce-1.bedrock.example", 8443)]
        );
        assert_eq!(
            service_addrs(
                "bedrock",
                &json!({"aws_bedrock_runtime_endpoint": ""}),
                &|n: &str| { env(n).filter(|_| n != "AWS_BEDROCK_RUNTIME_ENDPOINT") }
            ),
            [addr("bedrock-runtime.ap-south-1.amazonaws.com", 443)]
        );
        assert_eq!(
            service_addrs("aim", &json!({}), &env),
            [addr("aim.internal", 9000)]
        );
    }
}
