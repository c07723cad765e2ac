//! The player page: built into the binary, or read from `--web-dir` while developing it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::error::text;
use super::AppState;

#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
#[exclude = "*.test.mjs"]
struct Embedded;

/// `GET /` and any other path not routed elsewhere.
pub async fn serve(State(state): State<Arc<AppState>>, uri: Uri) -> Response {
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        path => path,
    };
    let Some(relative) = safe_relative(path) else {
        return text(StatusCode::BAD_REQUEST, format!("bad path {path:?}"));
    };
    let body = match &state.config.web_dir {
        Some(dir) => tokio::fs::read(dir.join(&relative)).await.ok(),
        None => Embedded::get(path).map(|file| file.data.into_owned()),
    };
    match body {
        Some(body) => {
            let mime = mime_guess::from_path(&relative).first_or_octet_stream();
            ([(header::CONTENT_TYPE, mime.as_ref().to_owned()), (header::CACHE_CONTROL, "no-cache".to_owned())], body)
                .into_response()
        }
        None => text(StatusCode::NOT_FOUND, format!("no such page: /{path}")),
    }
}

/// A path that stays inside the folder it is joined to.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    path.components().all(|c| matches!(c, Component::Normal(_))).then(|| path.to_owned())
}
