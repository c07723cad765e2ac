//! Files that are re-read when their content changes: a Kubernetes Secret mount swaps a
//! symlink rather than writing in place, so content is compared, not modification times.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often watched files are read again.
pub const POLL: Duration = Duration::from_secs(2);

/// Calls `apply` with the file's content each time it differs from the last content applied,
/// until `shutdown`. A file that cannot be read keeps what was applied last.
pub fn spawn(path: PathBuf, first: Vec<u8>, shutdown: CancellationToken, apply: impl Fn(&[u8]) + Send + 'static) {
    tokio::spawn(async move {
        let mut applied = first;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
            match tokio::fs::read(&path).await {
                Ok(current) if current != applied => {
                    apply(&current);
                    applied = current;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(path = %path.display(), error = %err, "watched file unreadable; keeping the last content")
                }
            }
        }
    });
}
