//! `/api/streams`, `/api/config`, `/healthz`, `/readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::AppState;
use crate::config::IceServer;
use crate::media::StreamState;

#[derive(Debug, Serialize)]
pub struct StreamInfo {
    pub name: String,
    pub source: String,
    pub state: StreamState,
    pub error: Option<String>,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub viewers: usize,
    /// RTP packets sent to WebRTC viewers, all of them, since start.
    pub packets_sent: u64,
    /// Packets viewers missed because they lagged, or skipped until a keyframe.
    pub packets_dropped: u64,
    pub hls: String,
    pub whep: String,
    pub ws: String,
    pub player: String,
}

pub fn streams_info(state: &AppState) -> Vec<StreamInfo> {
    state
        .media
        .streams
        .iter()
        .map(|stream| {
            let (stream_state, error) = stream.status();
            let name = &stream.name;
            let (packets_sent, packets_dropped) = state.webrtc.stream_totals(name);
            StreamInfo {
                name: name.clone(),
                source: stream.source.to_string(),
                state: stream_state,
                error,
                width: stream.video.width,
                height: stream.video.height,
                fps: stream.video.fps,
                viewers: state.webrtc.viewer_count(name),
                packets_sent,
                packets_dropped,
                hls: format!("/hls/{name}/index.m3u8"),
                whep: format!("/whep/{name}"),
                ws: format!("/ws/{name}"),
                player: format!("/?stream={name}"),
            }
        })
        .collect()
}

pub async fn streams(State(state): State<Arc<AppState>>) -> Json<Vec<StreamInfo>> {
    Json(streams_info(&state))
}

#[derive(Serialize)]
pub struct ClientConfig<'a> {
    #[serde(rename = "iceServers")]
    pub ice_servers: &'a [IceServer],
}

/// What the player needs to know to connect: the ICE servers.
pub async fn client_config(State(state): State<Arc<AppState>>) -> Response {
    Json(ClientConfig { ice_servers: &state.config.webrtc.ice_servers }).into_response()
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when every stream is playing; otherwise 503 with each stream's state.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let streams = streams_info(&state);
    let ready = streams.iter().all(|s| s.state == StreamState::Playing);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let summary: Vec<_> =
        streams.iter().map(|s| serde_json::json!({"name": s.name, "state": s.state, "error": s.error})).collect();
    (status, Json(serde_json::json!({ "ready": ready, "streams": summary }))).into_response()
}
