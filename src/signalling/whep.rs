//! WHEP (draft-ietf-wish-whep): `POST` an SDP offer, get `201 Created` with the answer and a
//! session `Location`; `DELETE` the session to leave.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::{sdp, Signalling, SignallingError};
use crate::config::IceServer;

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
    let mut response = (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(SDP_MIME)),
            (header::LOCATION, HeaderValue::from_str(&location).expect("ids are header-safe")),
        ],
        answer,
    )
        .into_response();
    for link in ice_server_links(&signalling.ice_servers) {
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().append(header::LINK, value);
        }
    }
    Ok(response)
}

/// WHEP announces ICE servers as `Link: <url>; rel="ice-server"` headers (RFC 8288 attributes
/// carry TURN credentials).
pub fn ice_server_links(servers: &[IceServer]) -> Vec<String> {
    let quote = |value: &str| value.replace('\\', "\\\\").replace('"', "\\\"");
    servers
        .iter()
        .flat_map(|server| {
            server.urls.iter().map(move |url| {
                let mut link = format!("<{url}>; rel=\"ice-server\"");
                if let (Some(username), Some(credential)) = (&server.username, &server.credential) {
                    link += &format!(
                        "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                        quote(username),
                        quote(credential)
                    );
                }
                link
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_become_link_headers() {
        let servers = vec![
            "stun:stun.example.org:3478".parse::<IceServer>().unwrap(),
            "turn:al\"ice:secret@turn.example.org:3478?transport=udp".parse::<IceServer>().unwrap(),
        ];
        assert_eq!(
            ice_server_links(&servers),
            vec![
                r#"<stun:stun.example.org:3478>; rel="ice-server""#.to_owned(),
                r#"<turn:turn.example.org:3478?transport=udp>; rel="ice-server"; username="al\"ice"; credential="secret"; credential-type="password""#.to_owned(),
            ]
        );
    }
}
