use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::body::ResponseBody;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    BoxError, BufferedCall, CallOutcome, Error, GuardrailLog, GuardrailMode, Guardrails, Layer,
    ParsedRequest, Prepare, Prepared, RequestMeta, enter_layer,
};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

/// `x-litellm-applied-guardrails`: the guardrails that ran on the request, comma-separated (the
/// header LiteLLM sends).
pub const APPLIED_GUARDRAILS: HeaderName = HeaderName::from_static("x-litellm-applied-guardrails");

/// `x-guardrails-duration-ms`: the time the request's guardrails added, in milliseconds.
pub const GUARDRAILS_DURATION_MS: HeaderName = HeaderName::from_static("x-guardrails-duration-ms");

pin_project! {
    /// The response future of [`PreCallGuardrail`](crate::PreCallGuardrail).
    pub struct ResponseFuture<B, S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        call: BufferedCall<B, S, Checks>,
        response_headers: bool,
    }
}

impl<B, S> ResponseFuture<B, S>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(call: BufferedCall<B, S, Checks>, response_headers: bool) -> Self {
        ResponseFuture {
            call,
            response_headers,
        }
    }
}

/// The pre-call step: start the `pre_call` guardrails (waited for before the call) and the
/// `during_call` ones (run beside it).
#[derive(Debug)]
pub(crate) struct Checks {
    pub(crate) guardrails: Guardrails,
}

/// Where this request's entries start in its guardrail log.
#[derive(Debug)]
pub(crate) struct LogMark {
    log: GuardrailLog,
    start: usize,
}

impl Prepare for Checks {
    type Output = LogMark;

    fn prepare(self, request: &mut Request<Full<Bytes>>) -> Result<Prepared<LogMark>, Error> {
        enter_layer(request, Layer::PreCall)?;
        let log = GuardrailLog::get_or_insert(request);
        let mark = LogMark {
            start: log.len(),
            log: log.clone(),
        };
        let Some(parsed) = request.extensions().get::<ParsedRequest>() else {
            return Ok(Prepared::new(mark));
        };
        let selection = parsed.selection();
        let (pre, during) = (
            self.guardrails
                .any_selected(GuardrailMode::PreCall, selection),
            self.guardrails
                .any_selected(GuardrailMode::DuringCall, selection),
        );
        if !pre && !during {
            return Ok(Prepared::new(mark));
        }
        if !parsed.call_type().has_text_view() {
            // A route no text view knows: the guardrails that apply could read nothing.
            return Err(unreadable_route(request.uri().path()));
        }
        if let Some(field) = parsed.token_ids_field() {
            // Text written as token ids: the guardrails that apply could read none of it.
            return Err(unreadable_token_ids(field));
        }
        if let Some(field) = parsed.template_field() {
            // A template can write any text into the prompt, where no guardrail reads it.
            return Err(unreadable_template(field));
        }
        if let Some(field) = parsed.media_field() {
            // An image, audio or a file: refused unless every guardrail that applies reads
            // media, lets it pass, or only watches.
            let blind = [GuardrailMode::PreCall, GuardrailMode::DuringCall]
                .into_iter()
                .flat_map(|mode| self.guardrails.selected(mode, selection))
                .find(|g| !g.passes_media(Side::Request));
            if let Some(guardrail) = blind {
                return Err(unreadable_media(field, guardrail.name()));
            }
        }
        // The headers are copied for the guardrails only when one of those that run reads them.
        let reads_headers = [GuardrailMode::PreCall, GuardrailMode::DuringCall]
            .into_iter()
            .flat_map(|mode| self.guardrails.selected(mode, selection))
            .any(|g| g.reads_request_headers());
        let Some(meta) = RequestMeta::shared_from_request_for(request, reads_headers) else {
            return Ok(Prepared::new(mark));
        };
        let run = |mode| {
            self.guardrails.run(
                mode,
                selection,
                Side::Request,
                parsed.texts(),
                meta.clone(),
                log.clone(),
            )
        };
        let before = if pre {
            run(GuardrailMode::PreCall)
        } else {
            None
        };
        let beside = if during {
            run(GuardrailMode::DuringCall)
        } else {
            None
        };
        Ok(Prepared::new(mark).before(before).beside(beside))
    }
}

/// The refusal of a request to a route whose text the guardrails that apply cannot read.
pub(crate) fn unreadable_route(path: &str) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        format!(
            "guardrails apply to this request, but requests to {path} are not a format they can \
             read; refused (serve this route without guardrails to pass it through)"
        ),
    )
    .with_code("unsupported_endpoint")
}

/// The error of a request whose text is token ids ([`ParsedRequest::token_ids_field`]) while
/// guardrails apply to it.
pub(crate) fn unreadable_token_ids(field: &'static str) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        format!(
            "guardrails apply to this request, but its '{field}' is token ids, which no \
             guardrail can read; send the text instead"
        ),
    )
    .with_param(field)
    .with_code("unreadable_content")
}

