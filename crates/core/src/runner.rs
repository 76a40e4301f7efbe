//! Configured guardrails and the one runner every layer uses: gate, run in order (masking
//! composes), apply fallbacks, and log one entry per run.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::time::Instant;

use crate::guardrail::{BoxFuture, ErasedGuardrail, GuardrailError, GuardrailInput, RequestMeta};
use crate::log::{
    GuardrailAction, GuardrailLog, GuardrailLogEntry, GuardrailStatus, epoch_seconds,
};
use crate::text::Side;
use crate::{
    Decision, Error, Guardrail, GuardrailMode, GuardrailModes, GuardrailSelection, GuardrailSpec,
    Verdict,
};

/// What to do when a guardrail cannot give an answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// Fail the request (or end the stream) with an error naming the guardrail.
    #[default]
    FailClosed,
    /// Let the text through unchanged, record `guardrail_failed_to_respond`, and log an error.
    FailOpen,
}

impl Fallback {
    /// `fail_closed` or `fail_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::FailClosed => "fail_closed",
            Fallback::FailOpen => "fail_open",
        }
    }
}

impl FromStr for Fallback {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail_closed" => Ok(Fallback::FailClosed),
            "fail_open" => Ok(Fallback::FailOpen),
            other => Err(format!(
                "unknown fallback '{other}' (expected fail_closed or fail_open)"
            )),
        }
    }
}

/// How a streamed response is checked by a post-call guardrail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamPolicy {
    /// For guardrails with a [`Guardrail::span_matcher`]: hold back only as many trailing
    /// characters as the longest match could still need; everything else flows at once, and
    /// nothing a guardrail would block reaches the client. The default for such guardrails.
    Exact,
    /// Hold events back until the text they carry was checked; check when `chars` new
    /// characters have arrived (with `overlap` characters of earlier context) and at the end.
    Window {
        /// New characters per check.
        chars: usize,
        /// Characters of earlier text included in each check for context.
        overlap: usize,
    },
    /// Let events flow at once; check the whole text once at the end, holding back the final
    /// events (finish reason, usage, the terminal event) until it passes.
    EndOfStream,
    /// Hold the whole stream until one check of the whole text passes.
    BufferAll {
        /// The most bytes held; beyond it, `on_overflow` decides.
        max_bytes: usize,
        /// `FailOpen` releases what is held and continues with `EndOfStream`; `FailClosed` ends
        /// the stream with an error.
        on_overflow: Fallback,
    },
}

impl StreamPolicy {
    /// The default window: 200 characters with 50 of overlap.
    pub const DEFAULT_WINDOW: StreamPolicy = StreamPolicy::Window {
        chars: 200,
        overlap: 50,
    };
}

/// A guardrail with its name, modes and failure handling: what a config entry describes.
#[derive(Clone)]
pub struct ConfiguredGuardrail {
    spec: GuardrailSpec,
    guardrail: Arc<dyn ErasedGuardrail>,
    on_unreachable: Fallback,
    on_error: Fallback,
    on_media: Fallback,
    timeout: Option<Duration>,
    stream_policy: Option<StreamPolicy>,
    monitor: bool,
}

impl ConfiguredGuardrail {
    /// `guardrail` under `name`, running in `modes`, not `default_on`, failing closed, with no
    /// timeout of its own.
    ///
    /// ```
    /// use guardrail_tower_core::{guardrail_fn, ConfiguredGuardrail, Fallback, GuardrailMode, Verdict};
    /// use std::time::Duration;
    ///
    /// let g = ConfiguredGuardrail::new(
    ///     "allow-all",
    ///     [GuardrailMode::PreCall, GuardrailMode::PostCall],
    ///     guardrail_fn(|_| async { Ok(Verdict::allow()) }),
    /// )
    /// .default_on(true)
    /// .timeout(Duration::from_secs(2))
    /// .unreachable_fallback(Fallback::FailOpen);
    /// assert_eq!(g.name(), "allow-all");
    /// ```
    pub fn new(
        name: impl Into<Arc<str>>,
        modes: impl Into<GuardrailModes>,
        guardrail: impl Guardrail,
    ) -> Self {
        ConfiguredGuardrail {
            spec: GuardrailSpec::new(name, modes, false),
            guardrail: Arc::new(guardrail),
            on_unreachable: Fallback::FailClosed,
            on_error: Fallback::FailClosed,
            on_media: Fallback::FailClosed,
            timeout: None,
            stream_policy: None,
            monitor: false,
        }
    }

    /// Whether it runs without being selected.
    pub fn default_on(mut self, default_on: bool) -> Self {
        self.spec = GuardrailSpec::new(self.spec.name_arc().clone(), self.spec.modes(), default_on);
        self
    }

    /// What to do when the guardrail is unreachable (connect/DNS/IO errors, timeouts,
    /// 502/503/504). Default: fail closed.
    pub fn unreachable_fallback(mut self, fallback: Fallback) -> Self {
        self.on_unreachable = fallback;
        self
    }

    /// What to do on any other guardrail error (bad answers, 4xx). Default: fail closed.
    pub fn error_fallback(mut self, fallback: Fallback) -> Self {
        self.on_error = fallback;
        self
    }

    /// What to do with a request that holds images, audio or files
    /// ([`ParsedRequest::media_field`](crate::ParsedRequest::media_field)) when the guardrail
    /// cannot read them ([`Guardrail::reads_media`] is `false`) and applies to it before or
    /// beside the call. Default: fail closed, a 400 `unreadable_content` naming the part and
    /// the guardrail, since the model would read what the guardrail never saw (the words of a
    /// forbidden request in a screenshot or a PDF). `FailOpen` checks the request's texts and
    /// lets the media pass unchecked. A guardrail in [monitor](Self::monitor) mode never
    /// refuses.
    pub fn media_fallback(mut self, fallback: Fallback) -> Self {
        self.on_media = fallback;
        self
    }

    /// Whether images, audio or files may pass this guardrail on `side`: a request's
    /// ([`ParsedRequest::media_field`](crate::ParsedRequest::media_field)) when it reads them
    /// ([`Guardrail::reads_media`]), a response's (the images a request asks for,
    /// [`ParsedRequest::image_output_field`](crate::ParsedRequest::image_output_field)) never
    /// by reading; on either side when it lets them pass
    /// ([`media_fallback`](Self::media_fallback)) or only watches.
    pub fn passes_media(&self, side: Side) -> bool {
        (side == Side::Request && self.guardrail.reads_media())
            || self.on_media == Fallback::FailOpen
            || self.monitor
    }

