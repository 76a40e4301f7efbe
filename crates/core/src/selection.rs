//! Which guardrails run: specs, the per-request selection, and the one gate function.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use guardrail_tower_protocol::json::JsonView;

/// When a guardrail runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailMode {
    /// On the request, before the upstream is called.
    PreCall,
    /// On the request, concurrently with the upstream call; the response is held until it passes.
    DuringCall,
    /// On the response (whole or streamed).
    PostCall,
}

impl GuardrailMode {
    /// Every mode.
    pub const ALL: [GuardrailMode; 3] = [
        GuardrailMode::PreCall,
        GuardrailMode::DuringCall,
        GuardrailMode::PostCall,
    ];

    /// `pre_call`, `during_call` or `post_call`.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardrailMode::PreCall => "pre_call",
            GuardrailMode::DuringCall => "during_call",
            GuardrailMode::PostCall => "post_call",
        }
    }

    fn bit(self) -> u8 {
        match self {
            GuardrailMode::PreCall => 1,
            GuardrailMode::DuringCall => 2,
            GuardrailMode::PostCall => 4,
        }
    }
}

impl fmt::Display for GuardrailMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown mode name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMode(pub String);

impl fmt::Display for UnknownMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown guardrail mode '{}' (expected pre_call, during_call or post_call)",
            self.0
        )
    }
}

impl std::error::Error for UnknownMode {}

impl FromStr for GuardrailMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pre_call" => Ok(GuardrailMode::PreCall),
            "during_call" => Ok(GuardrailMode::DuringCall),
            "post_call" => Ok(GuardrailMode::PostCall),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

/// A set of [`GuardrailMode`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GuardrailModes(u8);

impl GuardrailModes {
    /// No modes.
    pub const fn empty() -> Self {
        GuardrailModes(0)
    }

    /// This set plus `mode`.
    pub fn with(self, mode: GuardrailMode) -> Self {
        GuardrailModes(self.0 | mode.bit())
    }

    /// Whether `mode` is in the set.
    pub fn contains(self, mode: GuardrailMode) -> bool {
        self.0 & mode.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The modes in the set.
    pub fn iter(self) -> impl Iterator<Item = GuardrailMode> {
        GuardrailMode::ALL
            .into_iter()
            .filter(move |m| self.contains(*m))
    }
}

impl From<GuardrailMode> for GuardrailModes {
    fn from(mode: GuardrailMode) -> Self {
        GuardrailModes::empty().with(mode)
    }
}

impl FromIterator<GuardrailMode> for GuardrailModes {
    fn from_iter<I: IntoIterator<Item = GuardrailMode>>(iter: I) -> Self {
        iter.into_iter()
            .fold(GuardrailModes::empty(), GuardrailModes::with)
    }
}

impl<const N: usize> From<[GuardrailMode; N]> for GuardrailModes {
    fn from(modes: [GuardrailMode; N]) -> Self {
        modes.into_iter().collect()
    }
}

impl fmt::Debug for GuardrailModes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// A configured guardrail's identity and when it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardrailSpec {
    name: Arc<str>,
    modes: GuardrailModes,
    default_on: bool,
}

impl GuardrailSpec {
    /// A spec; `default_on: false` means the guardrail runs only when selected.
    pub fn new(
        name: impl Into<Arc<str>>,
        modes: impl Into<GuardrailModes>,
        default_on: bool,
    ) -> Self {
        GuardrailSpec {
            name: name.into(),
            modes: modes.into(),
            default_on,
        }
    }

    /// The guardrail's name (`guardrail_name` in config and logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shared name.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// The modes it runs in.
    pub fn modes(&self) -> GuardrailModes {
        self.modes
    }

    /// Whether it runs without being selected.
    pub fn default_on(&self) -> bool {
        self.default_on
    }

    /// The gate; see [`should_run`].
    pub fn should_run(&self, mode: GuardrailMode, selection: &GuardrailSelection) -> bool {
        should_run(self, mode, selection)
    }
}

