//! Who may watch. Two roles: a **viewer** watches the streams its credential allows; an
//! **admin** also sees the full stream list and operational endpoints. Credentials are static
//! tokens, token files (re-read when they change, as a Kubernetes Secret mount does) and JWTs
//! (HS256 from a secret file; RS256/ES256 from a JWKS file or URL). With none configured,
//! everyone is an admin, as before access control existed. Tokens are never logged: a
//! [`holder`](Grant::holder) names a credential by a hash prefix or its JWT subject.

pub mod jwt;
pub mod tokens;
mod watch;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::AccessSettings;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {what} {path}: {reason}")]
    Read { what: &'static str, path: std::path::PathBuf, reason: String },
    #[error("{what} {path}: {reason}")]
    Invalid { what: &'static str, path: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Admin,
}

/// The streams a credential may watch: patterns where `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamScope {
    All,
    Only(Vec<String>),
}

impl StreamScope {
    pub fn allows(&self, stream: &str) -> bool {
        match self {
            StreamScope::All => true,
            StreamScope::Only(patterns) => patterns.iter().any(|pattern| glob_match(pattern, stream)),
        }
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A checked credential: what its holder may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub streams: StreamScope,
    /// Names the credential in logs without revealing it.
    pub holder: String,
}

/// Why a request is turned away. The first two are 401 (who are you?), the others 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this gateway needs a token: send Authorization: Bearer TOKEN or add ?token=TOKEN")]
    NoCredential,
    #[error("the token is not valid: {0}")]
    BadCredential(String),
    #[error("this token may not watch stream {0:?}")]
    StreamNotAllowed(String),
    #[error("this needs an admin token")]
    NotAdmin,
}

impl Denied {
    /// True for a missing or bad credential (401), false for a valid one lacking rights (403).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Denied::NoCredential | Denied::BadCredential(_))
    }
}

/// What one request may do, from the credential it carried.
#[derive(Debug, Clone)]
pub struct Access(Result<Grant, Denied>);

impl Access {
    pub fn new(checked: Result<Grant, Denied>) -> Access {
        Access(checked)
    }

    pub fn grant(&self) -> Result<&Grant, Denied> {
        self.0.as_ref().map_err(Clone::clone)
    }

    /// May watch this stream.
    pub fn viewer_of(&self, stream: &str) -> Result<&Grant, Denied> {
        let grant = self.grant()?;
        if grant.streams.allows(stream) {
            Ok(grant)
        } else {
            Err(Denied::StreamNotAllowed(stream.to_owned()))
        }
    }

    pub fn admin(&self) -> Result<&Grant, Denied> {
        let grant = self.grant()?;
        if grant.role == Role::Admin {
            Ok(grant)
        } else {
            Err(Denied::NotAdmin)
        }
    }
}

/// Checks credentials against everything configured.
pub struct Auth {
    enabled: bool,
    tokens: tokens::TokenSet,
    jwt: Option<jwt::JwtVerifier>,
}

impl Auth {
    /// Loads every credential source; files are watched until `shutdown`.
    pub async fn start(settings: &AccessSettings, shutdown: CancellationToken) -> Result<Auth, AuthError> {
        let tokens = tokens::TokenSet::start(settings, shutdown.clone())?;
        let jwt = if settings.uses_jwt() { Some(jwt::JwtVerifier::start(settings, shutdown).await?) } else { None };
        Ok(Auth { enabled: settings.is_enabled(), tokens, jwt })
    }

    /// Nobody needs a credential: every caller is an admin of every stream.
    pub fn open() -> Auth {
        Auth { enabled: false, tokens: tokens::TokenSet::default(), jwt: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Checks the credential a request carried, if any.
    pub async fn check(&self, token: Option<&str>) -> Access {
        if !self.enabled {
            return Access(Ok(Grant { role: Role::Admin, streams: StreamScope::All, holder: "anyone".into() }));
        }
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Access(Err(Denied::NoCredential));
        };
        if let Some(grant) = self.tokens.lookup(token) {
            return Access(Ok(grant));
        }
        let checked = match &self.jwt {
            Some(jwt) if jwt::looks_like_jwt(token) => jwt.verify(token).await,
            _ => Err(Denied::BadCredential("unknown token".into())),
        };
        if let Err(denied) = &checked {
            tracing::debug!(token = %tokens::token_id(token), reason = %denied, "credential refused");
        }
        Access(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("lobby-*", "lobby-1"));
        assert!(glob_match("lobby-*", "lobby-"));
        assert!(!glob_match("lobby-*", "lobby"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("cam1", "cam1"));
        assert!(!glob_match("cam1", "cam10"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(!glob_match("*ab*ab", "ab"), "the parts may not overlap");
    }

    #[test]
    fn access_checks_role_and_stream() {
        let viewer = Access::new(Ok(Grant {
            role: Role::Viewer,
            streams: StreamScope::Only(vec!["cam1".into(), "lobby-*".into()]),
            holder: "t".into(),
        }));
        assert!(viewer.viewer_of("cam1").is_ok());
        assert!(viewer.viewer_of("lobby-2").is_ok());
        assert_eq!(viewer.viewer_of("yard").unwrap_err(), Denied::StreamNotAllowed("yard".into()));
        assert_eq!(viewer.admin().unwrap_err(), Denied::NotAdmin);
        assert!(!Denied::NotAdmin.is_unauthenticated());
        let nobody = Access::new(Err(Denied::NoCredential));
        assert!(nobody.viewer_of("cam1").unwrap_err().is_unauthenticated());
    }

    #[tokio::test]
    async fn open_gateway_admits_everyone_and_closed_one_needs_a_token() {
        let open = Auth::open();
        assert!(open.check(None).await.admin().is_ok());
        let settings = AccessSettings { viewer_tokens: vec!["view-token-1".parse().unwrap()], ..Default::default() };
        let auth = Auth::start(&settings, CancellationToken::new()).await.unwrap();
        assert_eq!(auth.check(None).await.grant().unwrap_err(), Denied::NoCredential);
        assert!(auth.check(Some("wrong")).await.grant().unwrap_err().is_unauthenticated());
        let grant = auth.check(Some("view-token-1")).await;
        assert_eq!(grant.viewer_of("any").unwrap().role, Role::Viewer);
        assert!(!grant.grant().unwrap().holder.contains("view-token-1"));
    }
}