    /// The longest a check may take; beyond it the guardrail counts as unreachable.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The streaming policy for this guardrail, overriding the layer's.
    pub fn stream_policy(mut self, policy: StreamPolicy) -> Self {
        self.stream_policy = Some(policy);
        self
    }

    /// Monitor mode (LiteLLM's `mode: logging_only`, or `monitor: true`): the guardrail runs
    /// where its modes say and its verdict is logged, but it never blocks or rewrites.
    ///
    /// A block, a rewrite or a failure is recorded (`guardrail_intervened` or
    /// `guardrail_failed_to_respond`, action `allow`, with what the guardrail said) and the text
    /// passes unchanged. Nothing waits for it: on the request it runs beside the call (the
    /// upstream is called at once and the response is not held), on a JSON response or a
    /// stream it checks the whole text once it has arrived, holding back nothing. It runs
    /// detached from the request (a task of its own, which needs a tokio runtime) and appends
    /// its entry when it finishes; the spend-log layer waits for it before writing the record.
    /// Give it a [`timeout`](Self::timeout) so a slow service cannot keep that record waiting.
    ///
    /// ```
    /// use guardrail_tower_core::{guardrail_fn, ConfiguredGuardrail, GuardrailMode, Verdict};
    ///
    /// let trial = ConfiguredGuardrail::new(
    ///     "new-policy",
    ///     GuardrailMode::PreCall,
    ///     guardrail_fn(|_| async { Ok(Verdict::block("would block")) }),
    /// )
    /// .monitor(true);
    /// assert!(trial.is_monitor());
    /// ```
    pub fn monitor(mut self, monitor: bool) -> Self {
        self.monitor = monitor;
        self
    }

    /// Whether the guardrail only watches (see [`monitor`](Self::monitor)).
    pub fn is_monitor(&self) -> bool {
        self.monitor
    }

    /// The spec.
    pub fn spec(&self) -> &GuardrailSpec {
        &self.spec
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.spec.name()
    }

    /// The provider.
    pub fn provider(&self) -> &str {
        self.guardrail.provider()
    }

    /// See [`Guardrail::span_matcher`].
    pub fn span_matcher(&self) -> Option<&dyn crate::SpanMatcher> {
        self.guardrail.span_matcher()
    }

    /// See [`Guardrail::reads_request_body`].
    pub fn reads_request_body(&self) -> bool {
        self.guardrail.reads_request_body()
    }

    /// See [`Guardrail::reads_request_headers`].
    pub fn reads_request_headers(&self) -> bool {
        self.guardrail.reads_request_headers()
    }

    /// The streaming policy set on this guardrail, if any.
    pub fn configured_stream_policy(&self) -> Option<StreamPolicy> {
        self.stream_policy
    }

    /// The fallback for this error.
    pub fn fallback_for(&self, error: &GuardrailError) -> Fallback {
        if error.is_unreachable() {
            self.on_unreachable
        } else {
            self.on_error
        }
    }

    /// Runs one check at once when the guardrail answers without waiting
    /// ([`Guardrail::check_now`]), and records when; `None` when it must be awaited
    /// ([`ConfiguredGuardrail::check`]).
    pub fn check_now(&self, input: &GuardrailInput) -> Option<Check> {
        let started_at = SystemTime::now();
        let start = Instant::now();
        let result = self.guardrail.check_now(input)?;
        Some(Check {
            result,
            started_at,
            duration: start.elapsed(),
        })
    }

    /// Runs one check (with the timeout), and records when.
    pub async fn check(&self, input: &GuardrailInput) -> Check {
        let started_at = SystemTime::now();
        let start = Instant::now();
        let fut = self.guardrail.check_boxed(input);
        let result = match self.timeout {
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(result) => result,
                Err(_) => Err(GuardrailError::timeout(limit)),
            },
            None => fut.await,
        };
        Check {
            result,
            started_at,
            duration: start.elapsed(),
        }
    }

    /// Interprets a finished check: the log entry, and what happens to the text.
    ///
    /// `input_len` is the number of texts checked; a rewrite with a different number is a
    /// guardrail error. For a [monitor](Self::monitor) guardrail the effect is always
    /// [`Effect::Allow`]: a block or a rewrite is logged as `guardrail_intervened` with action
    /// `allow`, a failure as `guardrail_failed_to_respond` with action `allow`.
    pub fn resolve(&self, mode: GuardrailMode, input_len: usize, check: Check) -> Resolved {
        let Check {
            result,
            started_at,
            duration,
        } = check;
        let result = result.and_then(|verdict| match verdict.decision() {
            Decision::Rewrite { texts } if texts.len() != input_len => {
                Err(GuardrailError::failed(format!(
                    "rewrite returned {} texts for {} inputs",
                    texts.len(),
                    input_len
                )))
            }
            _ => Ok(verdict),
        });
        let (status, action, response, masked, effect) = match result {
            Ok(verdict) => {
                let flagged = verdict.is_flagged();
                let (decision, detail, masked) = verdict.into_parts();
                match decision {
                    Decision::Allow => (
                        if flagged {
                            GuardrailStatus::GuardrailIntervened
                        } else {
                            GuardrailStatus::Success
                        },
                        GuardrailAction::Allow,
                        detail.unwrap_or(Value::Null),
                        masked,
                        Effect::Allow,
                    ),
                    Decision::Block { message } if self.monitor => {
                        tracing::info!(
                            guardrail = self.name(),
                            mode = mode.as_str(),
                            "monitor: the guardrail would have blocked; the text passed"
                        );
                        (
                            GuardrailStatus::GuardrailIntervened,
                            GuardrailAction::Allow,
                            detail.unwrap_or(Value::String(message)),
                            masked,
                            Effect::Allow,
                        )
                    }
                    Decision::Block { message } => (
                        GuardrailStatus::GuardrailIntervened,
                        GuardrailAction::Block,
                        detail.unwrap_or_else(|| Value::String(message.clone())),
                        masked,
                        Effect::Block(Error::guardrail_blocked(self.name(), message)),
                    ),
                    Decision::Rewrite { .. } if self.monitor => {
                        tracing::info!(
                            guardrail = self.name(),
                            mode = mode.as_str(),
                            "monitor: the guardrail would have rewritten the text; it passed unchanged"
                        );
                        (
                            GuardrailStatus::GuardrailIntervened,
                            GuardrailAction::Allow,
                            detail.unwrap_or(Value::Null),
                            masked,
                            Effect::Allow,
                        )
                    }
                    Decision::Rewrite { texts } => (
                        GuardrailStatus::GuardrailIntervened,
                        GuardrailAction::Mask,
                        detail.unwrap_or(Value::Null),
                        masked,
                        Effect::Rewrite(texts),
                    ),
                }
            }
            Err(error) => {
                // A monitor never blocks: its failures pass the text, like fail_open.
                let fallback = if self.monitor {
                    Fallback::FailOpen
                } else {
                    self.fallback_for(&error)
                };
                let response = serde_json::json!({
                    "error": error.to_string(),
                    "error_type": error_type(&error),
                    "unreachable": error.is_unreachable(),
                    "fallback": if self.monitor { "monitor" } else { fallback.as_str() },
                });
                match fallback {
                    Fallback::FailOpen => {
                        tracing::error!(
                            guardrail = self.name(),
                            mode = mode.as_str(),
                            error = %error,
                            "guardrail failed to respond; failing open (text passed unchecked)"
                        );
                        (
                            GuardrailStatus::GuardrailFailedToRespond,
                            GuardrailAction::Allow,
                            response,
                            None,
                            Effect::Allow,
                        )
                    }
                    Fallback::FailClosed => {
                        tracing::error!(
                            guardrail = self.name(),
                            mode = mode.as_str(),
                            error = %error,
                            "guardrail failed to respond; failing closed"
                        );
                        // The detail (a service's URL, status and answer) went to the log
                        // above and goes to the guardrail's entry; the client's error names
                        // the guardrail only.
                        let err = if error.is_unreachable() {
                            Error::guardrail_unreachable(self.name())
                        } else {
                            Error::guardrail_failed(self.name(), "it could not give a verdict")
                        };
                        (
                            GuardrailStatus::GuardrailFailedToRespond,
                            GuardrailAction::Block,
                            response,
                            None,
                            Effect::Block(err),
                        )
                    }
                }
            }
        };
        let start_time = epoch_seconds(started_at);
        let secs = duration.as_secs_f64();
        Resolved {
            entry: GuardrailLogEntry {
                guardrail_name: self.name().to_owned(),
                guardrail_provider: self.provider().to_owned(),
                guardrail_mode: mode,
                guardrail_status: status,
                guardrail_action: action,
                guardrail_response: response,
                start_time,
                end_time: start_time + secs,
                duration: secs,
                masked_entity_count: masked,
            },
            effect,
        }
    }

    /// The log entry of a guardrail that was selected but not run, because an earlier one
    /// already blocked.
    pub fn not_run_entry(&self, mode: GuardrailMode) -> GuardrailLogEntry {
        let now = epoch_seconds(SystemTime::now());
        GuardrailLogEntry {
            guardrail_name: self.name().to_owned(),
            guardrail_provider: self.provider().to_owned(),
            guardrail_mode: mode,
            guardrail_status: GuardrailStatus::NotRun,
            guardrail_action: GuardrailAction::Allow,
            guardrail_response: Value::String("not run: an earlier guardrail blocked".into()),
            start_time: now,
            end_time: now,
            duration: 0.0,
            masked_entity_count: None,
        }
    }
}

