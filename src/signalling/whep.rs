//! WHEP (draft-ietf-wish-whep): `POST` an SDP offer, get `201 Created` with the answer and a
//! session `Location`; `DELETE` the session to leave.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio::sync::mpsc;

use super::limits::ClientIp;
use super::{sdp, Signalling, SignallingError};
use crate::auth::Access;
use crate::config::IceServer;
use crate::webrtc::Viewer;

pub const SDP_MIME: &str = "application/sdp";
/// Largest offer accepted; larger bodies get 413. An offer with many candidates is a few KiB.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// The offer's content type, if it is `application/sdp`.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), SignallingError> {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let content_type = content_type.unwrap_or_default();
    if content_type.split(';').next().map(str::trim).is_some_and(|mime| mime.eq_ignore_ascii_case(SDP_MIME)) {
        Ok(())
    } else {
        Err(SignallingError::NotSdp(content_type))
    }
}

/// `POST /whep/{stream}`. Checks run cheapest first, and no one learns whether a stream exists
/// without a credential that may watch it.
pub async fn offer(
    State(signalling): State<Arc<Signalling>>,
    Path(stream): Path<String>,
    Extension(access): Extension<Access>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SignallingError> {
    signalling.limits.request(ip)?;
    access.viewer_of(&stream)?;
    let feed = signalling.feed(&stream)?;
    check_content_type(&headers)?;
    let offer = std::str::from_utf8(&body).map_err(|_| SignallingError::NotText)?.to_owned();
    sdp::check_offer(&offer)?;
    let pending = signalling.limits.pending(ip)?;
    // WHEP answers carry every candidate, so trickled ones have no one to go to.
    let (events, _) = mpsc::unbounded_channel();
    let (viewer, answer) = signalling.webrtc.answer(&stream, feed, offer, events, super::WHEP).await?;
    viewer.hold_until_settled(pending);
    let location = format!("/whep/{stream}/{}", viewer.id);
    let mut response = (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(SDP_MIME)),
            (header::LOCATION, HeaderValue::from_str(&location).expect("ids are header-safe")),
        ],
        answer_body(answer, viewer),
    )
        .into_response();
    for link in ice_server_links(&signalling.ice_servers) {
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().append(header::LINK, value);
        }
    }
    Ok(response)
}

/// The answer, then (once the server has taken it all) the offer's candidates go to the peer:
/// no STUN is sent for a client that never reads its answer.
fn answer_body(answer: String, viewer: Arc<Viewer>) -> Body {
    let chunks = futures_util::stream::unfold(Some(answer), move |answer| {
        let viewer = viewer.clone();
        async move {
            match answer {
                Some(answer) => Some((Ok::<_, std::convert::Infallible>(Bytes::from(answer)), None)),
                None => {
                    viewer.answer_sent().await;
                    None
                }
            }
        }
    });
    Body::from_stream(chunks)
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
    Extension(access): Extension<Access>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
) -> Result<StatusCode, SignallingError> {
    signalling.limits.request(ip)?;
    access.viewer_of(&stream)?;
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
