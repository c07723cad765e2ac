//! HLS files with the headers players and caches need: the playlist is never cached, segments
//! (named uniquely per pipeline start) are. A playlist fetched with `?token=` lists its
//! segments with the same token, so `<video src>` and Safari's native HLS play a protected
//! stream from one link.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::text;
use super::identity::{query_token, TOKEN_PARAMETER};
use super::AppState;
use crate::auth::{Access, Denied};

pub const PLAYLIST_MIME: &str = "application/vnd.apple.mpegurl";
pub const SEGMENT_MIME: &str = "video/mp2t";
pub const SEGMENT_CACHE: &str = "public, max-age=60";
/// A shared cache (a CDN) may hold the playlist for a second, never longer than a segment;
/// browsers ask again every time, so a player never falls behind the live edge.
pub const PLAYLIST_CACHE: &str = "public, max-age=0, s-maxage=1";
/// A playlist fetched with a token carries it in its segment URIs: never stored in a shared cache.
pub const PROTECTED_PLAYLIST_CACHE: &str = "no-cache";
/// Segments fetched with a token are for that token's holder only.
pub const PROTECTED_SEGMENT_CACHE: &str = "private, max-age=60";

/// The kinds of file an HLS folder serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HlsFile {
    Playlist,
    Segment,
}

/// Why a file name is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadFile {
    #[error("{0:?} is not an HLS playlist (.m3u8) or segment (.ts)")]
    NotHls(String),
    #[error("bad file name {0:?}")]
    BadName(String),
}

/// What `file` is, if it is a plain file name of a playlist or a segment.
pub fn classify(file: &str) -> Result<HlsFile, BadFile> {
    let kind = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("m3u8") => HlsFile::Playlist,
        Some("ts") => HlsFile::Segment,
        _ => return Err(BadFile::NotHls(file.to_owned())),
    };
    // What hlssink2 writes: letters, digits, `-`, `_`, `.`, and no leading dot.
    let plain = file.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain || file.starts_with('.') {
        return Err(BadFile::BadName(file.to_owned()));
    }
    Ok(kind)
}

/// Adds `token` to every URI line of a playlist.
pub fn with_token(playlist: &str, token: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    playlist
        .split_inclusive('\n')
        .map(|line| {
            let uri = line.trim_end();
            if uri.is_empty() || uri.starts_with('#') {
                return line.to_owned();
            }
            let separator = if uri.contains('?') { '&' } else { '?' };
            format!("{uri}{separator}{TOKEN_PARAMETER}={encoded}{}", &line[uri.len()..])
        })
        .collect()
}

/// `GET /hls/{stream}/{file}`
pub async fn file(
    State(state): State<Arc<AppState>>,
    Path((stream, file)): Path<(String, String)>,
    Extension(access): Extension<Access>,
    uri: Uri,
) -> Result<Response, Denied> {
    access.viewer_of(&stream)?;
    let Some(stream) = state.media.stream(&stream) else {
        return Ok(text(StatusCode::NOT_FOUND, format!("no stream named {stream:?}")));
    };
    let kind = match classify(&file) {
        Ok(kind) => kind,
        Err(err @ BadFile::NotHls(_)) => return Ok(text(StatusCode::NOT_FOUND, err.to_string())),
        Err(err) => return Ok(text(StatusCode::BAD_REQUEST, err.to_string())),
    };
    let token = query_token(&uri).filter(|_| state.auth.is_enabled());
    let body = tokio::fs::read(stream.hls_dir.join(&file)).await;
    Ok(match (kind, body) {
        (HlsFile::Playlist, Ok(body)) => {
            let body = match &token {
                Some(token) => with_token(&String::from_utf8_lossy(&body), token).into_bytes(),
                None => body,
            };
            let cache = if state.auth.is_enabled() { PROTECTED_PLAYLIST_CACHE } else { PLAYLIST_CACHE };
            ([(header::CONTENT_TYPE, PLAYLIST_MIME), (header::CACHE_CONTROL, cache)], body).into_response()
        }
        (HlsFile::Segment, Ok(body)) => {
            let cache = if state.auth.is_enabled() { PROTECTED_SEGMENT_CACHE } else { SEGMENT_CACHE };
            ([(header::CONTENT_TYPE, SEGMENT_MIME), (header::CACHE_CONTROL, cache)], body).into_response()
        }
        (HlsFile::Playlist, Err(_)) => {
            let mut response =
                text(StatusCode::NOT_FOUND, format!("stream {:?} has no playlist yet; retry shortly", stream.name));
            response.headers_mut().insert(header::CACHE_CONTROL, "no-cache".parse().expect("valid header"));
            response
        }
        (HlsFile::Segment, Err(_)) => text(StatusCode::NOT_FOUND, format!("segment {file:?} is gone or never was")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlists_pass_their_token_on_to_segments() {
        let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nsegment-1-00001.ts\n#EXTINF:1.0,\nseg.ts?x=1\n";
        assert_eq!(
            with_token(playlist, "a+b/c"),
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nsegment-1-00001.ts?token=a%2Bb%2Fc\n#EXTINF:1.0,\nseg.ts?x=1&token=a%2Bb%2Fc\n"
        );
    }

    #[test]
    fn only_plain_playlist_and_segment_names() {
        assert_eq!(classify("index.m3u8"), Ok(HlsFile::Playlist));
        assert_eq!(classify("segment-1-00001.ts"), Ok(HlsFile::Segment));
        assert!(matches!(classify("../x.ts"), Err(BadFile::BadName(_))));
        assert!(matches!(classify("..ts"), Err(BadFile::BadName(_))));
        assert!(matches!(classify("a\\b.ts"), Err(BadFile::BadName(_))));
        assert!(matches!(classify("index.html"), Err(BadFile::NotHls(_))));
    }
}
