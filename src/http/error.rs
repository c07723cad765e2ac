//! HTTP answers for errors: a status, a clear message, and the detail in the log.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::signalling::SignallingError;
use crate::webrtc::WebRtcError;

/// Seconds a client is asked to wait before retrying when the gateway is full.
const RETRY_AFTER_SECONDS: &str = "5";

impl IntoResponse for SignallingError {
    fn into_response(self) -> Response {
        let status = match &self {
            SignallingError::UnknownStream(_) | SignallingError::UnknownSession { .. } => StatusCode::NOT_FOUND,
            SignallingError::NotSdp(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            SignallingError::NotText | SignallingError::Offer(_) => StatusCode::BAD_REQUEST,
            SignallingError::WebRtc(WebRtcError::TooManyViewers { .. } | WebRtcError::NoFreePort { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            SignallingError::WebRtc(WebRtcError::Offer(_) | WebRtcError::Candidate { .. }) => StatusCode::BAD_REQUEST,
            SignallingError::WebRtc(WebRtcError::Setup(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        let mut response =
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{self}\n")).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, RETRY_AFTER_SECONDS.parse().expect("valid header"));
        }
        response
    }
}

/// A plain-text error answer.
pub fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{}\n", message.into())).into_response()
}
