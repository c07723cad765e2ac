//! HLS files with the headers players and caches need: the playlist is never cached, segments
//! (named uniquely per pipeline start) are. A playlist fetched with `?token=` lists its
//! segments with the same token, so `<video src>` and Safari's native HLS play a protected
//! stream from one link. Two playlists: `index.m3u8` (MPEG-TS segments from disk, for any
//! player) and `ll.m3u8` (Low-Latency HLS, fMP4 parts from memory, with blocking reloads).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::text;
use super::identity::{query_token, TOKEN_PARAMETER};
use super::AppState;
use crate::auth::{Access, Denied};
use crate::media::llhls::{Blocked, LowLatencyHls, Resource};
use crate::media::MediaStream;

pub const PLAYLIST_MIME: &str = "application/vnd.apple.mpegurl";
pub const SEGMENT_MIME: &str = "video/mp2t";
pub const FMP4_MIME: &str = "video/mp4";
/// A Low-Latency playlist changes every part: a shared cache must not hold it. Blocking
/// requests (`_HLS_msn`) name a playlist that never changes, so caches may keep those.
const LOW_LATENCY_PLAYLIST_CACHE: &str = "no-cache";
const BLOCKING_PLAYLIST_CACHE: &str = "public, max-age=6";
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
    #[error("{0:?} is not an HLS playlist (.m3u8), segment (.ts) or Low-Latency HLS file (ll-….m4s, ll-init-….mp4)")]
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