/// How a guardrail failed, as logged in `guardrail_response.error_type` (and counted in the
/// `error_type` label of LiteLLM's guardrail metrics): `unreachable`, `timeout` or `failed`.
fn error_type(error: &GuardrailError) -> &'static str {
    match error.kind() {
        crate::GuardrailErrorKind::Unreachable => "unreachable",
        crate::GuardrailErrorKind::Timeout => "timeout",
        _ => "failed",
    }
}

impl fmt::Debug for ConfiguredGuardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfiguredGuardrail")
            .field("spec", &self.spec)
            .field("provider", &self.provider())
            .field("on_unreachable", &self.on_unreachable)
            .field("on_error", &self.on_error)
            .field("timeout", &self.timeout)
            .field("stream_policy", &self.stream_policy)
            .field("monitor", &self.monitor)
            .finish()
    }
}

/// One finished check, not yet interpreted.
#[derive(Debug)]
pub struct Check {
    /// What the guardrail answered.
    pub result: Result<Verdict, GuardrailError>,
    /// When it started.
    pub started_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
}

/// What a check means for the text, after fallbacks.
#[derive(Debug)]
pub enum Effect {
    /// Pass the text unchanged.
    Allow,
    /// Replace the texts.
    Rewrite(Vec<String>),
    /// Stop with this error (a block, or a fail-closed failure).
    Block(Error),
}

/// A check interpreted: its log entry and its effect.
#[derive(Debug)]
pub struct Resolved {
    /// The entry to append to the guardrail log.
    pub entry: GuardrailLogEntry,
    /// What happens to the text.
    pub effect: Effect,
}

/// The result of running the selected guardrails for one event.
#[derive(Debug)]
pub enum Outcome {
    /// Every guardrail let the text through; `rewritten` holds the new texts when one or more
    /// guardrails rewrote them.
    Allowed {
        /// The rewritten texts, if any guardrail rewrote.
        rewritten: Option<Vec<String>>,
        /// Masked entities per type, summed over the guardrails that rewrote.
        masked_entity_count: BTreeMap<String, u64>,
    },
    /// A guardrail blocked, or failed closed.
    Blocked(Error),
}

/// The future of [`Guardrails::run`]: ready at once when every guardrail the run checked
/// answered without waiting ([`Guardrail::check_now`]: local matching), else boxed.
pub struct RunFuture {
    state: RunState,
    spent: Duration,
}

enum RunState {
    Ready(Option<Outcome>),
    Pending(BoxFuture<'static, Outcome>),
}

impl RunFuture {
    /// A run that has its outcome.
    pub fn ready(outcome: Outcome) -> Self {
        RunFuture {
            state: RunState::Ready(Some(outcome)),
            spent: Duration::ZERO,
        }
    }

    /// A run that waits for `future`.
    pub fn new(future: impl Future<Output = Outcome> + Send + 'static) -> Self {
        RunFuture {
            state: RunState::Pending(Box::pin(future)),
            spent: Duration::ZERO,
        }
    }

    /// The time spent on the checks that answered at once, before this future was made: a
    /// caller that times the guardrails adds it to the time it waits on the future.
    pub fn spent(&self) -> Duration {
        self.spent
    }

    fn after(mut self, spent: Duration) -> Self {
        self.spent = spent;
        self
    }
}

impl Future for RunFuture {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match &mut self.get_mut().state {
            RunState::Ready(outcome) => {
                Poll::Ready(outcome.take().expect("RunFuture polled after completion"))
            }
            RunState::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for RunFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            RunState::Ready(Some(_)) => "ready",
            RunState::Ready(None) => "done",
            RunState::Pending(_) => "pending",
        };
        f.debug_tuple("RunFuture").field(&state).finish()
    }
}

/// Where a run stands: whether a guardrail rewrote the texts, and what they masked.
#[derive(Default)]
struct Settled {
    rewritten: bool,
    masked: BTreeMap<String, u64>,
}

