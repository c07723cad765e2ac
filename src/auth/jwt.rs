//! JWTs: HS256 signed with a shared secret (from a file), or RS256/ES256 signed with keys from a
//! JWKS file or URL. The URL's keys are cached, fetched again when a token names a key id we do
//! not have (at most every few seconds) and every few minutes regardless. Checked: the
//! signature, `exp`, `nbf` (with leeway), and `aud`/`iss` when configured. An optional
//! `livegate` claim narrows the holder: `{"role": "viewer"|"admin", "streams": ["cam1", "lobby-*"]}`;
//! without it a valid token is a viewer of every stream.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{watch, AuthError, Denied, Grant, Role, StreamScope};
use crate::config::{AccessSettings, JwksUrl};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
/// A token with an unknown key id fetches the JWKS again at most this often.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(5);
/// The JWKS URL is fetched again this often, so removed keys stop working.
const JWKS_REFRESH: Duration = Duration::from_secs(300);
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const ACCEPTED: &str = "HS256 (with jwt_secret_file), RS256 or ES256 (with jwks_file or jwks_url)";

/// Three base64url parts separated by dots.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    livegate: Option<LivegateClaim>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LivegateClaim {
    #[serde(default = "viewer")]
    role: Role,
    streams: Option<Vec<String>>,
}

fn viewer() -> Role {
    Role::Viewer
}

