//! Token usage, read from a response body or a stream's usage events, per call type.

use std::sync::LazyLock;

use memchr::memmem;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::CallType;
use crate::json::{JsonView, MemberName, Skip};
use crate::plain::Plain;

/// What [`Usage::from_document_end`] could tell of a document's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageFromEnd {
    /// The document has a top-level `usage` member: the usage in the last one, `None` when it
    /// holds no counts (as [`Usage::from_usage_bytes`] reads it).
    Member(Option<Usage>),
    /// Not told from the end: read the document another way.
    Unknown,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens (Anthropic: input plus cache reads and writes).
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input plus output.
    pub total_tokens: u64,
}

/// Where the last `"usage"` in `doc[after + 1..end]` starts. Searched forward in a window
/// before `end`, widened until it holds one or reaches `after`: `memchr`'s forward search
/// has a vector prefilter, its backward one steps through every byte (about four
/// instructions a byte), and the member is near the end.
fn last_usage_name(doc: &[u8], after: usize, end: usize) -> Option<usize> {
    static NAME: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
    let mut window = 1024;
    loop {
        let start = end.saturating_sub(window).max(after + 1);
        let found = start < end;
        if let Some(at) = found
            .then(|| NAME.find_iter(&doc[start..end]).last())
            .flatten()
        {
            return Some(start + at);
        }
        if start == after + 1 || !found {
            return None;
        }
        window = window.saturating_mul(4);
    }
}

/// The token counts of a `usage` object, read leniently as a `Value` map would be: a member
/// that is not a non-negative integer counts as absent (not as an error), and when a member
/// appears twice the last one counts.
#[derive(Debug, Default)]
pub(crate) struct Counts([Option<u64>; COUNT_KEYS.len()]);

/// The members [`Counts`] keeps.
const COUNT_KEYS: [&str; 7] = [
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
];

impl Counts {
    /// The usage these counts make in the shape of `call_type` (as
    /// [`Usage::from_usage_object`] on the parsed object).
    pub(crate) fn usage(&self, call_type: CallType) -> Option<Usage> {
        Usage::from_counts(call_type, |key| self.get(key))
    }

    /// The counts of a `usage` object's bytes: by hand when the object is plain
    /// ([`read_plain`](Counts::read_plain)), else by `serde_json`, which refuses what a
    /// whole-document parse refuses.
    pub(crate) fn read(bytes: &[u8]) -> serde_json::Result<Counts> {
        match Counts::read_plain(bytes) {
            Some(counts) => Ok(counts),
            None => crate::json::from_slice(bytes),
        }
    }

    /// The counts of a `usage` object of the plain shape every provider sends, read by hand:
    /// members whose names have no escapes or control characters and whose values are
    /// non-negative integers (digits only, within `u64`) or objects of such members (the
    /// `*_details`), with any JSON whitespace. That shape is a subset of JSON this reader checks
    /// completely, so its counts are those `serde_json` reads. `None` for anything else (a
    /// string, a float, an escape, deeper nesting, a syntax error...): the caller then reads the
    /// bytes with `serde_json`, which decides. Reading the usual 230-byte object through
    /// `serde_json` cost about 4,000 instructions, a sixth of the spend log's work per request.
    pub(crate) fn read_plain(bytes: &[u8]) -> Option<Counts> {
        let mut reader = Plain::new(bytes)?;
        let counts = Counts::read_plain_value(&mut reader)?;
        reader.end()?;
        Some(counts)
    }

    /// The counts of the plain `usage` object at `reader`'s cursor, as
    /// [`read_plain`](Counts::read_plain) reads a whole one.
    pub(crate) fn read_plain_value(reader: &mut Plain<'_>) -> Option<Counts> {
        let mut counts = Counts::default();
        reader.object(|reader, name| {
            let value = match reader.peek()? {
                b'0'..=b'9' => Some(reader.u64()?),
                b'{' => {
                    // The `*_details`: integers only.
                    reader.object(|reader, _| {
                        reader.peek()?.is_ascii_digit().then_some(())?;
                        reader.u64().map(drop)
                    })?;
                    None
                }
                _ => return None,
            };
            if let Some(i) = count_index(name.as_bytes()) {
                counts.0[i] = value;
            }
            Some(())
        })?;
        Some(counts)
    }

