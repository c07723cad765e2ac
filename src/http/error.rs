//! HTTP answers for errors: a status, a clear message, and the detail in the log. Server
//! errors are answered briefly; their detail stays in the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::Denied;
use crate::signalling::limits::Limited;
use crate::signalling::SignallingError;
use crate::webrtc::WebRtcError;

/// Seconds a client is asked to wait before retrying when the gateway is full.
const RETRY_AFTER_SECONDS: u64 = 5;

impl IntoResponse for SignallingError {
    fn into_response(self) -> Response {
        let status = match &self {
            SignallingError::Denied(denied) => return denied.clone().into_response(),
            SignallingError::Limited(limited) => return limited.clone().into_response(),
            SignallingError::UnknownStream(_) | SignallingError::UnknownSession { .. } => StatusCode::NOT_FOUND,
            SignallingError::NotSdp(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            SignallingError::NotText | SignallingError::Offer(_) => StatusCode::BAD_REQUEST,
            SignallingError::Origin(_) => StatusCode::FORBIDDEN,
            SignallingError::WebRtc(WebRtcError::TooManyViewers { .. } | WebRtcError::NoFreePort { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            SignallingError::WebRtc(WebRtcError::Offer(_) | WebRtcError::Candidate { .. }) => StatusCode::BAD_REQUEST,
            // The offer is fine, but this stream's video is not among what it accepts.
            SignallingError::WebRtc(WebRtcError::NoCommonCodec { .. }) => StatusCode::NOT_ACCEPTABLE,
            // Answers come from servers livegate calls, never through its own HTTP.
            SignallingError::WebRtc(
                WebRtcError::Setup(_) | WebRtcError::Bind { .. } | WebRtcError::SharedPort(_) | WebRtcError::Answer(_),
            ) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self, "request failed");
            "WebRTC setup failed; the gateway log has the detail".to_owned()
        } else {
            tracing::debug!(error = %self, "request rejected");
            self.to_string()
        };
        let mut response = text(status, message);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

/// 401 with `WWW-Authenticate: Bearer` for a missing or bad credential, 403 for a valid one
/// that may not do this.
impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        tracing::debug!(reason = %self, "access denied");
        if !self.is_unauthenticated() {
            return text(StatusCode::FORBIDDEN, format!("access denied: {self}"));
        }
        let challenge = match self {
            Denied::BadCredential(_) => r#"Bearer realm="livegate", error="invalid_token""#,
            _ => r#"Bearer realm="livegate""#,
        };
        let mut response = text(StatusCode::UNAUTHORIZED, format!("access denied: {self}"));
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    }
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        tracing::debug!(reason = %self, "client limited");
        let mut response = text(StatusCode::TOO_MANY_REQUESTS, self.to_string());
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after_seconds()));
        response
    }
}

/// A plain-text error answer.
pub fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{}\n", message.into())).into_response()
}