/// The error of a request with an image, audio or a file ([`ParsedRequest::media_field`]) that
/// `guardrail` applies to and cannot read.
pub(crate) fn unreadable_media(field: &str, guardrail: &str) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        format!(
            "guardrails apply to this request, but its '{field}' is an image, audio or a file, \
             which guardrail '{guardrail}' cannot read; send text, or set media_fallback: \
             fail_open on the guardrail to let media pass unchecked"
        ),
    )
    .with_param(field.to_owned())
    .with_code("unreadable_content")
}

/// The error of a request that gives its own prompt template
/// ([`ParsedRequest::template_field`]) while guardrails apply to it.
pub(crate) fn unreadable_template(field: &'static str) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        format!(
            "guardrails apply to this request, but its '{field}' can write any text into the \
             prompt, where no guardrail reads it; send the request without it"
        ),
    )
    .with_param(field)
    .with_code("unreadable_content")
}

impl<B, S, ResB> Future for ResponseFuture<B, S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let outcome = ready!(this.call.as_mut().poll(cx))?;
        let time = this.call.guardrail_time();
        let (response, mark) = match outcome {
            CallOutcome::Called(response, mark) => (response.map(ResponseBody::new), Some(mark)),
            CallOutcome::Refused(err, call_type, mark) => {
                (err.to_response(call_type).map(ResponseBody::full), mark)
            }
        };
        Poll::Ready(Ok(if *this.response_headers {
            finish(response, mark.as_ref(), time)
        } else {
            response
        }))
    }
}

/// Adds the applied-guardrails and duration headers when any guardrail ran, and removes them
/// otherwise: the headers are this layer's, so a copy from the service it wraps (an upstream
/// that sends `x-litellm-applied-guardrails`) would tell the client that guardrails ran when
/// none did.
fn finish<B>(
    mut response: Response<B>,
    mark: Option<&LogMark>,
    guardrail_time: Duration,
) -> Response<B> {
    let Some(mark) =
        mark.filter(|mark| mark.log.len() > mark.start || mark.log.detached_in_flight() > 0)
    else {
        let headers = response.headers_mut();
        if !headers.is_empty() {
            headers.remove(APPLIED_GUARDRAILS);
            headers.remove(GUARDRAILS_DURATION_MS);
        }
        return response;
    };
    // Monitors still running detached were applied too: their entries come later.
    let detached = mark.log.detached_guardrails();
    let applied = mark.log.with_entries(|entries| {
        GuardrailLog::applied_names(
            &entries[mark.start.min(entries.len())..],
            detached.iter().map(|n| &**n),
        )
        .join(",")
    });
    let headers = response.headers_mut();
    match HeaderValue::from_str(&applied) {
        Ok(value) => headers.insert(APPLIED_GUARDRAILS, value),
        Err(_) => headers.remove(APPLIED_GUARDRAILS),
    };
    headers.insert(GUARDRAILS_DURATION_MS, millis_header(guardrail_time));
    response
}

/// `duration` in milliseconds with three decimals (`12.345`), rounded to the nearest
/// microsecond. Written with integers: `format!("{:.3}")` of an `f64` cost about a thousand
/// instructions a request.
fn millis_header(duration: Duration) -> HeaderValue {
    let micros = (duration.as_nanos() + 500) / 1000;
    let mut digits = itoa::Buffer::new();
    let mut text = String::with_capacity(24);
    text.push_str(digits.format(micros / 1000));
    text.push('.');
    // A thousand added, then its digit dropped: the fraction with its leading zeros.
    text.push_str(&digits.format(micros % 1000 + 1000)[1..]);
    HeaderValue::try_from(text).expect("digits and a point are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three decimals of a millisecond, rounded to the nearest microsecond, as
    /// `format!("{:.3}")` of the milliseconds wrote them.
    #[test]
    fn the_duration_header_is_milliseconds_with_three_decimals() {
        let cases = [
            (Duration::ZERO, "0.000"),
            (Duration::from_nanos(499), "0.000"),
            (Duration::from_nanos(500), "0.001"),
            (Duration::from_micros(7), "0.007"),
            (Duration::from_micros(40), "0.040"),
            (Duration::from_nanos(1_234_567), "1.235"),
            (Duration::from_nanos(1_999_500), "2.000"),
            (Duration::from_millis(12), "12.000"),
            (Duration::from_nanos(12_345_678_901), "12345.679"),
            (Duration::MAX, "18446744073709551616000.000"),
        ];
        for (duration, text) in cases {
            assert_eq!(millis_header(duration), text, "{duration:?}");
            if duration < Duration::from_secs(1 << 20) {
                let micros = (duration.as_nanos() + 500) / 1000;
                assert_eq!(format!("{:.3}", micros as f64 / 1000.0), text);
            }
        }
    }
}
