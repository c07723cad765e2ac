//! `/api/streams`, `/api/config`, `/healthz`, `/readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::AppState;
use crate::auth::{Access, Denied, Grant, Role};
use crate::config::IceServer;
use crate::media::{AudioOutput, StreamState, VideoOutput};
use crate::relay::publish::PublicationView;
use crate::webrtc::stats::Counters;

/// What a viewer may know of a stream: enough to play it.
#[derive(Debug, Serialize)]
pub struct StreamView {
    pub name: String,
    pub state: StreamState,
    /// When the stream entered its state, in seconds since the Unix epoch.
    pub since: u64,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// What the video is, and whether the gateway encoded it or forwards the camera's own.
    pub video: VideoOutput,
    /// The sound's codecs, or none.
    pub audio: Option<AudioOutput>,
    /// MPEG-TS segments, for any HLS player.
    pub hls: String,
    /// Low-Latency HLS (fMP4 parts), for hls.js and Safari.
    pub ll_hls: String,
    pub whep: String,
    pub ws: String,
    pub player: String,
}

/// What an admin sees: the viewer's view plus the (redacted) source, the reason for an error,
/// and counters.
#[derive(Debug, Serialize)]
pub struct StreamInfo {
    #[serde(flatten)]
    pub view: StreamView,
    pub source: String,
    pub error: Option<String>,
    pub viewers: usize,
    /// RTP packets sent to WebRTC viewers, all of them, since start.
    pub packets_sent: u64,
    /// Packets viewers missed because they lagged, or skipped until a keyframe.
    pub packets_dropped: u64,
    /// Where the stream is published over WHIP.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PublicationView>,
}

pub fn streams_info(state: &AppState) -> Vec<StreamInfo> {
    state
        .media
        .streams
        .iter()
        .map(|stream| {
            let status = stream.status();
            let output = stream.output();
            let name = &stream.name;
            let totals = state.webrtc.stream_totals(name);
            let (packets_sent, packets_dropped) =
                (Counters::get(&totals.counters.packets_sent), Counters::get(&totals.counters.packets_dropped));
            StreamInfo {
                view: StreamView {
                    name: name.clone(),
                    state: status.state,
                    since: status.since,
                    width: stream.video.width,
                    height: stream.video.height,
                    fps: stream.video.fps,
                    video: output.video,
                    audio: output.audio,
                    hls: format!("/hls/{name}/index.m3u8"),
                    ll_hls: format!("/hls/{name}/{}", crate::media::llhls::PLAYLIST),
                    whep: format!("/whep/{name}"),
                    ws: format!("/ws/{name}"),
                    player: format!("/?stream={name}"),
                },
                source: stream.source.to_string(),
                error: status.reason,
                viewers: state.webrtc.viewer_count(name),
                packets_sent,
                packets_dropped,
                publish: state.publications.of(name).map(|p| p.view()).collect(),
            }
        })
        .collect()
}

/// Admins get every stream in full; viewers get the streams they may watch, without sources,
/// errors or counters.
pub async fn streams(
    State(state): State<Arc<AppState>>,
    Extension(access): Extension<Access>,
) -> Result<Response, Denied> {
    let all = streams_info(&state);
    if access.admin().is_ok() {
        return Ok(Json(all).into_response());
    }
    let grant = access.grant()?;
    let visible: Vec<StreamView> =
        all.into_iter().map(|info| info.view).filter(|view| lists(grant, &view.name)).collect();
    Ok(Json(visible).into_response())
}

/// Whether `/api/streams` lists `stream` for the holder of `grant`.
fn lists(grant: &Grant, stream: &str) -> bool {
    grant.role == Role::Admin || grant.streams.allows(stream)
}

/// What the player needs to know to connect: the ICE servers (TURN credentials included: they
/// are meant for browsers), and the stream a page that names none plays.
#[derive(Serialize)]
pub struct ClientConfig<'a> {
    #[serde(rename = "iceServers")]
    pub ice_servers: &'a [IceServer],
    /// The first of the viewer's `/api/streams`: the page's first offer need not wait for the list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<&'a str>,
}

impl<'a> ClientConfig<'a> {
    pub fn for_viewer(state: &'a AppState, access: &Access) -> Result<Self, Denied> {
        let grant = access.grant()?;
        let stream = state.media.streams.iter().map(|s| s.name.as_str()).find(|name| lists(grant, name));
        Ok(Self { ice_servers: &state.config.webrtc.ice_servers, stream })
    }
}

pub async fn client_config(
    State(state): State<Arc<AppState>>,
    Extension(access): Extension<Access>,
) -> Result<Response, Denied> {
    Ok(Json(ClientConfig::for_viewer(&state, &access)?).into_response())
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when every stream is playing; otherwise 503 with each stream's state. Open to probes,
/// so with access control on it leaves out the reasons (admins read them in `/api/streams`).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let streams = streams_info(&state);
    let ready = streams.iter().all(|s| s.view.state == StreamState::Playing);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let open = !state.auth.is_enabled();
    let summary: Vec<_> = streams
        .iter()
        .map(|s| serde_json::json!({"name": s.view.name, "state": s.view.state, "error": s.error.as_ref().filter(|_| open)}))
        .collect();
    (status, Json(serde_json::json!({ "ready": ready, "streams": summary }))).into_response()
}
