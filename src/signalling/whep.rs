//! WHEP (draft-ietf-wish-whep): `POST` an SDP offer, get `201 Created` with the answer and a
//! session `Location`; `DELETE` the session to leave.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::{sdp, Signalling, SignallingError};

pub const SDP_MIME: &str = "application/sdp";

/// `POST /whep/{stream}`
pub async fn offer(
    State(signalling): State<Arc<Signalling>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SignallingError> {
    let feed = signalling.feed(&stream)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some(SDP_MIME) {
        return Err(SignallingError::NotSdp(content_type.into()));
    }
    let offer = String::from_utf8(body.to_vec()).map_err(|_| SignallingError::NotText)?;
    sdp::check_offer(&offer)?;
    // WHEP answers carry every candidate, so trickled ones have no one to go to.
    let (events, _) = mpsc::unbounded_channel();
    let (viewer, answer) = signalling.webrtc.answer(&stream, feed, offer, events).await?;
    let location = format!("/whep/{stream}/{}", viewer.id);
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(SDP_MIME)),
            (header::LOCATION, HeaderValue::from_str(&location).expect("ids are header-safe")),
        ],
        answer,
    )
        .into_response())
}

/// `DELETE /whep/{stream}/{session}`
pub async fn delete(
    State(signalling): State<Arc<Signalling>>,
    Path((stream, session)): Path<(String, String)>,
) -> Result<StatusCode, SignallingError> {
    match signalling.webrtc.viewer(&session).filter(|v| v.stream == stream) {
        Some(viewer) => {
            viewer.close();
            Ok(StatusCode::OK)
        }
        None => Err(SignallingError::UnknownSession { stream, session }),
    }
}

/// `PATCH /whep/{stream}/{session}`: trickle is not supported; the answer has every candidate.
pub async fn patch() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "DELETE, OPTIONS")],
        "trickle ICE is not supported: the answer carries every candidate\n",
    )
        .into_response()
}

/// `OPTIONS` on either resource: CORS preflight.
pub async fn options() -> Response {
    (StatusCode::NO_CONTENT, [("accept-post", SDP_MIME)]).into_response()
}
