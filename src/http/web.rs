//! The player page: built into the binary, or read from `--web-dir` while developing it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use sha2::{Digest, Sha256};

use super::error::text;
use super::AppState;
use crate::auth::Access;

/// The page runs only its own scripts and styles; media comes from the gateway, or from blobs
/// hls.js makes (Media Source Extensions, its worker).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'none'";
/// The page needs a credential; its scripts and styles are the same for everyone.
const PAGE: &str = "index.html";

#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
#[exclude = "*.test.mjs"]
struct Embedded;

/// `GET /` and any other path not routed elsewhere. Files carry an ETag, so a browser that has
/// them revalidates with a 304 instead of fetching them again.
pub async fn serve(
    State(state): State<Arc<AppState>>,
    Extension(access): Extension<Access>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = match uri.path().trim_start_matches('/') {
        "" => PAGE,
        path => path,
    };
    // The page answers 401/403 without a valid credential, with the player itself as the body:
    // it asks the API, is refused, and tells the person why.
    let denied = if path == PAGE { access.grant().err() } else { None };
    let Some(relative) = safe_relative(path) else {
        return text(StatusCode::BAD_REQUEST, format!("bad path {path:?}"));
    };
    let file = match &state.config.web_dir {
        Some(dir) => tokio::fs::read(dir.join(&relative)).await.ok().map(|body| {
            let hash: [u8; 32] = Sha256::digest(&body).into();
            (body, hash)
        }),
        None => Embedded::get(path).map(|file| (file.data.into_owned(), file.metadata.sha256_hash())),
    };
    let Some((body, hash)) = file else {
        return text(StatusCode::NOT_FOUND, format!("no such page: /{path}"));
    };
    let etag = format!("\"{}\"", hash[..12].iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mime = mime_guess::from_path(&relative).first_or_octet_stream();
    let cache = [(header::ETAG, etag.clone()), (header::CACHE_CONTROL, "no-cache".to_owned())];
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str());
    let mut response = if fresh && denied.is_none() {
        (StatusCode::NOT_MODIFIED, cache).into_response()
    } else {
        ([(header::CONTENT_TYPE, mime.as_ref().to_owned())], cache, body).into_response()
    };
    if let Some(denied) = denied {
        let refusal = denied.into_response();
        *response.status_mut() = refusal.status();
        if let Some(challenge) = refusal.headers().get(header::WWW_AUTHENTICATE) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge.clone());
        }
    }
    if mime == mime_guess::mime::TEXT_HTML {
        let policy = header::HeaderValue::from_static(CONTENT_SECURITY_POLICY);
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

/// A path that stays inside the folder it is joined to.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    path.components().all(|c| matches!(c, Component::Normal(_))).then(|| path.to_owned())
}