impl Settled {
    /// Applies one resolved check on `input`: logs its entry, counts what it masked and takes
    /// its rewrite. A block logs the guardrails still to run (`after`, indices into `list`) as
    /// not run and is the run's outcome.
    fn apply(
        &mut self,
        resolved: Resolved,
        input: &mut GuardrailInput,
        list: &[ConfiguredGuardrail],
        after: &[usize],
        log: &GuardrailLog,
    ) -> Option<Outcome> {
        let Resolved { entry, effect } = resolved;
        if let Some(masked) = &entry.masked_entity_count {
            for (k, v) in masked {
                *self.masked.entry(k.clone()).or_insert(0) += v;
            }
        }
        log.push(entry);
        match effect {
            Effect::Allow => None,
            Effect::Rewrite(new) => {
                self.rewritten = true;
                *input = GuardrailInput::new(new, input.side(), input.mode(), input.meta_arc());
                None
            }
            Effect::Block(err) => {
                for &j in after {
                    log.push(list[j].not_run_entry(input.mode()));
                }
                Some(Outcome::Blocked(err))
            }
        }
    }

    /// The outcome of a run that no guardrail blocked.
    fn allowed(self, input: GuardrailInput) -> Outcome {
        Outcome::Allowed {
            rewritten: self.rewritten.then(|| input.into_texts()),
            masked_entity_count: self.masked,
        }
    }
}

/// The ordered list of configured guardrails a layer runs. Cheap to clone.
#[derive(Clone, Default)]
pub struct Guardrails {
    list: Arc<[ConfiguredGuardrail]>,
    concurrent: bool,
}

/// Two guardrails with one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateGuardrail(pub String);

impl fmt::Display for DuplicateGuardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guardrail '{}' is defined more than once", self.0)
    }
}

impl std::error::Error for DuplicateGuardrail {}

impl Guardrails {
    /// The guardrails, in the order they run.
    ///
    /// # Panics
    ///
    /// When two guardrails share a name; use [`Guardrails::try_new`] to get an error instead.
    pub fn new(list: impl IntoIterator<Item = ConfiguredGuardrail>) -> Self {
        match Guardrails::try_new(list) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        }
    }

    /// The guardrails, in the order they run, or an error naming a duplicated name.
    pub fn try_new(
        list: impl IntoIterator<Item = ConfiguredGuardrail>,
    ) -> Result<Self, DuplicateGuardrail> {
        let list: Vec<ConfiguredGuardrail> = list.into_iter().collect();
        for (i, g) in list.iter().enumerate() {
            if list[..i].iter().any(|other| other.name() == g.name()) {
                return Err(DuplicateGuardrail(g.name().to_owned()));
            }
        }
        Ok(Guardrails {
            list: list.into(),
            concurrent: false,
        })
    }

    /// Run the selected guardrails of one event concurrently instead of one after another.
    ///
    /// Every guardrail first checks the same text at once. Results are then taken in
    /// configured order, so the outcome is the sequential one: when a guardrail rewrites, the
    /// ones after it are checked again, in order, on the rewritten text, and only the run that
    /// counts is logged.
    pub fn concurrent(mut self, concurrent: bool) -> Self {
        self.concurrent = concurrent;
        self
    }

    /// The guardrail named `name`.
    pub fn get(&self, name: &str) -> Option<&ConfiguredGuardrail> {
        self.list.iter().find(|g| g.name() == name)
    }

    /// All guardrails, in order.
    pub fn iter(&self) -> impl Iterator<Item = &ConfiguredGuardrail> {
        self.list.iter()
    }

    /// The number of guardrails.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The guardrails the gate selects for `mode`, in order.
    pub fn selected<'a>(
        &'a self,
        mode: GuardrailMode,
        selection: &'a GuardrailSelection,
    ) -> impl Iterator<Item = &'a ConfiguredGuardrail> + 'a {
        self.list
            .iter()
            .filter(move |g| g.spec().should_run(mode, selection))
    }

    /// Whether the gate selects any guardrail for `mode`.
    pub fn any_selected(&self, mode: GuardrailMode, selection: &GuardrailSelection) -> bool {
        self.selected(mode, selection).next().is_some()
    }

    /// Runs the guardrails the gate selects for `mode` on `texts`, appending one entry per run to
    /// `log`. Sequential in configured order (each sees the text as the previous one left it),
    /// or concurrent (see [`Guardrails::concurrent`]).
    ///
    /// [Monitor](ConfiguredGuardrail::monitor) guardrails among them are started at once on the
    /// original texts, detached from the returned future (see [`run_detached`]): nothing waits
    /// for them. Returns `None` without allocating when no other guardrail is selected.
    pub fn run(
        &self,
        mode: GuardrailMode,
        selection: &GuardrailSelection,
        side: Side,
        mut texts: Vec<String>,
        meta: Arc<RequestMeta>,
        log: GuardrailLog,
    ) -> Option<RunFuture> {
        let mut selected: Vec<usize> = self
            .list
            .iter()
            .enumerate()
            .filter(|(_, g)| g.spec().should_run(mode, selection))
            .map(|(i, _)| i)
            .collect();
        let mut inline_monitors = None;
        if selected.iter().any(|&i| self.list[i].monitor) {
            let monitors: Vec<usize> = selected
                .iter()
                .copied()
                .filter(|&i| self.list[i].monitor)
                .collect();
            selected.retain(|&i| !self.list[i].monitor);
            let texts = if selected.is_empty() {
                std::mem::take(&mut texts)
            } else {
                texts.clone()
            };
            inline_monitors = detached(
                self.list.clone(),
                monitors,
                mode,
                side,
                texts,
                meta.clone(),
                log.clone(),
            );
        }
        if selected.is_empty() {
            // Without a runtime to detach onto, the monitors are awaited here.
            return inline_monitors.map(|fut| {
                RunFuture::new(async move {
                    fut.await;
                    Outcome::Allowed {
                        rewritten: None,
                        masked_entity_count: BTreeMap::new(),
                    }
                })
            });
        }
        let list = self.list.clone();
        let mut input = GuardrailInput::new(texts, side, mode, meta);
        let mut run = Settled::default();
        // The guardrails that answer at once (local matching) run here, without a future, up
        // to the first that must be awaited.
        let mut start = 0;
        let mut spent = Duration::ZERO;
        if inline_monitors.is_none() {
            while let Some(&i) = selected.get(start) {
                let g = &list[i];
                let n = input.texts().len();
                let Some(check) = g.check_now(&input) else {
                    break;
                };
                spent += check.duration;
                let resolved = g.resolve(mode, n, check);
                if let Some(blocked) =
                    run.apply(resolved, &mut input, &list, &selected[start + 1..], &log)
                {
                    return Some(RunFuture::ready(blocked).after(spent));
                }
                start += 1;
            }
            if start == selected.len() {
                return Some(RunFuture::ready(run.allowed(input)).after(spent));
            }
        }
        let concurrent = self.concurrent && selected.len() - start > 1 && !run.rewritten;
        Some(
            RunFuture::new(async move {
                if let Some(monitors) = inline_monitors {
                    monitors.await;
                }
                // Checks cut short (the request ended: the client went away) still leave an entry.
                let mut in_flight = InFlight {
                    log: log.clone(),
                    list: list.clone(),
                    mode,
                    checks: Vec::new(),
                };
                let rest = &selected[start..];
                let mut first_results = if concurrent {
                    in_flight.start(rest);
                    let checks = rest.iter().map(|&i| {
                        let g = &list[i];
                        let input = &input;
                        async move { g.check(input).await }
                    });
                    let results = futures_util::future::join_all(checks).await;
                    in_flight.done();
                    results
                } else {
                    Vec::new()
                }
                .into_iter()
                .map(Some)
                .collect::<Vec<_>>();
                for (k, &i) in rest.iter().enumerate() {
                    let g = &list[i];
                    let n = input.texts().len();
                    // A concurrent result is valid only while the text is still the original one.
                    let check = match first_results.get_mut(k).and_then(Option::take) {
                        Some(check) if !run.rewritten => check,
                        _ => {
                            in_flight.start(&[i]);
                            let check = g.check(&input).await;
                            in_flight.done();
                            check
                        }
                    };
                    let resolved = g.resolve(mode, n, check);
                    if let Some(blocked) =
                        run.apply(resolved, &mut input, &list, &rest[k + 1..], &log)
                    {
                        return blocked;
                    }
                }
                run.allowed(input)
            })
            .after(spent),
        )
    }
}

