//! A borrowed view of a JSON document: what the hot path reads (the request's `model`,
//! `stream`, `user` and guardrail selection; the guardrail texts of a request or response)
//! without building a `serde_json::Value`.
//!
//! Strings borrow from the input unless they contain escapes, and objects are vectors of
//! entries, so a view costs one allocation per object and array and none per key or string.
//! It is parsed by `serde_json` itself, so it accepts and rejects exactly the documents a
//! `Value` does (syntax, UTF-8, escapes, surrogates, the nesting limit, trailing characters).
//!
//! Lookups follow `serde_json::Value`: when an object repeats a key, the last value wins. An
//! upstream reads duplicated keys the same way, so a guardrail always checks what the model
//! will read.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Whether `s` is written in JSON as it is, between quotes: it has no quote, backslash or
/// character below U+0020, the characters a JSON writer (`serde_json` among them) escapes.
/// The search the hand reader uses for a string's end.
pub fn is_plain_string(s: &str) -> bool {
    crate::plain::plain_string_end(s.as_bytes()).is_none()
}

/// A JSON value borrowing from the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonView<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as `serde_json` reads it.
    Number(serde_json::Number),
    /// A string, borrowed from the input unless it had escapes.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<JsonView<'a>>),
    /// An object's entries in document order (a repeated key appears as often as written).
    Object(Vec<(Cow<'a, str>, JsonView<'a>)>),
}

