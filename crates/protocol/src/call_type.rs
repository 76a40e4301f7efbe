//! The endpoint a request is for, known from its path.

use std::fmt;

/// The kind of LLM call a request is, derived from its path.
///
/// The call type decides where the guardrail text lives in the request and the response, what an
/// error looks like on the wire, and how an in-stream error event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallType {
    /// OpenAI chat completions: `/v1/chat/completions`, `/chat/completions`.
    ChatCompletions,
    /// The OpenAI Responses API: `/v1/responses`.
    Responses,
    /// Anthropic messages: `/v1/messages`.
    AnthropicMessages,
    /// Legacy text completions: `/v1/completions`.
    TextCompletions,
    /// Embeddings: `/v1/embeddings`.
    Embeddings,
    /// Anything else. No guardrail text is extracted; errors use the OpenAI shape.
    Other,
}

/// The wire shape of an error body for a call type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorShape {
    /// `{"error": {"message", "type", "param", "code"}}`
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`
    Anthropic,
}

impl CallType {
    /// Every call type, in declaration order.
    pub const ALL: [CallType; 6] = [
        CallType::ChatCompletions,
        CallType::Responses,
        CallType::AnthropicMessages,
        CallType::TextCompletions,
        CallType::Embeddings,
        CallType::Other,
    ];

    /// Classifies a request path.
    ///
    /// Matching is on the path's suffix so that prefixed mounts (`/openai/v1/chat/completions`,
    /// `/anthropic/v1/messages`) are recognised; a trailing `/` is ignored.
    ///
    /// ```
    /// use guardrail_tower_protocol::CallType;
    /// assert_eq!(CallType::from_path("/v1/chat/completions"), CallType::ChatCompletions);
    /// assert_eq!(CallType::from_path("/chat/completions"), CallType::ChatCompletions);
    /// assert_eq!(CallType::from_path("/v1/responses"), CallType::Responses);
    /// assert_eq!(CallType::from_path("/v1/messages"), CallType::AnthropicMessages);
    /// assert_eq!(CallType::from_path("/v1/models"), CallType::Other);
    /// ```
    pub fn from_path(path: &str) -> Self {
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.ends_with("/chat/completions") {
            CallType::ChatCompletions
        } else if path.ends_with("/responses") {
            CallType::Responses
        } else if path.ends_with("/v1/messages") || path == "/messages" {
            // `/v1/threads/{id}/messages` (Assistants) ends in `/messages` but not `/v1/messages`.
            CallType::AnthropicMessages
        } else if path.ends_with("/completions") {
            CallType::TextCompletions
        } else if path.ends_with("/embeddings") {
            CallType::Embeddings
        } else {
            CallType::Other
        }
    }

    /// Classifies a request by its method and path: an LLM call is a `POST`; any other method
    /// (`GET /v1/chat/completions` lists stored completions, for one) is [`CallType::Other`].
    ///
    /// ```
    /// use guardrail_tower_protocol::CallType;
    /// use http::Method;
    /// assert_eq!(CallType::of(&Method::POST, "/v1/responses"), CallType::Responses);
    /// assert_eq!(CallType::of(&Method::GET, "/v1/chat/completions"), CallType::Other);
    /// ```
    pub fn of(method: &http::Method, path: &str) -> Self {
        if method == http::Method::POST {
            CallType::from_path(path)
        } else {
            CallType::Other
        }
    }

    /// Whether the guardrails can read this endpoint's texts (every call type but
    /// [`CallType::Other`]).
    pub fn has_text_view(self) -> bool {
        self != CallType::Other
    }

    /// The call type's name as LiteLLM writes it in `LiteLLM_SpendLogs.call_type`, so existing
    /// queries and dashboards carry over.
    pub fn as_str(self) -> &'static str {
        match self {
            CallType::ChatCompletions => "acompletion",
            CallType::Responses => "aresponses",
            CallType::AnthropicMessages => "anthropic_messages",
            CallType::TextCompletions => "atext_completion",
            CallType::Embeddings => "aembedding",
            CallType::Other => "pass_through_endpoint",
        }
    }

    /// The error body shape of this endpoint.
    pub fn error_shape(self) -> ErrorShape {
        match self {
            CallType::AnthropicMessages => ErrorShape::Anthropic,
            _ => ErrorShape::OpenAi,
        }
    }
}

impl fmt::Display for CallType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let cases = [
            ("/v1/chat/completions", CallType::ChatCompletions),
            ("/chat/completions", CallType::ChatCompletions),
            ("/v1/chat/completions/", CallType::ChatCompletions),
            (
                "/openai/deployments/gpt/chat/completions",
                CallType::ChatCompletions,
            ),
            ("/v1/responses", CallType::Responses),
            ("/responses", CallType::Responses),
            ("/v1/messages", CallType::AnthropicMessages),
            ("/anthropic/v1/messages", CallType::AnthropicMessages),
            ("/v1/threads/t_1/messages", CallType::Other),
            ("/v1/completions", CallType::TextCompletions),
            ("/completions", CallType::TextCompletions),
            ("/v1/embeddings", CallType::Embeddings),
            ("/embeddings", CallType::Embeddings),
            ("/v1/models", CallType::Other),
            ("/", CallType::Other),
            ("", CallType::Other),
        ];
        for (path, want) in cases {
            assert_eq!(CallType::from_path(path), want, "{path}");
        }
    }

    #[test]
    fn error_shapes() {
        assert_eq!(
            CallType::AnthropicMessages.error_shape(),
            ErrorShape::Anthropic
        );
        for ct in CallType::ALL
            .into_iter()
            .filter(|c| *c != CallType::AnthropicMessages)
        {
            assert_eq!(ct.error_shape(), ErrorShape::OpenAi);
        }
    }
}