    fn get(&self, key: &str) -> Option<u64> {
        count_index(key.as_bytes()).and_then(|i| self.0[i])
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Counts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a usage object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Counts, A::Error> {
                let mut counts = Counts::default();
                while let Some(key) = map.next_key_seed(MemberName(&COUNT_KEYS))? {
                    match key {
                        // A number, or anything else (which counts as absent, as `as_u64` says).
                        Some(i) => counts.0[i] = map.next_value_seed(Count)?,
                        None => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(counts)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// The index of a count member's name in [`COUNT_KEYS`] (a match: faster than comparing the
/// name with each; a test holds the two lists equal).
fn count_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"prompt_tokens" => 0,
        b"completion_tokens" => 1,
        b"input_tokens" => 2,
        b"output_tokens" => 3,
        b"total_tokens" => 4,
        b"cache_read_input_tokens" => 5,
        b"cache_creation_input_tokens" => 6,
        _ => return None,
    })
}

/// One count, read as `Value::as_u64` would read the parsed value: a non-negative integer is
/// the count; anything else (a negative or fractional number, a string, `null`, an object or
/// array, which are skipped) is no count. Unlike parsing a `Value`, it builds nothing.
struct Count;

impl<'de> serde::de::DeserializeSeed<'de> for Count {
    type Value = Option<u64>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Count {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E>(self, v: u64) -> Result<Option<u64>, E> {
        Ok(Some(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Option<u64>, E> {
        Ok(u64::try_from(v).ok())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Option<u64>, A::Error> {
        Skip.visit_map(map).map(|_| None)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Option<u64>, A::Error> {
        Skip.visit_seq(seq).map(|_| None)
    }
}

fn num(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

impl Usage {
    /// The usage in a complete (non-streamed) response body.
    pub fn from_response(call_type: CallType, body: &Value) -> Option<Usage> {
        Usage::from_usage_object(call_type, body.get("usage")?)
    }

    /// The usage in a complete response body's bytes: what [`from_response`](Usage::from_response)
    /// gives for the parsed body, read without building a `Value` (the other members are
    /// checked as a parse checks them and kept nowhere; the counts are read by hand when the
    /// `usage` object is plain). `None` when the bytes are not one JSON document.
    pub fn from_response_bytes(call_type: CallType, body: &[u8]) -> Option<Usage> {
        /// The top-level `usage` member's text (the last one, if repeated, as a `Value` keeps
        /// it), every other member skipped.
        struct UsageMember;

        impl<'de> serde::de::Visitor<'de> for UsageMember {
            type Value = Option<&'de serde_json::value::RawValue>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a response object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut usage = None;
                while let Some(name) = map.next_key_seed(MemberName(&["usage"]))? {
                    match name {
                        Some(_) => usage = map.next_value()?,
                        None => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(usage)
            }
        }

        // `RawValue` passes over the usage as laxly as `IgnoredAny`; `Counts::read` is strict.
        let usage = crate::json::read_object(body, UsageMember)??;
        let counts = Counts::read(usage.get().as_bytes()).ok()?;
        Usage::from_counts(call_type, |key| counts.get(key))
    }

    /// The usage in a response body already parsed as a borrowed view.
    pub fn from_response_view(call_type: CallType, body: &JsonView<'_>) -> Option<Usage> {
        let usage = body
            .get("usage")
            .filter(|u| matches!(u, JsonView::Object(_)))?;
        Usage::from_counts(call_type, |key| usage.get(key).and_then(JsonView::as_u64))
    }

    /// A `usage` object's bytes (its raw JSON text) in the shape of `call_type`: the same
    /// counts as [`from_usage_object`](Usage::from_usage_object) on the parsed object, read
    /// without building a `Value` (only the count members are looked at; the others, such as
    /// `prompt_tokens_details`, are skipped). `None` when the bytes are not a JSON object or
    /// have no count.
    pub fn from_usage_bytes(call_type: CallType, usage: &[u8]) -> Option<Usage> {
        let counts = Counts::read(usage).ok()?;
        Usage::from_counts(call_type, |key| counts.get(key))
    }

    /// The usage in the last top-level `usage` member of a whole JSON document (a response
    /// body), read from the document's end: the last `"usage"` in it is found by a search of
    /// the bytes before the end (widened until it finds one), and read forward from there are
    /// the member's value and the members after it, to the closing brace and the end. An
    /// OpenAI response has `usage` last but for a member or two, so this reads a few hundred
    /// bytes where a scan from the start reads all of them.
    ///
    /// For a document that is a JSON object, the answer is the one reading all of it gives:
    /// a `"usage"` whose quote is not escaped opens a string, a string followed by `:` is a
    /// member name, and one followed by members and a single closing brace at the document's
    /// end is a member of the top-level object; it is the last one so named, since no
    /// `"usage"` comes later and the names after it are read without escapes. The members
    /// before it are not read. Anything this cannot tell (no such member, a value or a later
    /// name outside the plain subset the reader accepts, text that is not UTF-8) is
    /// [`UsageFromEnd::Unknown`]: read the document another way.
    pub fn from_document_end(call_type: CallType, doc: &[u8]) -> UsageFromEnd {
        let Some(open) = doc
            .iter()
            .position(|&b| !(b.is_ascii_whitespace() || matches!(b, 0xEF | 0xBB | 0xBF)))
        else {
            return UsageFromEnd::Unknown;
        };
        if doc[open] != b'{' {
            return UsageFromEnd::Unknown;
        }
        let mut end = doc.len();
        while let Some(at) = last_usage_name(doc, open, end) {
            end = at;
            let backslashes = doc[..at].iter().rev().take_while(|&&b| b == b'\\').count();
            if backslashes % 2 == 1 {
                // `\"usage"` inside a string.
                continue;
            }
            // The quote is a character boundary: the rest is UTF-8 when the document is.
            let Some(mut reader) = Plain::new(&doc[at..]) else {
                return UsageFromEnd::Unknown;
            };
            reader.string();
            if reader.peek() != Some(b':') {
                // A string value, not a name.
                continue;
            }
            return Self::read_member_to_end(call_type, reader).unwrap_or(UsageFromEnd::Unknown);
        }
        UsageFromEnd::Unknown
    }

    /// [`from_document_end`](Self::from_document_end) from the `:` after the name: the value,
    /// then the members after it, the closing brace and the end; `None` when not plain.
    fn read_member_to_end(call_type: CallType, mut reader: Plain<'_>) -> Option<UsageFromEnd> {
        reader.colon()?;
        let counts = if reader.peek()? == b'{' {
            Some(Counts::read_plain_value(&mut reader)?)
        } else {
            reader.skip()?;
            None
        };
        loop {
            match reader.peek()? {
                b',' => {
                    reader.comma()?;
                    reader.string()?;
                    reader.colon()?;
                    reader.skip()?;
                }
                b'}' => {
                    reader.close_object()?;
                    reader.end()?;
                    return Some(UsageFromEnd::Member(counts.and_then(|counts| {
                        Usage::from_counts(call_type, |key| counts.get(key))
                    })));
                }
                _ => return None,
            }
        }
    }

    /// A `usage` object in the shape of `call_type`.
    pub fn from_usage_object(call_type: CallType, usage: &Value) -> Option<Usage> {
        if !usage.is_object() {
            return None;
        }
        Usage::from_counts(call_type, |key| usage.get(key).and_then(Value::as_u64))
    }

    /// The usage from the token counts of a `usage` object (`count(key)`), in the shape of
    /// `call_type`.
    fn from_counts(call_type: CallType, count: impl Fn(&str) -> Option<u64>) -> Option<Usage> {
        let (prompt, completion) = match call_type {
            CallType::Responses => (count("input_tokens"), count("output_tokens")),
            CallType::AnthropicMessages => {
                let input = count("input_tokens");
                // Saturating: counts are the upstream's word, and a hostile one may send any.
                let cached = count("cache_read_input_tokens")
                    .unwrap_or(0)
                    .saturating_add(count("cache_creation_input_tokens").unwrap_or(0));
                (
                    input.map(|i| i.saturating_add(cached)),
                    count("output_tokens"),
                )
            }
            _ => (
                count("prompt_tokens").or_else(|| count("input_tokens")),
                count("completion_tokens").or_else(|| count("output_tokens")),
            ),
        };
        if prompt.is_none() && completion.is_none() {
            return None;
        }
        let (prompt, completion) = (prompt.unwrap_or(0), completion.unwrap_or(0));
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: count("total_tokens").unwrap_or(prompt.saturating_add(completion)),
        })
    }

    /// Folds one streamed event into the usage so far: chat `usage` chunks, the Responses
    /// `response.completed` (and `.incomplete`/`.failed`) event, Anthropic `message_start` and
    /// `message_delta` (whose `output_tokens` is cumulative).
    pub fn update_from_event(
        current: &mut Option<Usage>,
        call_type: CallType,
        event_type: Option<&str>,
        data: &Value,
    ) {
        match call_type {
            CallType::Responses => {
                let kind = event_type.or_else(|| data.get("type").and_then(Value::as_str));
                if matches!(
                    kind,
                    Some("response.completed" | "response.incomplete" | "response.failed")
                ) {
                    if let Some(u) = data
                        .get("response")
                        .and_then(|r| r.get("usage"))
                        .and_then(|u| Usage::from_usage_object(call_type, u))
                    {
                        *current = Some(u);
                    }
                }
            }
            CallType::AnthropicMessages => {
                let kind = event_type.or_else(|| data.get("type").and_then(Value::as_str));
                match kind {
                    Some("message_start") => {
                        if let Some(u) = data
                            .get("message")
                            .and_then(|m| m.get("usage"))
                            .and_then(|u| Usage::from_usage_object(call_type, u))
                        {
                            *current = Some(u);
                        }
                    }
                    Some("message_delta") => {
                        if let Some(u) = data.get("usage") {
                            let mut next = current.unwrap_or_default();
                            if let Some(out) = num(u.get("output_tokens")) {
                                next.completion_tokens = out;
                            }
                            if let Some(input) = num(u.get("input_tokens")) {
                                next.prompt_tokens = input
                                    .saturating_add(
                                        num(u.get("cache_read_input_tokens")).unwrap_or(0),
                                    )
                                    .saturating_add(
                                        num(u.get("cache_creation_input_tokens")).unwrap_or(0),
                                    );
                            }
                            next.total_tokens =
                                next.prompt_tokens.saturating_add(next.completion_tokens);
                            *current = Some(next);
                        }
                    }
                    _ => {}
                }
            }
            _ => {
                if let Some(u) = data
                    .get("usage")
                    .and_then(|u| Usage::from_usage_object(call_type, u))
                {
                    *current = Some(u);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use guardrail_tower_sse::SseDecoder;

    /// Read from the end, a document's usage is the one a read of the whole document gives,
    /// or `Unknown`: never another one. Decoys in strings, nested `usage` members, a `usage`
    /// string value, an escaped name after it, and what is not a JSON object.
    #[test]
    fn usage_from_the_document_end_is_the_whole_reads_or_unknown() {
        let chat = CallType::ChatCompletions;
        let read = |doc: &str| Usage::from_document_end(chat, doc.as_bytes());
        let counts = |p, c| {
            UsageFromEnd::Member(Some(Usage {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: p + c,
            }))
        };
        // An OpenAI response: the usage, then two members; a decoy in the content.
        let response = r#"{"id":"c","choices":[{"message":{"content":"say \"usage\":{\"prompt_tokens\":9} }"}}],"usage":{"prompt_tokens":45,"completion_tokens":47,"total_tokens":92,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0}},"service_tier":"default","system_fingerprint":"fp_mock"}"#;
        assert_eq!(read(response), counts(45, 47));
        // Whitespace wherever JSON allows it, and a byte-order mark before.
        assert_eq!(
            read(
                "\u{feff} {\n \"usage\" :\t{ \"prompt_tokens\" : 1 , \"completion_tokens\":2 } ,\n \"x\" : [ 1 , {\"a\":null} ] \n} \n"
            ),
            counts(1, 2)
        );
        // Far from the end, the name across the first windows' edges included.
        for pad in (1000..1040).chain([4090, 5000, 70_000]) {
            let doc = format!(
                r#"{{"usage":{{"prompt_tokens":1,"completion_tokens":2}},"pad":"{}"}}"#,
                "x".repeat(pad)
            );
            assert_eq!(read(&doc), counts(1, 2), "{pad}");
        }
        // A `"usage"` string value after the member is passed over.
        assert_eq!(
            read(r#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"model":"usage"}"#),
            counts(1, 2)
        );
        // A member without counts, or not an object: found, no usage.
        assert_eq!(read(r#"{"usage":null,"x":1}"#), UsageFromEnd::Member(None));
        assert_eq!(read(r#"{"usage":{}}"#), UsageFromEnd::Member(None));
        for doc in [
            // The last `"usage"` is nested: not told (a whole read gives 1 and 2).
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"x":{"usage":{"prompt_tokens":5}}}"#,
            // A later name with an escape may be `usage` (here it is, with 7).
            r#"{"usage":{"prompt_tokens":1},"\u0075sage":{"prompt_tokens":7}}"#,
            // A name ending in an escaped quote before `usage"`: passed over for the member
            // before it, whose later names then hold an escape.
            r#"{"usage":{"prompt_tokens":1},"a\"usage":{"prompt_tokens":3}}"#,
            // No such member; not an object; text after it; cut short; a brace too many.
            r#"{"id":"c"}"#,
            r#"[{"usage":{"prompt_tokens":1}}]"#,
            r#"{"usage":{"prompt_tokens":1}} x"#,
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"{"usage":{"prompt_tokens":1}}}"#,
            // Outside the plain subset: a fraction, a string count.
            r#"{"usage":{"prompt_tokens":1.5}}"#,
            r#"{"usage":{"prompt_tokens":"1"}}"#,
            "",
            r#""usage""#,
        ] {
            assert_eq!(read(doc), UsageFromEnd::Unknown, "{doc}");
        }
        // Not UTF-8 after the member.
        let mut bytes = br#"{"usage":{"prompt_tokens":1},"x":""#.to_vec();
        bytes.extend_from_slice(b"\xff\"}");
        assert_eq!(
            Usage::from_document_end(chat, &bytes),
            UsageFromEnd::Unknown
        );
        // The call type's names: Anthropic's cache counts are part of the input.
        assert_eq!(
            Usage::from_document_end(
                CallType::AnthropicMessages,
                br#"{"type":"message","usage":{"input_tokens":5,"cache_read_input_tokens":2,"output_tokens":6}}"#
            ),
            UsageFromEnd::Member(Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 6,
                total_tokens: 13
            }))
        );
    }

    #[test]
    fn usage_bytes_read_as_the_parsed_object_does() {
        let cases = [
            r#"{"prompt_tokens":45,"completion_tokens":47,"total_tokens":92,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}"#,
            r#"{"input_tokens":5,"output_tokens":6}"#,
            r#"{"input_tokens":5,"cache_read_input_tokens":2,"cache_creation_input_tokens":1,"output_tokens":6}"#,
            // The last of a repeated member counts; a float, a negative number, a string or an
            // object is no count; an escaped name is the same name.
            r#"{"prompt_tokens":1,"prompt_tokens":9,"completion_tokens":2.5,"total_tokens":-1}"#,
            r#"{"prompt_tokens":"3","completion_tokens":{"n":1},"\u0074otal_tokens":7,"output_tokens":4}"#,
            r#"{"prompt_tokens":true,"completion_tokens":[1,{"a":[2]}],"total_tokens":null,"input_tokens":0}"#,
            r#"{"prompt_tokens":-0,"completion_tokens":1e2,"total_tokens":18446744073709551615}"#,
            r#"{"prompt_tokens":18446744073709551616,"completion_tokens":"","output_tokens":[]}"#,
            // What a whole-document parse refuses in a member skipped or a count: so does
            // this reader (no usage), though `IgnoredAny` would let it through.
            r#"{"prompt_tokens":1,"x":1e400}"#,
            r#"{"prompt_tokens":1,"completion_tokens":["\ud800"]}"#,
            r#"{"prompt_tokens":1,"total_tokens":-1e400}"#,
            r#"{"unrelated":[1,2,{"prompt_tokens":3}]}"#,
            r#"{}"#,
            r#"[1]"#,
            r#"null"#,
            r#"{"prompt_tokens":1"#,
        ];
        for call_type in [
            CallType::ChatCompletions,
            CallType::Responses,
            CallType::AnthropicMessages,
        ] {
            for case in cases {
                let parsed = serde_json::from_str::<Value>(case)
                    .ok()
                    .and_then(|v| Usage::from_usage_object(call_type, &v));
                assert_eq!(
                    Usage::from_usage_bytes(call_type, case.as_bytes()),
                    parsed,
                    "{call_type:?} {case}"
                );
            }
        }
        assert_eq!(
            Usage::from_usage_bytes(CallType::ChatCompletions, cases[3].as_bytes()),
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 0,
                total_tokens: 9
            })
        );
    }

    /// One generated member value, and whether it is of the plain shape: integers and details
    /// objects, and every kind the plain reader leaves to `serde_json`.
    fn usage_value() -> impl Strategy<Value = (String, bool)> {
        let details =
            proptest::collection::vec(("[a-z_]{1,12}", 0u64..1000), 0..4).prop_map(|members| {
                let members: Vec<_> = members
                    .iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            });
        let plain = prop_oneof![
            (0u64..100_000).prop_map(|n| n.to_string()),
            Just(u64::MAX.to_string()),
            details,
        ]
        .prop_map(|value| (value, true));
        let other = proptest::sample::select(vec![
            "18446744073709551616",
            "007",
            "-1",
            "-0",
            "1.0",
            "1e2",
            "2E0",
            "1e400",
            "\"3\"",
            "null",
            "true",
            "[]",
            "[1]",
            "{\"a\":{\"b\":1}}",
            "{\"a\":\"x\"}",
            "{\"a\":1.5}",
            "\"\\ud800\"",
            "{\"a\":1,}",
            "{,}",
            "01",
            "1 2",
            "",
        ])
        .prop_map(|value| (value.to_owned(), false));
        prop_oneof![4 => plain, 1 => other]
    }

    /// A generated usage object, and whether it is of the plain shape: known and unknown names
    /// (some escaped or not ASCII), repeated names, JSON whitespace anywhere, sometimes cut
    /// short or with something after it.
    fn usage_object() -> impl Strategy<Value = (String, bool)> {
        let name = proptest::sample::select(vec![
            ("prompt_tokens", true),
            ("completion_tokens", true),
            ("total_tokens", true),
            ("input_tokens", true),
            ("output_tokens", true),
            ("cache_read_input_tokens", true),
            ("cache_creation_input_tokens", true),
            ("prompt_tokens_details", true),
            ("x", true),
            ("", true),
            ("\\u0070rompt_tokens", false),
            ("tokens\\n", false),
            ("tökens", false),
        ]);
        let space = proptest::sample::select(vec!["", "", "", " ", "\n", "\t", "\r\n  "]);
        let member = (name, usage_value(), space.clone(), space.clone());
        (proptest::collection::vec(member, 0..9), space, 0..12u8).prop_map(
            |(members, ws, damage)| {
                let plain = members
                    .iter()
                    .all(|((_, name), (_, value), ..)| *name && *value);
                let body: Vec<_> = members
                    .iter()
                    .map(|((name, _), (value, _), a, b)| format!("{a}\"{name}\"{b}:{a}{value}{b}"))
                    .collect();
                let mut text = format!("{ws}{{{}}}{ws}", body.join(","));
                match damage {
                    0 => {
                        let mut half = text.len() / 2;
                        while !text.is_char_boundary(half) {
                            half -= 1;
                        }
                        text.truncate(half);
                    }
                    1 => text.push('x'),
                    2 => text.push_str("{}"),
                    _ => {}
                }
                (text, plain && damage > 2)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// The counts read from a usage object's bytes are those of the parsed object (`None`
        /// when `serde_json` refuses the bytes), whichever reader reads them; and the plain
        /// reader reads every object of the plain shape, so the comparison covers it.
        #[test]
        fn usage_bytes_read_as_the_parsed_object_whatever_the_shape((text, plain) in usage_object()) {
            let parsed = serde_json::from_str::<Value>(&text).ok();
            for call_type in [CallType::ChatCompletions, CallType::Responses, CallType::AnthropicMessages] {
                let want = parsed.as_ref().and_then(|v| Usage::from_usage_object(call_type, v));
                prop_assert_eq!(Usage::from_usage_bytes(call_type, text.as_bytes()), want, "{}", text);
            }
            let read = Counts::read_plain(text.as_bytes());
            if plain {
                prop_assert!(read.is_some(), "the plain reader left {}", text);
            }
            if let Some(counts) = read {
                let value = parsed.as_ref().and_then(Value::as_object);
                prop_assert!(value.is_some(), "the plain reader read what serde_json refuses: {}", text);
                for (i, key) in COUNT_KEYS.iter().enumerate() {
                    prop_assert_eq!(counts.0[i], value.and_then(|o| o.get(*key)).and_then(Value::as_u64), "{} in {}", key, text);
                }
            }
        }
    }

    /// `count_index` knows exactly the names of `COUNT_KEYS`, at their places.
    #[test]
    fn count_index_agrees_with_the_count_keys() {
        for (i, key) in COUNT_KEYS.iter().enumerate() {
            assert_eq!(count_index(key.as_bytes()), Some(i), "{key}");
        }
        for other in ["", "prompt_tokens_details", "Prompt_tokens", "tokens"] {
            assert_eq!(count_index(other.as_bytes()), None, "{other}");
        }
    }

    /// Counts are the upstream's word: sums of them saturate instead of wrapping (or
    /// panicking), whatever a hostile upstream sends.
    #[test]
    fn sums_of_counts_saturate() {
        let max = u64::MAX;
        let chat = format!(r#"{{"prompt_tokens":{max},"completion_tokens":2}}"#);
        assert_eq!(
            Usage::from_usage_bytes(CallType::ChatCompletions, chat.as_bytes()),
            Some(Usage {
                prompt_tokens: max,
                completion_tokens: 2,
                total_tokens: max
            })
        );
        let anthropic = format!(
            r#"{{"input_tokens":{max},"cache_read_input_tokens":{max},"cache_creation_input_tokens":1,"output_tokens":3}}"#
        );
        assert_eq!(
            Usage::from_usage_bytes(CallType::AnthropicMessages, anthropic.as_bytes()),
            Some(Usage {
                prompt_tokens: max,
                completion_tokens: 3,
                total_tokens: max
            })
        );
    }

    #[test]
    fn from_bodies() {
        assert_eq!(
            Usage::from_response(
                CallType::ChatCompletions,
                &json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
            ),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                total_tokens: 7
            })
        );
        assert_eq!(
            Usage::from_response(
                CallType::Responses,
                &json!({"usage": {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11}})
            ),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 6,
                total_tokens: 11
            })
        );
        assert_eq!(
            Usage::from_response(
                CallType::AnthropicMessages,
                &json!({"usage": {"input_tokens": 5, "cache_read_input_tokens": 2, "output_tokens": 6}})
            ),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 6,
                total_tokens: 13
            })
        );
        assert_eq!(
            Usage::from_response(
                CallType::Embeddings,
                &json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}})
            ),
            Some(Usage {
                prompt_tokens: 8,
                completion_tokens: 0,
                total_tokens: 8
            })
        );
        assert_eq!(
            Usage::from_response(CallType::ChatCompletions, &json!({"usage": null})),
            None
        );
    }

    #[test]
    fn typed_view_agrees_with_the_value_path() {
        let bodies = [
            (
                CallType::ChatCompletions,
                json!({"id": "x", "choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
            ),
            (
                CallType::Responses,
                json!({"output": [], "usage": {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11}}),
            ),
            (
                CallType::AnthropicMessages,
                json!({"content": [], "usage": {"input_tokens": 5, "cache_read_input_tokens": 2, "output_tokens": 6}}),
            ),
            (
                CallType::Embeddings,
                json!({"data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}),
            ),
            (CallType::ChatCompletions, json!({"usage": null})),
            (CallType::ChatCompletions, json!({"choices": []})),
        ];
        for (call_type, body) in bodies {
            let bytes = serde_json::to_vec(&body).unwrap();
            assert_eq!(
                Usage::from_response_bytes(call_type, &bytes),
                Usage::from_response(call_type, &body),
                "{body}"
            );
        }
        // Counts that are not integers, a usage that is not an object, a repeated usage (the
        // last counts), and what a whole-document parse refuses, in the usage or beside it.
        let raw = [
            r#"{"usage":{"prompt_tokens":2.5,"completion_tokens":3}}"#,
            r#"{"usage":5}"#,
            r#"{"usage":{"prompt_tokens":1},"id":"x","usage":{"prompt_tokens":2}}"#,
            r#"{"x":1e400,"usage":{"prompt_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1,"x":"\ud800"}}"#,
            r#"{"usage":{"prompt_tokens":1}} x"#,
            r#"[{"usage":{"prompt_tokens":1}}]"#,
        ];
        for body in raw {
            let parsed = serde_json::from_str::<Value>(body).ok();
            assert_eq!(
                Usage::from_response_bytes(CallType::ChatCompletions, body.as_bytes()),
                parsed.and_then(|v| Usage::from_response(CallType::ChatCompletions, &v)),
                "{body}"
            );
        }
        assert_eq!(
            Usage::from_response_bytes(CallType::ChatCompletions, raw[2].as_bytes())
                .map(|u| u.prompt_tokens),
            Some(2)
        );
    }

    fn from_stream(call_type: CallType, stream: &str) -> Option<Usage> {
        let mut decoder = SseDecoder::new();
        decoder.push(bytes::Bytes::copy_from_slice(stream.as_bytes()));
        let mut usage = None;
        while let Some(event) = decoder.next_event().unwrap() {
            if let Some(Ok(data)) = event.data().map(serde_json::from_slice::<Value>) {
                Usage::update_from_event(&mut usage, call_type, event.event_type(), &data);
            }
        }
        usage
    }

    #[test]
    fn from_recorded_streams() {
        assert_eq!(
            from_stream(
                CallType::ChatCompletions,
                include_str!("../testdata/openai_chat.sse")
            ),
            Some(Usage {
                prompt_tokens: 19,
                completion_tokens: 21,
                total_tokens: 40
            })
        );
        assert_eq!(
            from_stream(
                CallType::Responses,
                include_str!("../testdata/openai_responses.sse")
            ),
            Some(Usage {
                prompt_tokens: 37,
                completion_tokens: 11,
                total_tokens: 48
            })
        );
        assert_eq!(
            from_stream(
                CallType::AnthropicMessages,
                include_str!("../testdata/anthropic_messages.sse")
            ),
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 15,
                total_tokens: 40
            })
        );
    }
}
