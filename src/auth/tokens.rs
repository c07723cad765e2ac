//! Static bearer tokens: given in settings or read from files, one per line. Tokens are kept
//! as SHA-256 digests, so a lookup neither keeps the secret around nor leaks it by timing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{watch, AuthError, Grant, Role, StreamScope};
use crate::config::AccessSettings;
use crate::redact::Secrets;

type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// How a token shows in logs: the first 8 hex digits of its SHA-256.
pub fn token_id(token: &str) -> String {
    digest(token)[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The tokens of a token file: one per line; blank lines and `#` comments are skipped.
pub fn parse_lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).collect()
}

/// One file of tokens for one role.
struct TokenFile {
    role: Role,
    digests: RwLock<HashSet<TokenDigest>>,
}

impl TokenFile {
    fn load(&self, path: &Path, content: &[u8]) {
        let text = String::from_utf8_lossy(content);
        let tokens = parse_lines(&text);
        for token in &tokens {
            Secrets::global().register(token);
        }
        let digests: HashSet<_> = tokens.iter().map(|t| digest(t)).collect();
        tracing::info!(path = %path.display(), role = ?self.role, tokens = digests.len(), "token file loaded");
        *self.digests.write().expect("token file lock") = digests;
    }
}

#[derive(Default)]
pub struct TokenSet {
    fixed: HashMap<TokenDigest, Role>,
    files: Vec<Arc<TokenFile>>,
}

impl TokenSet {
    /// Reads the token files (a missing one is an error) and watches them until `shutdown`.
    pub fn start(settings: &AccessSettings, shutdown: CancellationToken) -> Result<TokenSet, AuthError> {
        let mut fixed = HashMap::new();
        for (tokens, role) in [(&settings.viewer_tokens, Role::Viewer), (&settings.admin_tokens, Role::Admin)] {
            for token in tokens {
                let entry = fixed.entry(digest(token.expose())).or_insert(role);
                *entry = (*entry).max(role);
            }
        }
        let mut files = Vec::new();
        for (path, role) in [(&settings.viewer_token_file, Role::Viewer), (&settings.admin_token_file, Role::Admin)] {
            let Some(path) = path else { continue };
            files.push(watch_file(path.clone(), role, shutdown.clone())?);
        }
        Ok(TokenSet { fixed, files })
    }

    /// The grant of a known token: the highest role it is listed under, for every stream.
    pub fn lookup(&self, token: &str) -> Option<Grant> {
        let digest = digest(token);
        let from_files = self
            .files
            .iter()
            .filter(|file| file.digests.read().expect("token file lock").contains(&digest))
            .map(|file| file.role);
        let role = self.fixed.get(&digest).copied().into_iter().chain(from_files).max()?;
        Some(Grant { role, streams: StreamScope::All, holder: format!("token:{}", token_id(token)) })
    }
}

fn watch_file(path: PathBuf, role: Role, shutdown: CancellationToken) -> Result<Arc<TokenFile>, AuthError> {
    let content = std::fs::read(&path).map_err(|err| AuthError::Read {
        what: "token file",
        path: path.clone(),
        reason: err.to_string(),
    })?;
    let file = Arc::new(TokenFile { role, digests: RwLock::default() });
    file.load(&path, &content);
    let watched = file.clone();
    let shown = path.clone();
    watch::spawn(path, content, shutdown, move |content| watched.load(&shown, content));
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_skip_blanks_and_comments() {
        assert_eq!(parse_lines("# viewers\n  abc  \n\n def\n#x\n"), vec!["abc", "def"]);
    }

    #[tokio::test]
    async fn files_are_read_and_re_read_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("viewers");
        std::fs::write(&path, "first-token\n").unwrap();
        let settings = AccessSettings {
            viewer_token_file: Some(path.clone()),
            admin_tokens: vec!["admin-token".parse().unwrap()],
            ..Default::default()
        };
        let shutdown = CancellationToken::new();
        let set = TokenSet::start(&settings, shutdown.clone()).unwrap();
        assert_eq!(set.lookup("first-token").unwrap().role, Role::Viewer);
        assert_eq!(set.lookup("admin-token").unwrap().role, Role::Admin);
        assert!(set.lookup("second-token").is_none());

        // A Kubernetes-style swap: a new file renamed over the old one.
        let next = dir.path().join("viewers.new");
        std::fs::write(&next, "second-token\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        let deadline = std::time::Instant::now() + watch::POLL * 3;
        while set.lookup("second-token").is_none() {
            assert!(std::time::Instant::now() < deadline, "the new token was never loaded");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(set.lookup("first-token").is_none(), "the rotated-out token is refused");
        shutdown.cancel();

        let missing = AccessSettings { admin_token_file: Some(dir.path().join("nope")), ..Default::default() };
        let err = TokenSet::start(&missing, CancellationToken::new()).err().unwrap().to_string();
        assert!(err.contains("token file") && err.contains("nope"), "{err}");
    }
}