/// Adds `token` to every URI of a playlist: URI lines and `URI="…"` attributes of tags.
pub fn with_token(playlist: &str, token: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let add = |uri: &str| {
        let separator = if uri.contains('?') { '&' } else { '?' };
        format!("{uri}{separator}{TOKEN_PARAMETER}={encoded}")
    };
    playlist
        .split_inclusive('\n')
        .map(|line| {
            let content = line.trim_end();
            let end = &line[content.len()..];
            if content.is_empty() {
                return line.to_owned();
            }
            if !content.starts_with('#') {
                return format!("{}{end}", add(content));
            }
            match content.split_once("URI=\"").and_then(|(tag, rest)| Some((tag, rest.split_once('"')?))) {
                Some((tag, (uri, after))) => format!("{tag}URI=\"{}\"{after}{end}", add(uri)),
                None => line.to_owned(),
            }
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
    let token = query_token(&uri).filter(|_| state.auth.is_enabled());
    if let Some(resource) = Resource::parse(&file) {
        return Ok(low_latency(stream, resource, &uri, token.as_deref(), state.auth.is_enabled()).await);
    }
    let kind = match classify(&file) {
        Ok(kind) => kind,
        Err(err @ BadFile::NotHls(_)) => return Ok(text(StatusCode::NOT_FOUND, err.to_string())),
        Err(err) => return Ok(text(StatusCode::BAD_REQUEST, err.to_string())),
    };
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

/// What a Low-Latency HLS request asks to wait for (RFC 8216bis § 6.2.5.2).
#[derive(Debug, PartialEq, Eq)]
struct Blocking {
    msn: u64,
    part: Option<u32>,
}

/// `_HLS_msn` and `_HLS_part` of a query, if any; an error says what is wrong with them.
fn blocking(uri: &Uri) -> Result<Option<Blocking>, String> {
    let mut msn = None;
    let mut part = None;
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        let number = |what: &str| value.parse::<u64>().map_err(|_| format!("{what} must be a number, not {value:?}"));
        match key.as_ref() {
            "_HLS_msn" => msn = Some(number("_HLS_msn")?),
            "_HLS_part" => part = Some(u32::try_from(number("_HLS_part")?).map_err(|_| "_HLS_part is too large")?),
            _ => {}
        }
    }
    match (msn, part) {
        (None, Some(_)) => Err("_HLS_part needs _HLS_msn".into()),
        (None, None) => Ok(None),
        (Some(msn), part) => Ok(Some(Blocking { msn, part })),
    }
}

async fn low_latency(
    stream: &MediaStream,
    resource: Resource,
    uri: &Uri,
    token: Option<&str>,
    protected: bool,
) -> Response {
    let hls: &LowLatencyHls = &stream.low_latency;
    let limit = hls.blocking_limit();
    let segment_cache = if protected { PROTECTED_SEGMENT_CACHE } else { SEGMENT_CACHE };
    let media = |body: bytes::Bytes| {
        ([(header::CONTENT_TYPE, FMP4_MIME), (header::CACHE_CONTROL, segment_cache)], body).into_response()
    };
    let blocked = |err: Blocked| match err {
        Blocked::TooFarAhead { .. } => text(StatusCode::BAD_REQUEST, err.to_string()),
        Blocked::TimedOut(_) => text(StatusCode::SERVICE_UNAVAILABLE, format!("stream {:?}: {err}", stream.name)),
        Blocked::Gone => text(StatusCode::NOT_FOUND, format!("stream {:?}: {err}", stream.name)),
    };
    match resource {
        Resource::Playlist => {
            let wait = match blocking(uri) {
                Ok(wait) => wait,
                Err(err) => return text(StatusCode::BAD_REQUEST, err),
            };
            if let Some(Blocking { msn, part }) = &wait {
                if let Err(err) = hls.wait_for(*msn, *part, limit).await {
                    return blocked(err);
                }
            }
            let Some(playlist) = hls.playlist() else {
                let mut response = text(
                    StatusCode::NOT_FOUND,
                    format!("stream {:?} has no Low-Latency playlist yet; retry shortly", stream.name),
                );
                response.headers_mut().insert(header::CACHE_CONTROL, "no-cache".parse().expect("valid header"));
                return response;
            };
            let playlist = match token {
                Some(token) => with_token(&playlist, token),
                None => playlist,
            };
            let cache = match (protected, wait) {
                (true, _) => PROTECTED_PLAYLIST_CACHE,
                (false, Some(_)) => BLOCKING_PLAYLIST_CACHE,
                (false, None) => LOW_LATENCY_PLAYLIST_CACHE,
            };
            ([(header::CONTENT_TYPE, PLAYLIST_MIME), (header::CACHE_CONTROL, cache)], playlist).into_response()
        }
        Resource::Part(msn, part) => match hls.part(msn, part, limit).await {
            Ok(body) => media(body),
            Err(err) => blocked(err),
        },
        Resource::Init(_) | Resource::Segment(_) => match hls.file(resource) {
            Some(body) => media(body),
            None => blocked(Blocked::Gone),
        },
    }
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
    fn low_latency_playlists_pass_their_token_on_to_every_uri() {
        let playlist = "#EXT-X-MAP:URI=\"ll-init-0.mp4\"\n#EXT-X-PART:DURATION=0.200,URI=\"ll-3.0.m4s\",INDEPENDENT=YES\n#EXTINF:1.000,\nll-3.m4s\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"ll-4.0.m4s\"\n";
        assert_eq!(
            with_token(playlist, "t"),
            "#EXT-X-MAP:URI=\"ll-init-0.mp4?token=t\"\n#EXT-X-PART:DURATION=0.200,URI=\"ll-3.0.m4s?token=t\",INDEPENDENT=YES\n#EXTINF:1.000,\nll-3.m4s?token=t\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"ll-4.0.m4s?token=t\"\n"
        );
    }

    #[test]
    fn blocking_reload_parameters() {
        let parse = |query: &str| blocking(&format!("/hls/live/ll.m3u8{query}").parse::<Uri>().unwrap());
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("?token=x&_HLS_msn=12"), Ok(Some(Blocking { msn: 12, part: None })));
        assert_eq!(parse("?_HLS_msn=12&_HLS_part=3"), Ok(Some(Blocking { msn: 12, part: Some(3) })));
        assert_eq!(parse("?_HLS_part=3"), Err("_HLS_part needs _HLS_msn".into()));
        assert!(parse("?_HLS_msn=x").unwrap_err().contains("must be a number"));
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
