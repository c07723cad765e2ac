//! HLS files with the headers players and caches need: the playlist is never cached, segments
//! (named uniquely per pipeline start) are.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::text;
use super::AppState;

pub const PLAYLIST_MIME: &str = "application/vnd.apple.mpegurl";
pub const SEGMENT_MIME: &str = "video/mp2t";
pub const SEGMENT_CACHE: &str = "public, max-age=60";

/// `GET /hls/{stream}/{file}`
pub async fn file(State(state): State<Arc<AppState>>, Path((stream, file)): Path<(String, String)>) -> Response {
    let Some(stream) = state.media.stream(&stream) else {
        return text(StatusCode::NOT_FOUND, format!("no stream named {stream:?}"));
    };
    let (mime, cache) = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("m3u8") => (PLAYLIST_MIME, "no-cache"),
        Some("ts") => (SEGMENT_MIME, SEGMENT_CACHE),
        _ => return text(StatusCode::NOT_FOUND, format!("{file:?} is not an HLS playlist (.m3u8) or segment (.ts)")),
    };
    if super::web::safe_relative(&file).is_none_or(|p| p.components().count() != 1) {
        return text(StatusCode::BAD_REQUEST, format!("bad file name {file:?}"));
    }
    match tokio::fs::read(stream.hls_dir.join(&file)).await {
        Ok(body) => ([(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, cache)], body).into_response(),
        Err(_) if mime == PLAYLIST_MIME => {
            let mut response =
                text(StatusCode::NOT_FOUND, format!("stream {:?} has no playlist yet; retry shortly", stream.name));
            response.headers_mut().insert(header::CACHE_CONTROL, "no-cache".parse().expect("valid header"));
            response
        }
        Err(_) => text(StatusCode::NOT_FOUND, format!("segment {file:?} is gone or never was")),
    }
}
