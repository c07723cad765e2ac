//! TLS: certificates from files (reloaded when they change, as a Kubernetes Secret mount does)
//! or a self-signed one kept in the state folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::TlsMode;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {cert} / key {key}: {reason}")]
    Load { cert: PathBuf, key: PathBuf, reason: String },
    #[error("cannot create the self-signed certificate in {dir}: {reason}")]
    SelfSigned { dir: PathBuf, reason: String },
}

pub const SELF_SIGNED_CERT: &str = "selfsigned.crt";
pub const SELF_SIGNED_KEY: &str = "selfsigned.key";
/// The names the self-signed certificate was made for, one per line.
pub const SELF_SIGNED_NAMES: &str = "selfsigned.names";
const RELOAD_POLL: Duration = Duration::from_secs(2);

/// The certificate in use, for `/metrics`.
#[derive(Debug, Default)]
pub struct CertificateStatus {
    /// Times a changed certificate was loaded without a restart.
    pub reloads: AtomicU64,
    /// When the certificate expires (its notAfter, seconds since the Unix epoch); 0 if unknown.
    pub not_after: AtomicI64,
}

impl CertificateStatus {
    fn in_use(&self, cert_pem: &[u8]) {
        let not_after = rustls_pemfile_first_cert(cert_pem)
            .and_then(|der| Some(x509_parser::parse_x509_certificate(&der).ok()?.1.validity().not_after.timestamp()));
        self.not_after.store(not_after.unwrap_or(0), Ordering::Relaxed);
    }
}

/// Loads the certificate; for files given by the operator, also watches them for changes.
pub async fn load(
    mode: &TlsMode,
    state_dir: &Path,
    status: Arc<CertificateStatus>,
    shutdown: CancellationToken,
) -> Result<Option<RustlsConfig>, TlsError> {
    let (cert, key, watch) = match mode {
        TlsMode::Off => return Ok(None),
        TlsMode::Files { cert, key } => (cert.clone(), key.clone(), true),
        TlsMode::SelfSigned { extra_names } => {
            let (cert, key) = self_signed(state_dir, extra_names)?;
            (cert, key, false)
        }
    };
    let config = load_files(&cert, &key, &status).await?;
    if watch {
        tokio::spawn(reload_on_change(config.clone(), cert, key, status, shutdown));
    }
    Ok(Some(config))
}

async fn load_files(cert: &Path, key: &Path, status: &CertificateStatus) -> Result<RustlsConfig, TlsError> {
    let pem = read_pair(cert, key)?;
    status.in_use(&pem.0);
    let fingerprint = fingerprint(&pem.0);
    let config = RustlsConfig::from_pem(pem.0, pem.1).await.map_err(|err| TlsError::Load {
        cert: cert.into(),
        key: key.into(),
        reason: err.to_string(),
    })?;
    tracing::info!(cert = %cert.display(), sha256 = %fingerprint, "TLS certificate loaded");
    Ok(config)
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|err| TlsError::Load {
            cert: cert.into(),
            key: key.into(),
            reason: format!("{}: {err}", path.display()),
        })
    };
    Ok((read(cert)?, read(key)?))
}

/// SHA-256 of the first certificate in a PEM chain, as browsers show it.
pub fn fingerprint(cert_pem: &[u8]) -> String {
    fingerprint_der(&rustls_pemfile_first_cert(cert_pem).unwrap_or_default())
}

/// SHA-256 of a DER certificate, colon-separated hex.
pub fn fingerprint_der(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn rustls_pemfile_first_cert(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).next()?.ok().map(|c| c.to_vec())
}

/// Polls the files: a Secret update swaps a symlink, which no inotify watch on the file sees.
async fn reload_on_change(
    config: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
    status: Arc<CertificateStatus>,
    shutdown: CancellationToken,
) {
    let mut loaded = read_pair(&cert, &key).ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELOAD_POLL) => {}
            _ = shutdown.cancelled() => return,
        }
        let Ok(current) = read_pair(&cert, &key) else {
            continue;
        };
        if loaded.as_ref() == Some(&current) {
            continue;
        }
        match config.reload_from_pem(current.0.clone(), current.1.clone()).await {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), sha256 = %fingerprint(&current.0), "TLS certificate reloaded");
                status.in_use(&current.0);
                status.reloads.fetch_add(1, Ordering::Relaxed);
                loaded = Some(current);
            }
            // Half-written files during a swap fail to parse; the next poll sees them whole.
            Err(err) => {
                tracing::warn!(cert = %cert.display(), error = %err, "TLS certificate changed but does not load; keeping the old one")
            }
        }
    }
}

/// The self-signed certificate in `state_dir` for localhost, the loopback addresses, the host
/// name and `extra_names`; made again when those names change (a new `--tls-san`).
fn self_signed(state_dir: &Path, extra_names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = state_dir.join(SELF_SIGNED_CERT);
    let key = state_dir.join(SELF_SIGNED_KEY);
    let names_file = state_dir.join(SELF_SIGNED_NAMES);
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    names.extend(hostname());
    names.extend(extra_names.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|name| seen.insert(name.clone()));
    let recorded = std::fs::read_to_string(&names_file).unwrap_or_default();
    if cert.exists() && key.exists() && recorded == names.join("\n") {
        return Ok((cert, key));
    }
    let fail = |reason: String| TlsError::SelfSigned { dir: state_dir.into(), reason };
    let generated = rcgen::generate_simple_self_signed(names.clone()).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(state_dir).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&cert, generated.cert.pem()).map_err(|e| fail(e.to_string()))?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes()).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&names_file, names.join("\n")).map_err(|e| fail(e.to_string()))?;
    tracing::info!(cert = %cert.display(), ?names, "self-signed certificate created");
    Ok((cert, key))
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?.write_all(contents)
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_kept_across_restarts_and_remade_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed(dir.path(), &[]).unwrap();
        let first = std::fs::read(&cert).unwrap();
        self_signed(dir.path(), &[]).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first, "kept across restarts");
        self_signed(dir.path(), &["camera.lan".into()]).unwrap();
        assert_ne!(std::fs::read(&cert).unwrap(), first, "made again for a new name");
        assert!(std::fs::read_to_string(dir.path().join(SELF_SIGNED_NAMES)).unwrap().contains("camera.lan"));
        let key = std::fs::metadata(dir.path().join(SELF_SIGNED_KEY)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600, "the key is private");
    }
}