/// Runs the [monitor](ConfiguredGuardrail::monitor) guardrails among `guardrails` on `texts`
/// detached from the request: a task of its own on the current tokio runtime, which appends
/// each one's entry to `log` when it finishes. Nothing waits for them; the log counts the run
/// as in flight until then ([`GuardrailLog::detached_in_flight`], [`GuardrailLog::settled`]).
/// Guardrails that are not monitors are ignored.
///
/// Returns whether a run was started: `false` when there is no monitor among `guardrails` or
/// no runtime to run it on (then nothing runs, and a warning is logged).
pub fn run_detached<'a>(
    guardrails: impl IntoIterator<Item = &'a ConfiguredGuardrail>,
    mode: GuardrailMode,
    side: Side,
    texts: Vec<String>,
    meta: Arc<RequestMeta>,
    log: GuardrailLog,
) -> bool {
    let list: Arc<[ConfiguredGuardrail]> = guardrails
        .into_iter()
        .filter(|g| g.monitor)
        .cloned()
        .collect();
    if list.is_empty() {
        return false;
    }
    let all = (0..list.len()).collect();
    match detached(list, all, mode, side, texts, meta, log) {
        None => true,
        Some(_) => {
            tracing::warn!("monitor guardrails not run: no tokio runtime to run them on");
            false
        }
    }
}

/// Spawns the run of `list[indices]` on `texts`; without a runtime, returns the run to await.
fn detached(
    list: Arc<[ConfiguredGuardrail]>,
    indices: Vec<usize>,
    mode: GuardrailMode,
    side: Side,
    texts: Vec<String>,
    meta: Arc<RequestMeta>,
    log: GuardrailLog,
) -> Option<BoxFuture<'static, ()>> {
    let names = indices
        .iter()
        .map(|&i| list[i].spec().name_arc().clone())
        .collect();
    let run = log.detach(names);
    let fut = Box::pin(async move {
        // Dropped last: the run counts as in flight until its entries are in the log.
        let _run = run;
        let input = GuardrailInput::new(texts, side, mode, meta);
        let n = input.texts().len();
        let mut in_flight = InFlight {
            log: log.clone(),
            list: list.clone(),
            mode,
            checks: Vec::new(),
        };
        in_flight.start(&indices);
        let checks = indices.iter().map(|&i| list[i].check(&input));
        let results = futures_util::future::join_all(checks).await;
        in_flight.done();
        for (&i, check) in indices.iter().zip(results) {
            log.push(list[i].resolve(mode, n, check).entry);
        }
    });
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(fut);
            None
        }
        Err(_) => Some(fut),
    }
}

/// The checks a run is awaiting; dropped before they finish (the run future was dropped), it
/// logs each as `not_run`, cancelled, with its start and how long it ran.
struct InFlight {
    log: GuardrailLog,
    list: Arc<[ConfiguredGuardrail]>,
    mode: GuardrailMode,
    checks: Vec<(usize, SystemTime, Instant)>,
}

impl InFlight {
    fn start(&mut self, indices: &[usize]) {
        let (now, start) = (SystemTime::now(), Instant::now());
        self.checks = indices.iter().map(|&i| (i, now, start)).collect();
    }

    fn done(&mut self) {
        self.checks.clear();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for &(i, started_at, start) in &self.checks {
            let mut entry = self.list[i].not_run_entry(self.mode);
            let secs = start.elapsed().as_secs_f64();
            entry.start_time = epoch_seconds(started_at);
            entry.end_time = entry.start_time + secs;
            entry.duration = secs;
            entry.guardrail_response =
                Value::String("cancelled: the request ended before the guardrail answered".into());
            self.log.push(entry);
        }
    }
}

impl fmt::Debug for Guardrails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guardrails")
            .field("list", &self.list)
            .field("concurrent", &self.concurrent)
            .finish()
    }
}