/// THE gate: whether the guardrail `spec` runs for an event of `mode` given the request's
/// `selection`.
///
/// `mode matches && (default_on || selected)`. Every layer, streaming or not, decides through
/// this one function, reading the one merged selection; the stream flag is deliberately not an
/// input.
pub fn should_run(
    spec: &GuardrailSpec,
    mode: GuardrailMode,
    selection: &GuardrailSelection,
) -> bool {
    spec.modes.contains(mode) && (spec.default_on || selection.contains(&spec.name))
}

/// The guardrail names selected for one request: those the client asked for in the body
/// (`guardrails`, `metadata.guardrails`) plus those configured on the model (merged by
/// `ModelGuardrailMergeLayer`).
///
/// A selection can only add guardrails: nothing a client sends can switch off a `default_on`
/// guardrail or a model-level one.
///
/// Building one is linear in the number of names a body lists: past a few names, membership
/// is a hash lookup (a body listing 100,000 names costs 100,000 lookups, not their square).
#[derive(Debug, Clone, Default)]
pub struct GuardrailSelection {
    names: Vec<Arc<str>>,
    /// The names as a set, once there are more than [`SCAN_LIMIT`].
    index: Option<HashSet<Arc<str>>>,
}

/// Up to this many names, a scan of the list beats hashing.
const SCAN_LIMIT: usize = 8;

impl PartialEq for GuardrailSelection {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl Eq for GuardrailSelection {}

impl GuardrailSelection {
    /// An empty selection.
    pub fn new() -> Self {
        GuardrailSelection::default()
    }

    /// The names a request body asks for: `guardrails`, `metadata.guardrails` and
    /// `litellm_metadata.guardrails` (LiteLLM's field on the Anthropic endpoint), each either a
    /// list of names or an object keyed by name (LiteLLM's per-guardrail parameters form, where
    /// an entry whose value is `false` asks for nothing). Nothing in the body can switch a
    /// guardrail off: a `false` entry selects nothing, and a `default_on` or model-level
    /// guardrail runs regardless.
    pub fn from_body(body: &Value) -> Self {
        let mut selection = GuardrailSelection::new();
        selection.add_from_value(body.get("guardrails"));
        for metadata in ["metadata", "litellm_metadata"] {
            selection.add_from_value(body.get(metadata).and_then(|m| m.get("guardrails")));
        }
        selection
    }

