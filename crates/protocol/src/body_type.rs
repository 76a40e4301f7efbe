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
        let Some(essence) = content_type
            .and_then(|ct| ct.to_str().ok())
            .and_then(|ct| ct.split(';').next())
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
        else {
            return BodyType::Unspecified;
        };
        if essence == "text/event-stream" {
            BodyType::EventStream
        } else if essence == "application/json" || essence.ends_with("+json") {
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
        assert_eq!(of("text/html"), BodyType::Other);
        assert_eq!(of(" ; x=y"), BodyType::Unspecified);
        assert_eq!(BodyType::of(None), BodyType::Unspecified);
    }
}