impl<'a> JsonView<'a> {
    /// Parses a whole document.
    ///
    /// The document's UTF-8 is checked once ([`utf8`](crate::utf8)), rather than by
    /// `serde_json` string by string; a document that fails the check is parsed from the bytes,
    /// so the error is `serde_json`'s own, with its position.
    pub fn parse(bytes: &'a [u8]) -> serde_json::Result<JsonView<'a>> {
        from_slice(bytes)
    }

    /// The value of `key` if this is an object that has it (the last one, if repeated).
    pub fn get(&self, key: &str) -> Option<&JsonView<'a>> {
        match self {
            JsonView::Object(entries) => {
                entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// The number, if this is a non-negative integer (as `serde_json::Value::as_u64`).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            JsonView::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            JsonView::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value written as compact JSON, exactly as `serde_json` writes the `Value` of the
    /// same document (with `preserve_order`): a key an object repeats is written once, at its
    /// first place, with its last value.
    pub fn to_json_string(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) {
        fn string(s: &str, out: &mut String) {
            out.push_str(&serde_json::to_string(s).expect("a string always serializes"));
        }
        match self {
            JsonView::Null => out.push_str("null"),
            JsonView::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            JsonView::Number(n) => out.push_str(&n.to_string()),
            JsonView::String(s) => string(s, out),
            JsonView::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            JsonView::Object(entries) => {
                out.push('{');
                let mut first = true;
                for (i, (key, _)) in entries.iter().enumerate() {
                    if entries[..i].iter().any(|(k, _)| k == key) {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    string(key, out);
                    out.push(':');
                    self.get(key)
                        .expect("the key is in the object")
                        .write_json(out);
                }
                out.push('}');
            }
        }
    }
}

/// An object key, borrowed unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// An object member's name as its position in `names` (`None`: another name), read without
/// allocating; an escaped name is decoded by the parser first, so `"\u0075sage"` is `usage`.
/// For `MapAccess::next_key_seed` in readers that pick a few members out of an object.
pub(crate) struct MemberName(pub(crate) &'static [&'static str]);

impl<'de> de::DeserializeSeed<'de> for MemberName {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for MemberName {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Option<usize>, E> {
        // A name read is compared with every known one; most differ in length or first byte,
        // and comparing those first spares a `memcmp` call each (several per event of a stream).
        let (len, first) = (name.len(), name.as_bytes().first());
        Ok(self.0.iter().position(|known| {
            known.len() == len && known.as_bytes().first() == first && *known == name
        }))
    }
}

/// The `Visitor` methods for numbers and `null`, each giving `$value`: for the visitors that
/// keep nothing of those ([`Skip`], and the seeds that read one kind of value out of any).
macro_rules! skip_numbers_and_null {
    ($value:expr) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

pub(crate) use skip_numbers_and_null;

/// Any JSON value, checked as strictly as parsing it into a `Value` (or a [`JsonView`]) checks
/// it, and kept nowhere. `serde::de::IgnoredAny` is laxer with `serde_json`: it passes over
/// numbers and escapes without decoding them, so it accepts `1e400` and a lone surrogate such
/// as `"\ud800"`, which a whole-document parse refuses. The readers that pick a few members
/// out of a document skip the others with this, so that they accept exactly the documents the
/// general readers accept.
pub(crate) struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Skip, D::Error> {
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    skip_numbers_and_null!(Skip);

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// A whole document read as one object by `visitor`, as strictly as `serde_json` reads it;
/// `None` when it is not UTF-8, not JSON, has anything after the object, or the visitor gives
/// up. For the readers that pick a few members out of a document.
pub(crate) fn read_object<'de, V: Visitor<'de>>(bytes: &'de [u8], visitor: V) -> Option<V::Value> {
    let text = crate::utf8(bytes)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = de.deserialize_map(visitor).ok()?;
    de.end().ok()?;
    Some(value)
}

/// `serde_json::from_slice`, accepting and rejecting the same documents, with the document's
/// UTF-8 checked once ([`utf8`](crate::utf8)), instead of string by string (fewer
/// instructions for any document with strings); a document that fails the check is parsed from
/// the bytes, so the error is `serde_json`'s own, with its position.
pub fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match crate::utf8(bytes) {
        Some(text) => serde_json::from_str(text),
        None => serde_json::from_slice(bytes),
    }
}

impl<'de> Deserialize<'de> for JsonView<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ViewVisitor;
        impl<'de> Visitor<'de> for ViewVisitor {
            type Value = JsonView<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsonView<'de>, E> {
                Ok(JsonView::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<JsonView<'de>, E> {
                Ok(JsonView::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonView<'de>, E> {
                Ok(JsonView::Number(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonView<'de>, E> {
                Ok(JsonView::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonView<'de>, E> {
                // serde_json never yields a non-finite f64 from a document.
                Ok(serde_json::Number::from_f64(v).map_or(JsonView::Null, JsonView::Number))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<JsonView<'de>, E> {
                Ok(JsonView::String(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonView<'de>, E> {
                Ok(JsonView::String(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<JsonView<'de>, E> {
                Ok(JsonView::String(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonView<'de>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(JsonView::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonView<'de>, A::Error> {
                // serde_json gives no size hint: room for eight members (a stream event's
                // top level has about ten) saves most of the regrowths from zero.
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some(Key(key)) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(JsonView::Object(entries))
            }
        }
        deserializer.deserialize_any(ViewVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn strings_borrow_unless_escaped() {
        let view = JsonView::parse(br#"{"a": "plain", "b\n": "esc\u00e9"}"#).unwrap();
        let JsonView::Object(entries) = &view else {
            panic!("{view:?}")
        };
        assert!(matches!(entries[0].0, Cow::Borrowed("a")));
        assert!(matches!(
            entries[0].1,
            JsonView::String(Cow::Borrowed("plain"))
        ));
        assert!(matches!(&entries[1].0, Cow::Owned(k) if k == "b\n"));
        assert_eq!(
            view.get("b\n").and_then(JsonView::as_str),
            Some("esc\u{e9}")
        );
    }

    #[test]
    fn the_last_duplicate_wins_as_in_serde_json() {
        let body = br#"{"model": "first", "n": 1, "model": "last"}"#;
        let view = JsonView::parse(body).unwrap();
        let value: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(view.get("model").and_then(JsonView::as_str), Some("last"));
        assert_eq!(value["model"], "last");
        assert!(view.get("missing").is_none());
        assert!(JsonView::parse(b"[1]").unwrap().get("0").is_none());
        for n in ["12", "-3", "1.5", "18446744073709551615", "\"7\""] {
            let view = JsonView::parse(n.as_bytes()).unwrap();
            let value: Value = serde_json::from_str(n).unwrap();
            assert_eq!(view.as_u64(), value.as_u64(), "{n}");
        }
    }

    #[test]
    fn writes_json_as_a_value_does() {
        let docs = [
            r#"{"a": [1, -2, 3.5e3, 0.1, true, false, null, {"b": {}}], "s": "q\"uote \u00e9 \ud83d\ude00"}"#,
            r#"{"k": 1, "j": 2, "k": 3}"#,
            r#"[18446744073709551615, -9223372036854775808, 1e-7, 12345678901234567890123]"#,
            r#""\u0000\t""#,
        ];
        for doc in docs {
            let view = JsonView::parse(doc.as_bytes()).unwrap();
            let value: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(view.to_json_string(), value.to_string(), "{doc}");
        }
    }

    #[test]
    fn accepts_and_rejects_what_a_value_does() {
        let cases: &[&[u8]] = &[
            br#"{"a": [1, -2, 3.5e3, true, false, null, {"b": {}}]}"#,
            br#""\ud83d\ude00""#,
            b"  [] ",
            br#"{"a": "\ud800"}"#,
            b"{\"a\": \"\xff\"}",
            b"{\"a\": \"tab\tinside\"}",
            br#"{"a": 1,}"#,
            br#"{"a": 1} x"#,
            br#"{"a": 1e400}"#,
            b"",
            &[b'['; 200],
        ];
        for case in cases {
            let view = JsonView::parse(case).map(|_| ()).map_err(|e| e.to_string());
            let value = serde_json::from_slice::<Value>(case)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(view, value, "{}", String::from_utf8_lossy(case));
        }
    }
}