    fn add_from_value(&mut self, value: Option<&Value>) {
        match value {
            Some(Value::Array(items)) => {
                for name in items.iter().filter_map(Value::as_str) {
                    self.insert(name);
                }
            }
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    if *value != Value::Bool(false) {
                        self.insert(name.as_str());
                    }
                }
            }
            Some(Value::String(name)) => self.insert(name.as_str()),
            _ => {}
        }
    }

    /// [`GuardrailSelection::from_body`] on a borrowed view of the body: the same names in the
    /// same order (a key repeated in an object counts once, at its first place, with its last
    /// value, as in a `serde_json::Value`).
    pub(crate) fn from_view(body: &JsonView<'_>) -> Self {
        let mut selection = GuardrailSelection::new();
        selection.add_from_view(body.get("guardrails"));
        for metadata in ["metadata", "litellm_metadata"] {
            selection.add_from_view(body.get(metadata).and_then(|m| m.get("guardrails")));
        }
        selection
    }

    fn add_from_view(&mut self, value: Option<&JsonView<'_>>) {
        match value {
            Some(JsonView::Array(items)) => {
                for name in items.iter().filter_map(JsonView::as_str) {
                    self.insert(name);
                }
            }
            Some(object @ JsonView::Object(entries)) if entries.len() <= SCAN_LIMIT => {
                for (i, (name, _)) in entries.iter().enumerate() {
                    let first = entries[..i].iter().all(|(earlier, _)| earlier != name);
                    if first && object.get(name) != Some(&JsonView::Bool(false)) {
                        self.insert(&**name);
                    }
                }
            }
            Some(JsonView::Object(entries)) => {
                // A repeated key counts once, at its first place, with its last value.
                let mut off: HashMap<&str, bool> = HashMap::with_capacity(entries.len());
                for (name, value) in entries {
                    off.insert(name, *value == JsonView::Bool(false));
                }
                for (name, _) in entries {
                    if off.remove(&**name) == Some(false) {
                        self.insert(&**name);
                    }
                }
            }
            Some(JsonView::String(name)) => self.insert(&**name),
            _ => {}
        }
    }

    /// Adds one name, unless present.
    pub fn insert(&mut self, name: impl AsRef<str> + Into<Arc<str>>) {
        if self.contains(name.as_ref()) {
            return;
        }
        let name: Arc<str> = name.into();
        match &mut self.index {
            Some(index) => {
                index.insert(name.clone());
            }
            None if self.names.len() >= SCAN_LIMIT => {
                let mut index: HashSet<Arc<str>> = self.names.iter().cloned().collect();
                index.insert(name.clone());
                self.index = Some(index);
            }
            None => {}
        }
        self.names.push(name);
    }

    /// Adds names (a model's guardrails), deduplicated, keeping existing entries first.
    pub fn merge<I>(&mut self, names: I)
    where
        I: IntoIterator,
        I::Item: AsRef<str> + Into<Arc<str>>,
    {
        for name in names {
            self.insert(name);
        }
    }

    /// Whether `name` is selected.
    pub fn contains(&self, name: &str) -> bool {
        match &self.index {
            Some(index) => index.contains(name),
            None => self.names.iter().any(|n| &**n == name),
        }
    }

    /// The selected names, in the order they were added.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::CallType;
    use crate::request::ParsedRequest;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum SelectedBy {
        BodyGuardrails,
        MetadataGuardrails,
        ModelLevel,
        NotSelected,
    }

    /// The gate table: every mode a guardrail can have x every event mode x default_on x how it
    /// was selected x streaming. The request goes through the real parsing path.
    #[test]
    fn gate_table() {
        const NAME: &str = "g";
        let mode_sets: Vec<GuardrailModes> = vec![
            GuardrailMode::PreCall.into(),
            GuardrailMode::DuringCall.into(),
            GuardrailMode::PostCall.into(),
            [GuardrailMode::PreCall, GuardrailMode::PostCall].into(),
            GuardrailMode::ALL.into(),
        ];
        let mut rows = 0;
        for modes in &mode_sets {
            for default_on in [false, true] {
                for by in [
                    SelectedBy::BodyGuardrails,
                    SelectedBy::MetadataGuardrails,
                    SelectedBy::ModelLevel,
                    SelectedBy::NotSelected,
                ] {
                    for stream in [false, true] {
                        let mut body = json!({
                            "model": "m",
                            "stream": stream,
                            "messages": [{"role": "user", "content": "hi"}],
                            // A client trying to switch guardrails off: must change nothing.
                            "disable_global_guardrails": true,
                            "guardrails_disabled": [NAME],
                            "litellm_metadata": {"guardrails": {NAME: false}},
                        });
                        match by {
                            SelectedBy::BodyGuardrails => body["guardrails"] = json!([NAME]),
                            SelectedBy::MetadataGuardrails => {
                                body["metadata"] = json!({"guardrails": [NAME]})
                            }
                            _ => {
                                body["guardrails"] = json!(["some-other"]);
                                body["metadata"] = json!({"guardrails": {NAME: false}});
                            }
                        }
                        let bytes = serde_json::to_vec(&body).unwrap();
                        let mut parsed =
                            ParsedRequest::parse(CallType::ChatCompletions, bytes.into(), None)
                                .unwrap();
                        assert_eq!(parsed.stream(), stream);
                        if by == SelectedBy::ModelLevel {
                            parsed.selection_mut().merge([NAME]);
                        }
                        let spec = GuardrailSpec::new(NAME, *modes, default_on);
                        for event in GuardrailMode::ALL {
                            let want = modes.contains(event)
                                && (default_on || by != SelectedBy::NotSelected);
                            assert_eq!(
                                should_run(&spec, event, parsed.selection()),
                                want,
                                "modes={modes:?} default_on={default_on} by={by:?} stream={stream} event={event}"
                            );
                            rows += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(rows, 5 * 2 * 4 * 2 * 3);
    }

    #[test]
    fn selection_forms() {
        let s = GuardrailSelection::from_body(&json!({
            "guardrails": {"a": {"extra": 1}, "b": {}},
            "metadata": {"guardrails": ["b", "c", 7]}
        }));
        assert_eq!(s.names().collect::<Vec<_>>(), ["a", "b", "c"]);
        // LiteLLM's legacy `{"name": false}` switches nothing on (and nothing off).
        let s = GuardrailSelection::from_body(
            &json!({"metadata": {"guardrails": {"off": false, "on": true}}}),
        );
        assert_eq!(s.names().collect::<Vec<_>>(), ["on"]);
        let s = GuardrailSelection::from_body(&json!({"litellm_metadata": {"guardrails": ["lm"]}}));
        assert_eq!(s.names().collect::<Vec<_>>(), ["lm"]);
        let s = GuardrailSelection::from_body(&json!({"guardrails": "solo"}));
        assert_eq!(s.names().collect::<Vec<_>>(), ["solo"]);
        assert!(GuardrailSelection::from_body(&json!({"guardrails": null})).is_empty());
    }

    #[test]
    fn the_borrowed_view_selects_what_the_value_does() {
        let bodies = [
            r#"{"guardrails": {"a": {"extra": 1}, "b": {}}, "metadata": {"guardrails": ["b", "c", 7]}}"#,
            r#"{"metadata": {"guardrails": {"off": false, "on": true}}}"#,
            r#"{"guardrails": {"x": true, "y": false, "x": false, "y": true}}"#,
            r#"{"guardrails": ["a"], "guardrails": ["b"], "litellm_metadata": {"guardrails": "c"}}"#,
            r#"{"guardrails": null, "metadata": "not an object"}"#,
            r#"["guardrails"]"#,
        ];
        // Past the scan limit too: repeated keys, `false` entries, first place and last value.
        let mut long = String::from(r#"{"guardrails": {"#);
        for i in 0..40 {
            long.push_str(&format!(r#""g{}": {}, "#, i % 25, i % 3 == 0));
        }
        long.push_str(r#""g0": true}, "metadata": {"guardrails": ["g24", "m", "g3"]}}"#);
        let bodies = bodies.iter().copied().chain([long.as_str()]);
        for body in bodies {
            let value: Value = serde_json::from_str(body).unwrap();
            let view = JsonView::parse(body.as_bytes()).unwrap();
            assert_eq!(
                GuardrailSelection::from_view(&view),
                GuardrailSelection::from_body(&value),
                "{body}"
            );
        }
    }

    #[test]
    fn many_names_keep_their_order_and_stay_unique() {
        let mut s = GuardrailSelection::new();
        s.merge((0..1000).map(|i| format!("g{}", i % 600)));
        assert_eq!(s.names().count(), 600);
        assert_eq!(s.names().nth(599), Some("g599"));
        assert!(s.contains("g0") && s.contains("g599") && !s.contains("g600"));
        let scanned = GuardrailSelection::from_body(&serde_json::json!({"guardrails": ["g0"]}));
        let mut indexed = s.clone();
        indexed.insert("x");
        assert_ne!(scanned, indexed);
    }

    #[test]
    fn merge_dedups_and_keeps_body_first() {
        let mut s = GuardrailSelection::from_body(&json!({"guardrails": ["x", "y"]}));
        s.merge(["y", "z", "z"]);
        assert_eq!(s.names().collect::<Vec<_>>(), ["x", "y", "z"]);
    }

    #[test]
    fn mode_parsing() {
        assert_eq!("pre_call".parse(), Ok(GuardrailMode::PreCall));
        assert_eq!("during_call".parse(), Ok(GuardrailMode::DuringCall));
        assert_eq!("post_call".parse(), Ok(GuardrailMode::PostCall));
        assert!("logging_only".parse::<GuardrailMode>().is_err());
        let modes: GuardrailModes = [GuardrailMode::PostCall, GuardrailMode::PreCall].into();
        assert_eq!(
            modes.iter().collect::<Vec<_>>(),
            [GuardrailMode::PreCall, GuardrailMode::PostCall]
        );
    }
}