pub struct JwtVerifier {
    secret: Option<Arc<RwLock<Vec<u8>>>>,
    jwks: Option<Jwks>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl JwtVerifier {
    pub async fn start(settings: &AccessSettings, shutdown: CancellationToken) -> Result<JwtVerifier, AuthError> {
        let secret = match &settings.jwt_secret_file {
            Some(path) => Some(watch_secret(path.clone(), shutdown.clone())?),
            None => None,
        };
        let jwks = match (&settings.jwks_file, &settings.jwks_url) {
            (Some(path), _) => Some(Jwks::from_file(path.clone(), shutdown.clone())?),
            (None, Some(url)) => Some(Jwks::from_url(url.clone(), shutdown).await),
            (None, None) => None,
        };
        Ok(JwtVerifier { secret, jwks, audience: settings.jwt_audience.clone(), issuer: settings.jwt_issuer.clone() })
    }

    pub async fn verify(&self, token: &str) -> Result<Grant, Denied> {
        let bad = |reason: String| Denied::BadCredential(reason);
        let header = jsonwebtoken::decode_header(token).map_err(|err| bad(format!("not a JWT ({err})")))?;
        let key = match (header.alg, &self.secret, &self.jwks) {
            (Algorithm::HS256, Some(secret), _) => DecodingKey::from_secret(&secret.read().expect("secret lock")),
            (Algorithm::RS256 | Algorithm::ES256, _, Some(jwks)) => {
                let kid = header.kid.as_deref().ok_or_else(|| bad("the JWT names no key id (kid)".into()))?;
                jwks.key(kid).await.ok_or_else(|| bad(format!("no signing key with id {kid:?}")))?
            }
            (alg, _, _) => return Err(bad(format!("algorithm {alg:?} is not accepted here; accepted: {ACCEPTED}"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.validate_aud = self.audience.is_some();
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|err| bad(err.to_string()))?;
        let claims = data.claims;
        let (role, streams) = match claims.livegate {
            Some(LivegateClaim { role, streams: Some(streams) }) => (role, StreamScope::Only(streams)),
            Some(LivegateClaim { role, streams: None }) => (role, StreamScope::All),
            None => (Role::Viewer, StreamScope::All),
        };
        let holder = match claims.sub {
            Some(sub) => format!("jwt:{}", crate::redact::redact(&sub)),
            None => format!("jwt:{}", super::tokens::token_id(token)),
        };
        Ok(Grant { role, streams, holder })
    }
}

fn watch_secret(path: PathBuf, shutdown: CancellationToken) -> Result<Arc<RwLock<Vec<u8>>>, AuthError> {
    let content = std::fs::read(&path).map_err(|err| AuthError::Read {
        what: "JWT secret file",
        path: path.clone(),
        reason: err.to_string(),
    })?;
    let secret = Arc::new(RwLock::new(trim_secret(&content)?));
    let watched = secret.clone();
    let shown = path.clone();
    watch::spawn(path.clone(), content, shutdown, move |content| match trim_secret(content) {
        Ok(value) => {
            *watched.write().expect("secret lock") = value;
            tracing::info!(path = %shown.display(), "JWT secret reloaded");
        }
        Err(err) => tracing::warn!(error = %err, "JWT secret file changed but is unusable; keeping the old secret"),
    });
    Ok(secret)
}

/// The secret without a trailing newline (files written by `echo` have one).
fn trim_secret(content: &[u8]) -> Result<Vec<u8>, AuthError> {
    let trimmed = content.strip_suffix(b"\n").unwrap_or(content);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    if trimmed.len() < 16 {
        return Err(AuthError::Invalid {
            what: "JWT secret file",
            path: "(jwt_secret_file)".into(),
            reason: format!("the secret has {} bytes; accepted: at least 16 (32 or more recommended)", trimmed.len()),
        });
    }
    Ok(trimmed.to_vec())
}

enum JwksSource {
    File(PathBuf),
    Url { url: JwksUrl, client: reqwest::Client },
}

/// A cached JWKS and where it comes from; clones share the cache.
#[derive(Clone)]
struct Jwks {
    source: Arc<JwksSource>,
    keys: Arc<RwLock<JwkSet>>,
    /// Held while fetching, so a burst of unknown key ids fetches once.
    last_fetch: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

fn parse_jwks(bytes: &[u8], from: &str) -> Result<JwkSet, AuthError> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|err| AuthError::Invalid {
        what: "JWKS",
        path: from.to_owned(),
        reason: format!("not a JSON Web Key Set ({err})"),
    })?;
    Ok(set)
}

impl Jwks {
    fn from_file(path: PathBuf, shutdown: CancellationToken) -> Result<Jwks, AuthError> {
        let content = std::fs::read(&path).map_err(|err| AuthError::Read {
            what: "JWKS file",
            path: path.clone(),
            reason: err.to_string(),
        })?;
        let shown = path.display().to_string();
        let keys = Arc::new(RwLock::new(parse_jwks(&content, &shown)?));
        let watched = keys.clone();
        watch::spawn(path.clone(), content, shutdown, move |content| match parse_jwks(content, &shown) {
            Ok(set) => {
                tracing::info!(path = %shown, keys = set.keys.len(), "JWKS file reloaded");
                *watched.write().expect("jwks lock") = set;
            }
            Err(err) => tracing::warn!(error = %err, "JWKS file changed but is unusable; keeping the old keys"),
        });
        Ok(Jwks {
            source: Arc::new(JwksSource::File(path)),
            keys,
            last_fetch: Arc::new(tokio::sync::Mutex::new(Some(Instant::now()))),
        })
    }

    /// Fetches the keys now; an unreachable URL is logged and tried again later, so livegate
    /// starts while the identity provider is down (JWTs fail until it answers).
    async fn from_url(url: JwksUrl, shutdown: CancellationToken) -> Jwks {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(JWKS_FETCH_TIMEOUT)
            .build()
            .expect("a client with default settings builds");
        let jwks = Jwks {
            source: Arc::new(JwksSource::Url { url, client }),
            keys: Arc::new(RwLock::new(JwkSet { keys: Vec::new() })),
            last_fetch: Arc::new(tokio::sync::Mutex::new(None)),
        };
        jwks.refetch(Duration::ZERO).await;
        let refresher = jwks.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(JWKS_REFRESH) => refresher.refetch(Duration::ZERO).await,
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        jwks
    }

    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        self.refetch(JWKS_MIN_REFETCH).await;
        self.cached(kid)
    }

    fn cached(&self, kid: &str) -> Option<DecodingKey> {
        let keys = self.keys.read().expect("jwks lock");
        keys.find(kid).and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
    }

    /// Fetches the set again unless the last fetch is younger than `min_age`.
    async fn refetch(&self, min_age: Duration) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < min_age) {
            return;
        }
        *last = Some(Instant::now());
        let fetched = match &*self.source {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|err| format!("{}: {err}", path.display()))
                .and_then(|bytes| parse_jwks(&bytes, &path.display().to_string()).map_err(|e| e.to_string())),
            JwksSource::Url { url, client } => fetch(client, url).await,
        };
        match fetched {
            Ok(set) => {
                tracing::debug!(keys = set.keys.len(), "JWKS fetched");
                *self.keys.write().expect("jwks lock") = set;
            }
            Err(reason) => tracing::warn!(%reason, "cannot fetch the JWKS; keeping the keys we have"),
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &JwksUrl) -> Result<JwkSet, String> {
    let shown = crate::redact::redact(&url.0).into_owned();
    let response = client.get(&url.0).send().await.map_err(|err| format!("{shown}: {err}"))?;
    if !response.status().is_success() {
        return Err(format!("{shown} answered {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|err| format!("{shown}: {err}"))?;
    parse_jwks(&bytes, &shown).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    async fn verifier(secret: &str, audience: Option<&str>) -> (JwtVerifier, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        let settings = AccessSettings {
            jwt_secret_file: Some(path),
            jwt_audience: audience.map(str::to_owned),
            ..Default::default()
        };
        (JwtVerifier::start(&settings, CancellationToken::new()).await.unwrap(), dir)
    }

    fn hs256(secret: &str, claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    #[tokio::test]
    async fn hs256_claims_and_their_checks() {
        let secret = "0123456789abcdef0123456789abcdef";
        let (jwt, _dir) = verifier(secret, Some("livegate")).await;
        let exp = now() + 60;
        let grant = jwt
            .verify(&hs256(
                secret,
                json!({"exp": exp, "aud": "livegate", "sub": "alice", "livegate": {"streams": ["lobby-*"]}}),
            ))
            .await
            .unwrap();
        assert_eq!(grant.role, Role::Viewer);
        assert!(grant.streams.allows("lobby-1") && !grant.streams.allows("yard"));
        assert_eq!(grant.holder, "jwt:alice");
        let admin =
            jwt.verify(&hs256(secret, json!({"exp": exp, "aud": "livegate", "livegate": {"role": "admin"}}))).await;
        assert_eq!(admin.unwrap().role, Role::Admin);

        let within_leeway = hs256(secret, json!({"exp": now() - 10, "nbf": now() + 10, "aud": "livegate"}));
        assert!(jwt.verify(&within_leeway).await.is_ok(), "30 s of clock skew is tolerated");
        let refused = [
            ("expired", hs256(secret, json!({"exp": now() - 120, "aud": "livegate"})), "Expired"),
            ("not yet valid", hs256(secret, json!({"exp": exp, "nbf": now() + 120, "aud": "livegate"})), "Immature"),
            ("wrong audience", hs256(secret, json!({"exp": exp, "aud": "other"})), "Audience"),
            ("no exp", hs256(secret, json!({"aud": "livegate"})), "exp"),
            (
                "wrong signature",
                hs256("another-secret-of-32-bytes-long!", json!({"exp": exp, "aud": "livegate"})),
                "Signature",
            ),
            ("not a jwt", "a.b.c".to_owned(), "not a JWT"),
        ];
        for (what, token, reason) in refused {
            match jwt.verify(&token).await {
                Ok(grant) => panic!("{what}: accepted as {grant:?}"),
                Err(Denied::BadCredential(text)) => assert!(text.contains(reason), "{what}: {text}"),
                Err(other) => panic!("{what}: {other:?}"),
            }
        }
        let rs =
            encode(&Header::new(Algorithm::HS384), &json!({"exp": exp}), &EncodingKey::from_secret(secret.as_bytes()))
                .unwrap();
        let err = jwt.verify(&rs).await.unwrap_err().to_string();
        assert!(err.contains("HS384") && err.contains("accepted"), "{err}");
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(trim_secret(b"short\n").unwrap_err().to_string().contains("at least 16"));
        assert_eq!(trim_secret(b"0123456789abcdef\r\n").unwrap(), b"0123456789abcdef");
    }
}
