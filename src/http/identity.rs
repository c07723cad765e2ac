//! Who is asking: the client's address (trusting `X-Forwarded-For` only from configured
//! proxies) and the credential it carried (`Authorization: Bearer` or `?token=`). A middleware
//! puts both into every request's extensions as [`Access`] and [`ClientIp`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::auth::{Access, Denied};
use crate::config::Cidr;
use crate::signalling::limits::ClientIp;

/// The query parameter that carries a token (shareable links, `<video src>`, HLS segments).
pub const TOKEN_PARAMETER: &str = "token";

/// The client behind any trusted proxies: the rightmost `X-Forwarded-For` address that is not
/// itself a trusted proxy. Untrusted peers cannot claim another address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|cidr| cidr.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => client = ip,
            Err(_) => break,
        }
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// The token a request carries: the bearer token, else the `token` query parameter.
pub fn request_token(headers: &HeaderMap, uri: &Uri) -> Result<Option<String>, Denied> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| Denied::BadCredential("the Authorization header is not text".into()))?;
        return match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim().to_owned())),
            _ => Err(Denied::BadCredential("send Authorization: Bearer TOKEN".into())),
        };
    }
    Ok(query_token(uri))
}

/// The `token` query parameter, percent-decoded. A `+` stays a `+` (not a space, as form
/// decoding would make it): tokens are often base64, and links are pasted unencoded.
pub fn query_token(uri: &Uri) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let value = pair.strip_prefix(TOKEN_PARAMETER)?.strip_prefix('=')?;
        Some(percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned())
    })
}

/// Middleware: works out [`ClientIp`] and [`Access`] for the handlers.
pub async fn identify(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = client_ip(peer.ip(), request.headers(), &state.config.limits.trusted_proxies);
    let access = match request_token(request.headers(), request.uri()) {
        Ok(token) => state.auth.check(token.as_deref()).await,
        Err(_) if !state.auth.is_enabled() => state.auth.check(None).await,
        Err(denied) => Access::new(Err(denied)),
    };
    request.extensions_mut().insert(access);
    request.extensions_mut().insert(ClientIp(ip));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted = vec!["10.0.0.0/8".parse::<Cidr>().unwrap()];
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.1.1.1")]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_ip(ip("10.0.0.2"), &xff, &trusted), ip("203.0.113.5"), "the spoofed left entry is ignored");
        assert_eq!(client_ip(ip("198.51.100.1"), &xff, &trusted), ip("198.51.100.1"), "an untrusted peer");
        assert_eq!(client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted), ip("10.0.0.2"));
        let garbage = headers(&[("x-forwarded-for", "unknown, 10.2.2.2")]);
        assert_eq!(client_ip(ip("10.0.0.2"), &garbage, &trusted), ip("10.2.2.2"));
    }

    #[test]
    fn tokens_from_header_or_query() {
        let uri: Uri = "/hls/live/index.m3u8?x=1&token=a%2Bb".parse().unwrap();
        assert_eq!(request_token(&HeaderMap::new(), &uri).unwrap().as_deref(), Some("a+b"));
        let pasted: Uri = "/?tokens=x&token=ab+c/d==".parse().unwrap();
        assert_eq!(query_token(&pasted).as_deref(), Some("ab+c/d=="), "base64 pasted as is");
        let bearer = headers(&[("authorization", "Bearer  abc ")]);
        assert_eq!(request_token(&bearer, &uri).unwrap().as_deref(), Some("abc"), "the header wins");
        let basic = headers(&[("authorization", "Basic abc")]);
        assert!(request_token(&basic, &uri).is_err());
        assert_eq!(request_token(&HeaderMap::new(), &"/".parse().unwrap()).unwrap(), None);
    }
}