impl FromIterator<ConfiguredGuardrail> for Guardrails {
    fn from_iter<I: IntoIterator<Item = ConfiguredGuardrail>>(iter: I) -> Self {
        Guardrails::new(iter)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{CallType, GuardrailErrorKind, RequestId, guardrail_fn};

    fn meta() -> Arc<RequestMeta> {
        Arc::new(RequestMeta::new(
            RequestId::from("req-1"),
            CallType::ChatCompletions,
        ))
    }

    fn replace(name: &'static str, from: &'static str, to: &'static str) -> ConfiguredGuardrail {
        ConfiguredGuardrail::new(
            name,
            GuardrailMode::PreCall,
            guardrail_fn(move |input: GuardrailInput| async move {
                if input.texts().iter().any(|t| t.contains(from)) {
                    let texts = input.texts().iter().map(|t| t.replace(from, to)).collect();
                    Ok(Verdict::rewrite(texts)
                        .with_masked_entity_count(BTreeMap::from([(name.to_uppercase(), 1)])))
                } else {
                    Ok(Verdict::allow())
                }
            }),
        )
        .default_on(true)
    }

    fn block_on(name: &'static str, word: &'static str) -> ConfiguredGuardrail {
        ConfiguredGuardrail::new(
            name,
            GuardrailMode::PreCall,
            guardrail_fn(move |input: GuardrailInput| async move {
                if input.texts().iter().any(|t| t.contains(word)) {
                    Ok(Verdict::block(format!("'{word}' is not allowed")))
                } else {
                    Ok(Verdict::allow())
                }
            }),
        )
        .default_on(true)
    }

    fn failing(name: &'static str, kind: GuardrailErrorKind) -> ConfiguredGuardrail {
        ConfiguredGuardrail::new(
            name,
            GuardrailMode::PreCall,
            guardrail_fn(move |_| async move {
                Err(match kind {
                    GuardrailErrorKind::Unreachable => {
                        GuardrailError::unreachable("connection refused")
                    }
                    GuardrailErrorKind::Timeout => GuardrailError::timeout(Duration::from_secs(1)),
                    _ => GuardrailError::failed("invalid JSON from guardrail"),
                })
            }),
        )
        .default_on(true)
    }

    async fn run(g: &Guardrails, texts: &[&str]) -> (Outcome, GuardrailLog) {
        let log = GuardrailLog::new();
        let fut = start(g, texts, &log);
        (fut.await, log)
    }

    fn statuses(log: &GuardrailLog) -> Vec<(String, GuardrailStatus, GuardrailAction)> {
        log.entries()
            .into_iter()
            .map(|e| (e.guardrail_name, e.guardrail_status, e.guardrail_action))
            .collect()
    }

    #[tokio::test]
    async fn a_flagged_allow_passes_and_is_logged_as_intervened() {
        let monitor = ConfiguredGuardrail::new(
            "monitor",
            GuardrailMode::PreCall,
            guardrail_fn(|_| async {
                Ok(Verdict::allow()
                    .flagged()
                    .with_detail(serde_json::json!({"flagged": true})))
            }),
        )
        .default_on(true);
        let g = Guardrails::new([monitor, block_on("after", "never")]);
        let (outcome, log) = run(&g, &["anything"]).await;
        assert!(matches!(
            outcome,
            Outcome::Allowed {
                rewritten: None,
                ..
            }
        ));
        assert_eq!(
            statuses(&log),
            [
                (
                    "monitor".to_owned(),
                    GuardrailStatus::GuardrailIntervened,
                    GuardrailAction::Allow
                ),
                (
                    "after".to_owned(),
                    GuardrailStatus::Success,
                    GuardrailAction::Allow
                ),
            ]
        );
        assert_eq!(
            log.entries()[0].guardrail_response,
            serde_json::json!({"flagged": true})
        );
    }

    #[tokio::test]
    async fn masking_composes_in_order() {
        for concurrent in [false, true] {
            let g = Guardrails::new([replace("a", "cat", "dog"), replace("b", "dog", "wolf")])
                .concurrent(concurrent);
            let (outcome, log) = run(&g, &["a cat", "no pets"]).await;
            let Outcome::Allowed {
                rewritten,
                masked_entity_count,
            } = outcome
            else {
                panic!("blocked")
            };
            assert_eq!(
                rewritten.unwrap(),
                ["a wolf", "no pets"],
                "concurrent={concurrent}"
            );
            assert_eq!(
                masked_entity_count,
                BTreeMap::from([("A".into(), 1), ("B".into(), 1)])
            );
            assert_eq!(
                statuses(&log),
                [
                    (
                        "a".into(),
                        GuardrailStatus::GuardrailIntervened,
                        GuardrailAction::Mask
                    ),
                    (
                        "b".into(),
                        GuardrailStatus::GuardrailIntervened,
                        GuardrailAction::Mask
                    ),
                ]
            );
        }
    }

    #[tokio::test]
    async fn block_stops_and_records_the_rest_as_not_run() {
        for concurrent in [false, true] {
            let g = Guardrails::new([
                replace("mask", "x", "y"),
                block_on("blocker", "bad"),
                block_on("after", "zzz"),
            ])
            .concurrent(concurrent);
            let (outcome, log) = run(&g, &["bad"]).await;
            let Outcome::Blocked(err) = outcome else {
                panic!("allowed")
            };
            assert_eq!(err.status(), 400);
            assert_eq!(err.code(), Some("content_policy_violation"));
            assert_eq!(err.message(), "'bad' is not allowed");
            assert_eq!(err.guardrail(), Some("blocker"));
            assert_eq!(
                statuses(&log),
                [
                    (
                        "mask".into(),
                        GuardrailStatus::Success,
                        GuardrailAction::Allow
                    ),
                    (
                        "blocker".into(),
                        GuardrailStatus::GuardrailIntervened,
                        GuardrailAction::Block
                    ),
                    (
                        "after".into(),
                        GuardrailStatus::NotRun,
                        GuardrailAction::Allow
                    ),
                ]
            );
            assert_eq!(log.entries()[1].guardrail_response, "'bad' is not allowed");
        }
    }

    #[tokio::test]
    async fn a_rewrite_is_seen_by_the_next_guardrail_even_when_concurrent() {
        // "b" would block the original text, but "a" masks it first.
        let g = Guardrails::new([replace("a", "secret", "[MASKED]"), block_on("b", "secret")])
            .concurrent(true);
        let (outcome, log) = run(&g, &["my secret"]).await;
        assert!(
            matches!(outcome, Outcome::Allowed { rewritten: Some(ref t), .. } if t == &["my [MASKED]"])
        );
        assert_eq!(log.len(), 2, "only the run that counts is logged");
    }

    #[tokio::test]
    async fn fallbacks() {
        let cases = [
            (
                GuardrailErrorKind::Unreachable,
                Fallback::FailOpen,
                Fallback::FailClosed,
                None,
            ),
            (
                GuardrailErrorKind::Timeout,
                Fallback::FailOpen,
                Fallback::FailClosed,
                None,
            ),
            (
                GuardrailErrorKind::Failed,
                Fallback::FailOpen,
                Fallback::FailClosed,
                Some(500),
            ),
            (
                GuardrailErrorKind::Unreachable,
                Fallback::FailClosed,
                Fallback::FailOpen,
                Some(503),
            ),
            (
                GuardrailErrorKind::Timeout,
                Fallback::FailClosed,
                Fallback::FailOpen,
                Some(503),
            ),
            (
                GuardrailErrorKind::Failed,
                Fallback::FailClosed,
                Fallback::FailOpen,
                None,
            ),
        ];
        for (kind, unreachable, other, want_status) in cases {
            let g = Guardrails::new([failing("svc", kind)
                .unreachable_fallback(unreachable)
                .error_fallback(other)]);
            let (outcome, log) = run(&g, &["text"]).await;
            let entry = &log.entries()[0];
            assert_eq!(
                entry.guardrail_status,
                GuardrailStatus::GuardrailFailedToRespond
            );
            match (outcome, want_status) {
                (
                    Outcome::Allowed {
                        rewritten: None, ..
                    },
                    None,
                ) => {
                    assert_eq!(entry.guardrail_action, GuardrailAction::Allow);
                    assert_eq!(entry.guardrail_response["fallback"], "fail_open");
                }
                (Outcome::Blocked(err), Some(status)) => {
                    assert_eq!(err.status(), status, "{kind:?}");
                    assert!(err.message().contains("'svc'"), "{}", err.message());
                    assert_eq!(entry.guardrail_action, GuardrailAction::Block);
                    assert_eq!(err.class(), crate::ErrorClass::GuardrailFailure);
                }
                (outcome, want) => panic!("{kind:?}: got {outcome:?}, want {want:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_counts_as_unreachable() {
        let slow = ConfiguredGuardrail::new(
            "slow",
            GuardrailMode::PreCall,
            guardrail_fn(|_| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Verdict::allow())
            }),
        )
        .default_on(true)
        .timeout(Duration::from_millis(250));
        let (outcome, log) = run(&Guardrails::new([slow]), &["x"]).await;
        let Outcome::Blocked(err) = outcome else {
            panic!()
        };
        assert_eq!(err.status(), 503);
        // The client's error names the guardrail; the detail is in the log entry.
        assert_eq!(err.message(), "guardrail 'slow' could not be reached");
        let entry = &log.entries()[0];
        let detail = entry.guardrail_response["error"].as_str().unwrap();
        assert!(detail.contains("no answer within 250 ms"), "{detail}");
        assert!((entry.duration - 0.25).abs() < 0.01, "{}", entry.duration);
    }

    #[tokio::test]
    async fn rewrite_with_wrong_count_is_a_guardrail_error() {
        let bad = ConfiguredGuardrail::new(
            "bad",
            GuardrailMode::PreCall,
            guardrail_fn(|_| async { Ok(Verdict::rewrite(vec![])) }),
        )
        .default_on(true);
        let (outcome, log) = run(&Guardrails::new([bad]), &["x"]).await;
        let Outcome::Blocked(err) = outcome else {
            panic!()
        };
        assert_eq!(err.status(), 500);
        assert_eq!(
            err.message(),
            "guardrail 'bad' failed: it could not give a verdict"
        );
        let entries = log.entries();
        let detail = entries[0].guardrail_response["error"].as_str().unwrap();
        assert!(
            detail.contains("rewrite returned 0 texts for 1 inputs"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn nothing_selected_means_no_future() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let g = Guardrails::new([ConfiguredGuardrail::new(
            "opt-in",
            GuardrailMode::PreCall,
            guardrail_fn(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok(Verdict::allow()) }
            }),
        )]);
        let none = g.run(
            GuardrailMode::PreCall,
            &GuardrailSelection::new(),
            Side::Request,
            vec![],
            meta(),
            GuardrailLog::new(),
        );
        assert!(none.is_none());
        let mut selection = GuardrailSelection::new();
        selection.insert("opt-in");
        assert!(
            g.run(
                GuardrailMode::PostCall,
                &selection,
                Side::Response,
                vec![],
                meta(),
                GuardrailLog::new()
            )
            .is_none()
        );
        g.run(
            GuardrailMode::PreCall,
            &selection,
            Side::Request,
            vec![],
            meta(),
            GuardrailLog::new(),
        )
        .unwrap()
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_check_cut_short_is_logged_as_cancelled() {
        let hangs = ConfiguredGuardrail::new(
            "slow-service",
            GuardrailMode::PreCall,
            guardrail_fn(|_| std::future::pending()),
        )
        .default_on(true);
        let g = Guardrails::new([hangs]);
        let log = GuardrailLog::new();
        let fut = g
            .run(
                GuardrailMode::PreCall,
                &GuardrailSelection::new(),
                Side::Request,
                vec!["x".into()],
                meta(),
                log.clone(),
            )
            .unwrap();
        // The client goes away while the guardrail is still thinking.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), fut)
                .await
                .is_err()
        );
        let entries = log.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].guardrail_name, "slow-service");
        assert_eq!(entries[0].guardrail_status, GuardrailStatus::NotRun);
        assert_eq!(
            entries[0].guardrail_response,
            "cancelled: the request ended before the guardrail answered"
        );
        assert!(entries[0].duration >= 0.015, "{}", entries[0].duration);
    }

