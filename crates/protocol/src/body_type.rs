//! What a `content-type` header says about a body.

use http::HeaderValue;

/// What a `content-type` header says about a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyType {
    /// `application/json` or any `*+json`.
    Json,
    /// `text/event-stream`.
    EventStream,
    /// Any other media type.
    Other,
    /// No `content-type`, or one with no readable media type.
    Unspecified,
}

impl BodyType {
    /// Classifies a `content-type` value by its media type (parameters and case ignored).
    pub fn of(content_type: Option<&HeaderValue>) -> BodyType {
        // The values nearly every request and response carry, as written, before the general
        // case (compared without case and without a lowercase copy).
        match content_type.map(HeaderValue::as_bytes) {
            Some(b"application/json") => return BodyType::Json,
            Some(b"text/event-stream") => return BodyType::EventStream,
            _ => {}
        }
        let Some(essence) = content_type
            .and_then(|ct| ct.to_str().ok())
            .and_then(|ct| ct.split(';').next())
            .map(str::trim)
            .filter(|e| !e.is_empty())
        else {
            return BodyType::Unspecified;
        };
        let is = |name: &str| essence.eq_ignore_ascii_case(name);
        let suffix = essence
            .len()
            .checked_sub(5)
            .and_then(|at| essence.get(at..));
        if is("text/event-stream") {
            BodyType::EventStream
        } else if is("application/json") || suffix.is_some_and(|s| s.eq_ignore_ascii_case("+json"))
        {
            BodyType::Json
        } else {
            BodyType::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_types() {
        let of = |v: &'static str| BodyType::of(Some(&HeaderValue::from_static(v)));
        assert_eq!(of("application/json"), BodyType::Json);
        assert_eq!(of("Application/JSON; charset=utf-8"), BodyType::Json);
        assert_eq!(of("application/vnd.api+json"), BodyType::Json);
        assert_eq!(
            of("text/event-stream; charset=utf-8"),
            BodyType::EventStream
        );
        assert_eq!(of("APPLICATION/VND.API+JSON ; q=1"), BodyType::Json);
        assert_eq!(of("Text/Event-Stream"), BodyType::EventStream);
        assert_eq!(of("text/event-streams"), BodyType::Other);
        assert_eq!(of("application/json5"), BodyType::Other);
        assert_eq!(of("json"), BodyType::Other);
        assert_eq!(of("text/html"), BodyType::Other);
        assert_eq!(of(" ; x=y"), BodyType::Unspecified);
        assert_eq!(BodyType::of(None), BodyType::Unspecified);
    }
}
