//! What the layer takes from a request before the call: the guardrails that apply to its
//! response, and the context to check it with.

use std::sync::Arc;

use bytes::Bytes;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, Error, GuardrailLog, GuardrailMode, GuardrailSelection, Guardrails, Layer,
    ParsedRequest, Prepare, Prepared, RequestMeta, ResponseReport, enter_layer,
};
use http::HeaderValue;
use http::Request;
use http::header::ACCEPT_ENCODING;
use http_body_util::Full;

/// What the layer keeps from the request to check the response.
#[derive(Debug)]
pub(crate) struct StreamContext {
    pub(crate) call_type: CallType,
    pub(crate) selection: GuardrailSelection,
    pub(crate) meta: Arc<RequestMeta>,
    pub(crate) log: GuardrailLog,
    pub(crate) report: Option<ResponseReport>,
    /// The first post-call guardrail that cannot read an image and does not let one pass
    /// ([`ConfiguredGuardrail::passes_media`](guardrail_tower_core::ConfiguredGuardrail::passes_media)):
    /// an image in the response is then refused ([`image_refused`]).
    pub(crate) media_blind: Option<Arc<str>>,
}

/// The error that ends a response with an image the model made while `guardrail`, which
/// cannot read it, applies: a 502 before the head, the in-band error after it.
pub(crate) fn image_refused(guardrail: &str) -> Error {
    Error::new(
        http::StatusCode::BAD_GATEWAY,
        format!(
            "the upstream sent an image, which guardrail '{guardrail}' cannot read; refused (set \
             media_fallback: fail_open on the guardrail to let images pass unchecked)"
        ),
    )
    .with_code("unreadable_upstream_response")
}

/// Captures, once the request is parsed, what checking the response needs; `None` when the
/// gate selects no post_call guardrail (the response then passes through untouched).
#[derive(Debug)]
pub(crate) struct Capture {
    pub(crate) guardrails: Guardrails,
}

impl Prepare for Capture {
    type Output = Option<StreamContext>;

    fn prepare(
        self,
        request: &mut Request<Full<Bytes>>,
    ) -> Result<Prepared<Option<StreamContext>>, Error> {
        enter_layer(request, Layer::Streaming)?;
        Ok(Prepared::new(self.capture(request)?))
    }
}

impl Capture {
    fn capture(self, request: &mut Request<Full<Bytes>>) -> Result<Option<StreamContext>, Error> {
        let Some(parsed) = request.extensions().get::<ParsedRequest>() else {
            return Ok(None);
        };
        if !self
            .guardrails
            .any_selected(GuardrailMode::PostCall, parsed.selection())
        {
            return Ok(None);
        }
        if !parsed.call_type().has_text_view() {
            // A response no text view can read: refuse before the upstream is called.
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                format!(
                    "post-call guardrails apply to this request, but responses of {} are not a \
                     format they can read; refused (serve this route without guardrails to pass \
                     it through)",
                    request.uri().path()
                ),
            )
            .with_code("unsupported_endpoint"));
        }
        if let Some(field) = parsed.unread_output_field() {
            // Log probabilities' tokens or spoken audio would repeat the response's text beside
            // it, where no guardrail reads.
            let what = match field {
                "audio" | "modalities" => "spoken audio",
                _ => "log probabilities",
            };
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                format!(
                    "post-call guardrails apply to this request, but '{field}' asks for {what}, \
                     which would repeat the response's text where no guardrail reads it; ask \
                     without it"
                ),
            )
            .with_param(field)
            .with_code("unreadable_content"));
        }
        // An image the model makes can show any text, where no text guardrail reads it.
        let blind: Option<Arc<str>> = self
            .guardrails
            .selected(GuardrailMode::PostCall, parsed.selection())
            .find(|g| !g.passes_media(Side::Response))
            .map(|g| Arc::from(g.name()));
        if let Some(field) = parsed.image_output_field() {
            if let Some(guardrail) = &blind {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    format!(
                        "post-call guardrails apply to this request, but '{field}' asks for \
                         images, which guardrail '{}' cannot read; ask without it, or set \
                         media_fallback: fail_open on the guardrail to let images pass unchecked",
                        guardrail
                    ),
                )
                .with_param(field)
                .with_code("unreadable_content"));
            }
        }
        // The headers are copied for the guardrails only when one of them reads them.
        let reads_headers = self
            .guardrails
            .selected(GuardrailMode::PostCall, parsed.selection())
            .any(|g| g.reads_request_headers());
        let Some(meta) = RequestMeta::shared_from_request_for(request, reads_headers) else {
            return Ok(None);
        };
        let context = StreamContext {
            call_type: parsed.call_type(),
            selection: parsed.selection().clone(),
            meta,
            log: GuardrailLog::get_or_insert(request),
            report: ResponseReport::of(request).cloned(),
            media_blind: blind,
        };
        // The guardrails read the response: ask for it uncompressed.
        request
            .headers_mut()
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        Ok(Some(context))
    }
}
