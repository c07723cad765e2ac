//! The player page: built into the binary, or read from `--web-dir` while developing it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::prelude::{Engine, BASE64_STANDARD};
use sha2::{Digest, Sha256};

use super::api::ClientConfig;
use super::error::text;
use super::AppState;
use crate::auth::Access;

/// The page runs only its own scripts (its files, and its own inline scripts by their hash) and
/// styles; media comes from the gateway, or from blobs hls.js makes (Media Source Extensions,
/// its worker).
fn content_security_policy(page: &[u8]) -> String {
    let inline: String = inline_scripts(page)
        .map(|script| format!(" 'sha256-{}'", BASE64_STANDARD.encode(Sha256::digest(script))))
        .collect();
    format!(
        "default-src 'self'; script-src 'self'{inline}; style-src 'self'; img-src 'self' data:; \
         media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; \
         base-uri 'none'; form-action 'none'"
    )
}

/// The text of each inline script of a page: written `<script>`, with no attributes.
fn inline_scripts(page: &[u8]) -> impl Iterator<Item = &[u8]> {
    const OPEN: &[u8] = b"<script>";
    const CLOSE: &[u8] = b"</script>";
    let mut rest = page;
    std::iter::from_fn(move || {
        let start = find(rest, OPEN)? + OPEN.len();
        let len = find(&rest[start..], CLOSE)?;
        let script = &rest[start..start + len];
        rest = &rest[start + len..];
        Some(script)
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The page needs a credential; its scripts and styles are the same for everyone.
const PAGE: &str = "index.html";

/// Where the page takes the player's settings (`/api/config`'s answer) from the server, for a
/// viewer it admits: its first offer then gathers candidates at once, without waiting for them.
/// A data block, not a script: the policy does not apply to it.
const CLIENT_CONFIG_SLOT: &[u8] = b"<script type=\"application/json\" id=\"livegate-client\">null</script>";

/// The page with `config` in its slot (unchanged if it has none). `<` is escaped so that no value
/// can end the block.
fn with_client_config(page: Vec<u8>, config: &ClientConfig) -> Vec<u8> {
    let Some(at) = find(&page, CLIENT_CONFIG_SLOT) else {
        return page;
    };
    let null_at = at + CLIENT_CONFIG_SLOT.len() - b"null</script>".len();
    let json = serde_json::to_string(config).expect("the client config serialises").replace('<', "\\u003c");
    [&page[..null_at], json.as_bytes(), &page[null_at + b"null".len()..]].concat()
}

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
    let Some((mut body, mut hash)) = file else {
        return text(StatusCode::NOT_FOUND, format!("no such page: /{path}"));
    };
    if path == PAGE {
        if let Ok(config) = ClientConfig::for_viewer(&state, &access) {
            body = with_client_config(body, &config);
            hash = Sha256::digest(&body).into();
        }
    }
    let etag = format!("\"{}\"", hash[..12].iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mime = mime_guess::from_path(&relative).first_or_octet_stream();
    let cache = [(header::ETAG, etag.clone()), (header::CACHE_CONTROL, "no-cache".to_owned())];
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str());
    let policy = (mime == mime_guess::mime::TEXT_HTML).then(|| content_security_policy(&body));
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
    if let Some(policy) = policy.and_then(|p| header::HeaderValue::from_str(&p).ok()) {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

/// A path that stays inside the folder it is joined to.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    path.components().all(|c| matches!(c, Component::Normal(_))).then(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_pages_inline_scripts_by_hash_and_nothing_else() {
        let page =
            b"<head><script>let a = 1;</script><script src=\"/p.js\"></script>\n<script>\n  b();\n</script></head>";
        let scripts: Vec<&[u8]> = inline_scripts(page).collect();
        assert_eq!(scripts, vec![&b"let a = 1;"[..], &b"\n  b();\n"[..]]);
        let policy = content_security_policy(page);
        // printf 'let a = 1;' | openssl dgst -sha256 -binary | base64
        assert!(
            policy.contains("script-src 'self' 'sha256-xY6QKfH9PRsQnLz56nj6MBwiK5oHg+im1Jkpdp1x/Ck=' 'sha256-"),
            "{policy}"
        );
        assert!(content_security_policy(b"<p>no scripts</p>").contains("script-src 'self';"));
    }

    #[test]
    fn the_client_config_fills_the_pages_slot_and_cannot_end_it() {
        let turn = crate::config::IceServer {
            urls: vec!["turn:turn.example.org:3478".into()],
            username: Some("user".into()),
            credential: Some("pa</script>ss".into()),
        };
        let page = [&b"<head>"[..], CLIENT_CONFIG_SLOT, b"<script>x()</script></head>"].concat();
        let filled = String::from_utf8(with_client_config(
            page,
            &ClientConfig { ice_servers: &[turn], stream: Some("cam</script>") },
        ))
        .unwrap();
        assert_eq!(
            filled,
            "<head><script type=\"application/json\" id=\"livegate-client\">{\"iceServers\":[{\"urls\":\
             [\"turn:turn.example.org:3478\"],\"username\":\"user\",\"credential\":\"pa\\u003c/script>ss\"}],\
             \"stream\":\"cam\\u003c/script>\"}</script><script>x()</script></head>"
        );
        assert_eq!(
            with_client_config(b"<p>no slot</p>".to_vec(), &ClientConfig { ice_servers: &[], stream: None }),
            b"<p>no slot</p>"
        );
    }

    #[test]
    fn the_built_in_page_has_the_client_config_slot() {
        let page = Embedded::get(PAGE).unwrap().data;
        assert!(find(&page, CLIENT_CONFIG_SLOT).is_some());
    }

    #[test]
    fn the_built_in_page_is_allowed_its_inline_script() {
        let page = Embedded::get(PAGE).expect("index.html is built in").data;
        assert_eq!(inline_scripts(&page).count(), 1, "the page has one inline script (the start of the player)");
        assert!(content_security_policy(&page).contains("'sha256-"));
    }
}
