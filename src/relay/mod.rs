//! livegate as a client of other WebRTC servers: it publishes streams to WHIP ingests
//! ([`publish`]) and takes sources from WHEP servers, another livegate included. Both speak the
//! same HTTP exchange ([`Server`]: an SDP offer POSTed, an answer and a resource URL back, a
//! DELETE at the end) and retry with the same back-off.

pub mod publish;
pub mod source;

use std::time::Duration;

use reqwest::header::{self, HeaderMap};
use reqwest::{StatusCode, Url};
use webrtc::peer_connection::RTCIceServer;

use crate::config::{BearerToken, Upstream};
use crate::webrtc::WebRtcError;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the {what} at {url} refused the token ({status}); check token or token_file")]
    Refused { what: &'static str, url: String, status: StatusCode },
    #[error("the {what} at {url} wants a token ({status}); set token or token_file")]
    NoToken { what: &'static str, url: String, status: StatusCode },
    #[error("the {what} at {url} answered {status}: {body}")]
    Status { what: &'static str, url: String, status: StatusCode, body: String },
    #[error("cannot reach the {what} at {url}: {reason}")]
    Unreachable { what: &'static str, url: String, reason: String },
    #[error("the {what} at {url} answered without {missing}")]
    BadAnswer { what: &'static str, url: String, missing: &'static str },
    #[error("the {what} at {url}: {reason}")]
    Settings { what: &'static str, url: String, reason: String },
    #[error(transparent)]
    WebRtc(#[from] WebRtcError),
}

/// How long one HTTP exchange with a server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// What of an error body is quoted back.
const QUOTED_BODY: usize = 200;

/// A WHIP or WHEP endpoint and how to reach it.
pub struct Server {
    /// "WHIP server", "WHEP origin": for messages.
    what: &'static str,
    url: Url,
    /// The URL as shown: passwords masked.
    shown: String,
    token: Option<BearerToken>,
    http: reqwest::Client,
}

/// A session the server created: where to DELETE it, and its answer.
pub struct Resource {
    pub location: Url,
    pub answer: String,
    /// STUN/TURN servers from its `Link` headers.
    pub ice_servers: Vec<RTCIceServer>,
}

impl Server {
    pub fn new(what: &'static str, upstream: &Upstream) -> Result<Server, RelayError> {
        let shown = upstream.url.to_string();
        let settings = |reason: String| RelayError::Settings { what, url: shown.clone(), reason };
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // A redirect could carry the token elsewhere; servers answer where they are asked.
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(upstream.insecure);
        if let Some(ca) = &upstream.ca {
            let pem =
                std::fs::read(ca).map_err(|err| settings(format!("cannot read source_ca {}: {err}", ca.display())))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|err| settings(format!("source_ca {} is not PEM certificates: {err}", ca.display())))?;
            if certificates.is_empty() {
                return Err(settings(format!("source_ca {} holds no certificate", ca.display())));
            }
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http.build().map_err(|err| settings(err.to_string()))?;
        Ok(Server { what, url: upstream.url.0.clone(), shown, token: upstream.token.clone(), http })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn request(&self, method: reqwest::Method, url: Url) -> Result<reqwest::RequestBuilder, RelayError> {
        let request = self.http.request(method, url);
        Ok(match &self.token {
            Some(token) => {
                let token = token.read().map_err(|reason| RelayError::Settings {
                    what: self.what,
                    url: self.shown.clone(),
                    reason,
                })?;
                request.bearer_auth(token.expose())
            }
            None => request,
        })
    }

    fn unreachable(&self, err: reqwest::Error) -> RelayError {
        // The error's own URL may carry a query token: it is left out, ours is shown masked.
        let err = err.without_url();
        let mut reason = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        RelayError::Unreachable { what: self.what, url: self.shown.clone(), reason }
    }

    /// STUN and TURN servers the server names before a session (RFC 9725 § 4.4: the answer
    /// to `OPTIONS`); none if it names none or does not answer.
    pub async fn ice_servers(&self) -> Vec<RTCIceServer> {
        let Ok(request) = self.request(reqwest::Method::OPTIONS, self.url.clone()) else { return Vec::new() };
        match request.send().await {
            Ok(response) if response.status().is_success() => ice_servers(response.headers()),
            _ => Vec::new(),
        }
    }

    /// POSTs `offer`; the server's answer and the session it made.
    pub async fn post_offer(&self, offer: &str) -> Result<Resource, RelayError> {
        let response = self
            .request(reqwest::Method::POST, self.url.clone())?
            .header(header::CONTENT_TYPE, "application/sdp")
            .body(offer.to_owned())
            .send()
            .await
            .map_err(|err| self.unreachable(err))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let (what, url) = (self.what, self.shown.clone());
            return Err(match self.token {
                Some(_) => RelayError::Refused { what, url, status },
                None => RelayError::NoToken { what, url, status },
            });
        }
        if status != StatusCode::CREATED && status != StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.trim().chars().take(QUOTED_BODY).collect();
            return Err(RelayError::Status { what: self.what, url: self.shown.clone(), status, body });
        }
        let bad = |missing| RelayError::BadAnswer { what: self.what, url: self.shown.clone(), missing };
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|location| self.url.join(location).ok())
            .ok_or_else(|| bad("a Location header"))?;
        let ice_servers = ice_servers(response.headers());
        let answer = response.text().await.map_err(|err| self.unreachable(err))?;
        if !answer.starts_with("v=0") {
            return Err(bad("an SDP answer"));
        }
        Ok(Resource { location, answer, ice_servers })
    }

    /// Ends the session (best effort: the server also notices when the peer goes).
    pub async fn delete(&self, resource: &Resource) {
        let Ok(request) = self.request(reqwest::Method::DELETE, resource.location.clone()) else { return };
        match request.send().await {
            Ok(response) => {
                tracing::debug!(url = %self.shown, status = %response.status(), "session ended with DELETE")
            }
            Err(err) => tracing::debug!(url = %self.shown, error = %self.unreachable(err), "session not deleted"),
        }
    }
}

/// ICE servers from `Link: <stun:host>; rel="ice-server"` headers (RFC 9725 § 4.4), with a
/// TURN server's `username` and `credential` attributes.
pub fn ice_servers(headers: &HeaderMap) -> Vec<RTCIceServer> {
    headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(ice_server)
        .collect()
}

fn ice_server(link: &str) -> Option<RTCIceServer> {
    let (target, parameters) = link.trim().strip_prefix('<')?.split_once('>')?;
    if !["stun:", "stuns:", "turn:", "turns:"].iter().any(|scheme| target.starts_with(scheme)) {
        return None;
    }
    let mut server = RTCIceServer { urls: vec![target.to_owned()], ..Default::default() };
    let mut ice = false;
    for parameter in parameters.split(';') {
        let Some((key, value)) = parameter.split_once('=') else { continue };
        let value = value.trim().trim_matches('"');
        match key.trim().to_ascii_lowercase().as_str() {
            "rel" => ice = value.eq_ignore_ascii_case("ice-server"),
            "username" => server.username = value.to_owned(),
            "credential" => server.credential = value.to_owned(),
            _ => {}
        }
    }
    ice.then_some(server)
}

/// Waits between attempts: from 1 s, doubling to 30 s, with ±20 % jitter so many gateways do
/// not retry a server in lockstep.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that lasted this long was a success: the next failure starts the back-off afresh.
pub const STABLE_FOR: Duration = Duration::from_secs(30);

/// How one session with a server ended.
pub enum Ended {
    /// Shutdown.
    Stopped,
    /// What was offered no longer fits (the stream's tracks changed): offer again at once.
    Renegotiate,
    Lost {
        lasted: Duration,
        reason: String,
    },
}

/// What to do after a session.
pub enum Next {
    Stop,
    Now,
    /// Wait `delay` after failing for `reason`.
    Retry {
        reason: String,
        delay: Duration,
    },
}

impl Backoff {
    /// What follows a session that ended with `outcome`: a session that lasted resets the
    /// back-off, a failure waits for it.
    pub fn after(&mut self, outcome: Result<Ended, RelayError>) -> Next {
        let reason = match outcome {
            Ok(Ended::Stopped) => return Next::Stop,
            Ok(Ended::Renegotiate) => return Next::Now,
            Ok(Ended::Lost { lasted, reason }) => {
                if lasted >= STABLE_FOR {
                    self.reset();
                }
                reason
            }
            Err(err) => err.to_string(),
        };
        Next::Retry { reason, delay: self.next(jitter()) }
    }

    /// The wait before the next attempt; `jitter` is uniform in 0..1.
    pub fn next(&mut self, jitter: f64) -> Duration {
        let doubled = BACKOFF_FIRST.saturating_mul(1 << self.failures.min(5)).min(BACKOFF_MAX);
        self.failures += 1;
        doubled.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)).min(BACKOFF_MAX)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

fn jitter() -> f64 {
    f64::from(crate::webrtc::rand_u32()) / f64::from(u32::MAX)
}

/// Sleeps `delay`; `false` if `stop` came first.
pub async fn wait_unless_stopped(delay: Duration, stop: &tokio_util::sync::CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_name_stun_and_turn_servers() {
        let mut headers = HeaderMap::new();
        headers.append(header::LINK, r#"<stun:stun.example.net>; rel="ice-server""#.parse().unwrap());
        headers.append(
            header::LINK,
            r#"<turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; credential="pass"; credential-type="password", <https://example.net/other>; rel="next""#
                .parse()
                .unwrap(),
        );
        headers.append(header::LINK, r#"<stun:not-ice.example.net>; rel="alternate""#.parse().unwrap());
        let servers = ice_servers(&headers);
        assert_eq!(servers.len(), 2, "{servers:?}");
        assert_eq!(servers[0].urls, ["stun:stun.example.net"]);
        assert_eq!(servers[1].urls, ["turn:turn.example.net?transport=udp"]);
        assert_eq!((servers[1].username.as_str(), servers[1].credential.as_str()), ("user", "pass"));
    }

    #[test]
    fn backs_off_from_one_second_to_thirty_and_starts_again_after_a_success() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| backoff.next(0.5).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next(0.5), Duration::from_secs(1));
        let low = Backoff::default().next(0.0);
        assert_eq!(low, Duration::from_millis(800));
    }
}