    #[tokio::test]
    async fn a_monitor_is_not_awaited_and_logs_its_would_be_block() {
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = release.clone();
        let monitor = ConfiguredGuardrail::new(
            "trial",
            GuardrailMode::PreCall,
            guardrail_fn(move |input: GuardrailInput| {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    Ok(if input.texts()[0].contains("bad") {
                        Verdict::block("'bad' is not allowed")
                    } else {
                        Verdict::allow()
                    })
                }
            }),
        )
        .default_on(true)
        .monitor(true);
        let g = Guardrails::new([monitor]);
        let log = GuardrailLog::new();
        // Only a monitor is selected: there is nothing to wait for.
        let fut = g.run(
            GuardrailMode::PreCall,
            &GuardrailSelection::new(),
            Side::Request,
            vec!["bad".into()],
            meta(),
            log.clone(),
        );
        assert!(fut.is_none());
        assert_eq!(log.detached_in_flight(), 1);
        assert_eq!(log.detached_guardrails(), [Arc::<str>::from("trial")]);
        assert!(log.is_empty());
        release.notify_one();
        log.settled().await;
        assert_eq!(log.detached_in_flight(), 0);
        assert_eq!(
            statuses(&log),
            [(
                "trial".to_owned(),
                GuardrailStatus::GuardrailIntervened,
                GuardrailAction::Allow
            )]
        );
        assert_eq!(log.entries()[0].guardrail_response, "'bad' is not allowed");
        assert_eq!(log.applied_guardrails(), ["trial"]);
    }

    #[tokio::test]
    async fn monitors_never_block_or_rewrite() {
        let fail_closed = failing("svc", GuardrailErrorKind::Unreachable).monitor(true);
        let g = Guardrails::new([
            replace("masker", "cat", "dog").monitor(true),
            block_on("blocker", "cat").monitor(true),
            fail_closed,
            block_on("enforced", "wolf"),
        ]);
        let log = GuardrailLog::new();
        let outcome = g
            .run(
                GuardrailMode::PreCall,
                &GuardrailSelection::new(),
                Side::Request,
                vec!["a cat".into()],
                meta(),
                log.clone(),
            )
            .expect("an enforcing guardrail is selected")
            .await;
        // The enforcing guardrail saw the original text, unmasked by the monitor.
        assert!(matches!(
            outcome,
            Outcome::Allowed {
                rewritten: None,
                ..
            }
        ));
        log.settled().await;
        let mut got = statuses(&log);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                (
                    "blocker".to_owned(),
                    GuardrailStatus::GuardrailIntervened,
                    GuardrailAction::Allow
                ),
                (
                    "enforced".to_owned(),
                    GuardrailStatus::Success,
                    GuardrailAction::Allow
                ),
                (
                    "masker".to_owned(),
                    GuardrailStatus::GuardrailIntervened,
                    GuardrailAction::Allow
                ),
                (
                    "svc".to_owned(),
                    GuardrailStatus::GuardrailFailedToRespond,
                    GuardrailAction::Allow
                ),
            ]
        );
        let entries = log.entries();
        let svc = entries.iter().find(|e| e.guardrail_name == "svc").unwrap();
        assert_eq!(svc.guardrail_response["fallback"], "monitor");
        assert_eq!(svc.guardrail_response["error_type"], "unreachable");
        let masker = entries
            .iter()
            .find(|e| e.guardrail_name == "masker")
            .unwrap();
        assert_eq!(
            masker.masked_entity_count,
            Some(BTreeMap::from([("MASKER".to_owned(), 1)]))
        );
    }

    #[test]
    fn duplicate_names_are_an_error() {
        let err = Guardrails::try_new([block_on("x", "a"), block_on("x", "b")]).unwrap_err();
        assert_eq!(err.to_string(), "guardrail 'x' is defined more than once");
    }

    /// A guardrail that answers at once (as local matching does): it replaces `from` with `to`
    /// and blocks `word`, and counts its checks. Its `check` panics: the runner must not wait
    /// on it.
    struct AtOnce {
        from: &'static str,
        to: &'static str,
        word: &'static str,
        checks: Arc<AtomicUsize>,
    }

    impl Guardrail for AtOnce {
        async fn check(&self, _: &GuardrailInput) -> Result<Verdict, GuardrailError> {
            unreachable!("a guardrail that answers at once is not awaited")
        }

        fn check_now(&self, input: &GuardrailInput) -> Option<Result<Verdict, GuardrailError>> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            if input.texts().iter().any(|t| t.contains(self.word)) {
                return Some(Ok(Verdict::block("blocked at once")));
            }
            if input.texts().iter().any(|t| t.contains(self.from)) {
                let texts = input.texts().iter().map(|t| t.replace(self.from, self.to));
                return Some(Ok(Verdict::rewrite(texts.collect())));
            }
            Some(Ok(Verdict::allow()))
        }
    }

    fn at_once(
        name: &'static str,
        from: &'static str,
        to: &'static str,
    ) -> (ConfiguredGuardrail, Arc<AtomicUsize>) {
        let checks = Arc::new(AtomicUsize::new(0));
        let g = AtOnce {
            from,
            to,
            word: "stop",
            checks: checks.clone(),
        };
        (
            ConfiguredGuardrail::new(name, GuardrailMode::PreCall, g).default_on(true),
            checks,
        )
    }

    /// Starts a pre-call run of `g` on `texts`, logging to `log`.
    fn start(g: &Guardrails, texts: &[&str], log: &GuardrailLog) -> RunFuture {
        g.run(
            GuardrailMode::PreCall,
            &GuardrailSelection::new(),
            Side::Request,
            texts.iter().map(|t| t.to_string()).collect(),
            meta(),
            log.clone(),
        )
        .expect("a guardrail is selected")
    }

    /// Guardrails that answer at once run in `run` itself, in order, and their outcome is
    /// ready without a future; a guardrail after them that must be awaited sees their rewrite,
    /// sequentially and concurrently; a block at once logs the rest as not run.
    #[tokio::test]
    async fn guardrails_that_answer_at_once_run_without_a_future() {
        let (a, a_checks) = at_once("a", "secret", "[A]");
        let (b, _) = at_once("b", "[A]", "[B]");
        let log = GuardrailLog::new();
        let fut = start(&Guardrails::new([a, b]), &["a secret"], &log);
        assert_eq!(format!("{fut:?}"), r#"RunFuture("ready")"#);
        assert_eq!(a_checks.load(Ordering::SeqCst), 1, "checked in run itself");
        assert!(fut.spent() > Duration::ZERO, "the checks' time is kept");
        let Outcome::Allowed { rewritten, .. } = fut.await else {
            panic!("allowed")
        };
        assert_eq!(rewritten, Some(vec!["a [B]".to_owned()]));
        let names: Vec<String> = log
            .entries()
            .iter()
            .map(|e| e.guardrail_name.clone())
            .collect();
        assert_eq!(names, ["a", "b"]);

        for concurrent in [false, true] {
            let (a, _) = at_once("a", "secret", "[A]");
            let guardrails = Guardrails::new([a, replace("r", "[A]", "[R]"), block_on("z", "zzz")])
                .concurrent(concurrent);
            let log = GuardrailLog::new();
            let fut = start(&guardrails, &["a secret"], &log);
            assert_eq!(format!("{fut:?}"), r#"RunFuture("pending")"#);
            let Outcome::Allowed {
                rewritten,
                masked_entity_count,
            } = fut.await
            else {
                panic!("allowed")
            };
            assert_eq!(
                rewritten,
                Some(vec!["a [R]".to_owned()]),
                "concurrent: {concurrent}"
            );
            assert_eq!(masked_entity_count, BTreeMap::from([("R".to_owned(), 1)]));
            assert_eq!(log.entries().len(), 3);
        }

        let (a, _) = at_once("a", "secret", "[A]");
        let log = GuardrailLog::new();
        let fut = start(
            &Guardrails::new([a, block_on("later", "x")]),
            &["stop here"],
            &log,
        );
        assert_eq!(format!("{fut:?}"), r#"RunFuture("ready")"#);
        assert!(matches!(fut.await, Outcome::Blocked(_)));
        let entries = log.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0].guardrail_status,
            GuardrailStatus::GuardrailIntervened
        );
        assert_eq!(entries[1].guardrail_name, "later");
        assert_eq!(entries[1].guardrail_status, GuardrailStatus::NotRun);
    }
}
