//! Publishing streams to WHIP ingests (RFC 9725): each publication is a peer sending the
//! stream's one encoding, like a viewer's, kept up with back-off whatever the server does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::peer_connection::RTCIceServer;

use super::{wait_unless_stopped, Backoff, Ended, Next, RelayError, Server};
use crate::config::PublishSpec;
use crate::signalling::WHIP;
use crate::webrtc::stats::Counters;
use crate::webrtc::{Carried, Feed, Viewer, WebRtc};

const WHIP_SERVER: &str = "WHIP server";
/// How often the publication's bitrate is measured.
const BITRATE_EVERY: Duration = Duration::from_secs(1);

/// One stream published to one WHIP server.
pub struct Publication {
    pub stream: String,
    /// The server's URL, passwords masked.
    pub url: String,
    status: Mutex<Status>,
    reconnects: AtomicU64,
    bitrate_bps: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublicationState {
    /// Offering, or connecting to the server.
    Connecting,
    /// The server takes the stream.
    Publishing,
    /// Waiting to try again after a failure.
    Retrying,
}

struct Status {
    state: PublicationState,
    since: u64,
    last_error: Option<String>,
    viewer: Option<Arc<Viewer>>,
}

/// A publication as `/api/streams` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PublicationView {
    pub url: String,
    pub state: PublicationState,
    /// When it entered its state, in seconds since the Unix epoch.
    pub since: u64,
    pub last_error: Option<String>,
    /// RTP bits per second sent to the server over the last second.
    pub bitrate_bps: u64,
    pub reconnects: u64,
}

impl Publication {
    pub fn view(&self) -> PublicationView {
        let status = self.status.lock().expect("publication lock");
        let connected = status.viewer.as_ref().is_some_and(|viewer| viewer.transport() != "connecting");
        let state = match status.state {
            PublicationState::Connecting if connected => PublicationState::Publishing,
            state => state,
        };
        PublicationView {
            url: self.url.clone(),
            state,
            since: status.since,
            last_error: status.last_error.clone(),
            bitrate_bps: if state == PublicationState::Publishing {
                self.bitrate_bps.load(Ordering::Relaxed)
            } else {
                0
            },
            reconnects: self.reconnects(),
        }
    }

    /// Attempts made after a failure, since start.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn set(&self, state: PublicationState, error: Option<String>, viewer: Option<Arc<Viewer>>) {
        let mut status = self.status.lock().expect("publication lock");
        if status.state != state {
            status.since = unix_now();
        }
        status.state = state;
        if error.is_some() {
            status.last_error = error;
        }
        status.viewer = viewer;
    }
}

/// Every publication, and their tasks.
pub struct Publications {
    pub all: Vec<Arc<Publication>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// How long shutdown waits for the servers to hear our DELETEs.
const STOP_GRACE: Duration = Duration::from_secs(3);

impl Publications {
    /// The publications of `stream`.
    pub fn of<'a>(&'a self, stream: &'a str) -> impl Iterator<Item = &'a Arc<Publication>> + 'a {
        self.all.iter().filter(move |p| p.stream == stream)
    }

    /// Ends every session with its server (DELETE), before the viewers are closed.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(STOP_GRACE, self.tasks.wait()).await.is_err() {
            tracing::warn!("WHIP publications still ending at shutdown");
        }
    }
}

/// Starts every configured publication; `feed` finds each stream's packets. Each runs until
/// [`Publications::stop`].
pub fn start(
    specs: &[PublishSpec],
    webrtc: Arc<WebRtc>,
    feed: impl Fn(&str) -> Option<Arc<dyn Feed>>,
) -> Result<Publications, RelayError> {
    let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
    let mut publications = Vec::new();
    for spec in specs {
        let server = Server::new(WHIP_SERVER, &spec.to)?;
        let feed = feed(&spec.stream).expect("publications name configured streams");
        let publication = Arc::new(Publication {
            stream: spec.stream.clone(),
            url: server.shown().to_owned(),
            status: Mutex::new(Status {
                state: PublicationState::Connecting,
                since: unix_now(),
                last_error: None,
                viewer: None,
            }),
            reconnects: AtomicU64::new(0),
            bitrate_bps: AtomicU64::new(0),
        });
        tracing::info!(stream = %spec.stream, url = %publication.url, "publishing over WHIP");
        tasks.spawn(publication.clone().run(server, webrtc.clone(), feed, stop.clone()));
        publications.push(publication);
    }
    Ok(Publications { all: publications, tasks, stop })
}

/// How the watch over a session ended.
enum Watched {
    Closed,
    Stopped,
    Changed,
}

impl Publication {
    async fn run(self: Arc<Self>, server: Server, webrtc: Arc<WebRtc>, feed: Arc<dyn Feed>, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut ice_servers = server.ice_servers().await;
        loop {
            self.set(PublicationState::Connecting, None, None);
            let outcome = self.publish_once(&server, &webrtc, &feed, &mut ice_servers, &stop).await;
            match backoff.after(outcome) {
                Next::Stop => return,
                Next::Now => {
                    tracing::info!(stream = %self.stream, url = %self.url, "the stream's tracks changed; publishing them afresh")
                }
                Next::Retry { reason, delay } => {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stream = %self.stream, url = %self.url, %reason, retry_in = ?delay, "WHIP publication failed; retrying");
                    self.set(PublicationState::Retrying, Some(reason), None);
                    if !wait_unless_stopped(delay, &stop).await {
                        return;
                    }
                }
            }
        }
    }

    async fn publish_once(
        &self,
        server: &Server,
        webrtc: &Arc<WebRtc>,
        feed: &Arc<dyn Feed>,
        ice_servers: &mut Vec<RTCIceServer>,
        stop: &CancellationToken,
    ) -> Result<Ended, RelayError> {
        let carried = feed.carries();
        let offered = webrtc.offer_stream(&self.stream, feed.clone(), ice_servers.clone(), WHIP).await?;
        let resource = tokio::select! {
            resource = server.post_offer(&offered.sdp) => resource?,
            _ = stop.cancelled() => return Ok(Ended::Stopped),
        };
        // Kept for the next session: servers may name them only in the answer.
        if !resource.ice_servers.is_empty() {
            *ice_servers = resource.ice_servers.clone();
        }
        let viewer = match offered.accept(resource.answer.clone()).await {
            Ok(viewer) => viewer,
            Err(err) => {
                server.delete(&resource).await;
                return Err(err.into());
            }
        };
        self.set(PublicationState::Connecting, None, Some(viewer.clone()));
        let started = Instant::now();
        let watched = self.watch(&viewer, feed.as_ref(), &carried, stop).await;
        let connected = viewer.transport() != "connecting";
        server.delete(&resource).await;
        viewer.close();
        match watched {
            Watched::Stopped => return Ok(Ended::Stopped),
            Watched::Changed => return Ok(Ended::Renegotiate),
            Watched::Closed => {}
        }
        let reason = if connected {
            "the connection to the server was lost".to_owned()
        } else {
            format!(
                "no connection within {} s of the answer (ICE or DTLS failed: is UDP open between livegate and the server?)",
                crate::webrtc::CONNECT_TIMEOUT.as_secs()
            )
        };
        Ok(Ended::Lost { lasted: started.elapsed(), reason })
    }

    /// Measures the bitrate until the session ends, `stop`, or the stream's tracks are no longer
    /// what was offered (`carried`).
    async fn watch(&self, viewer: &Viewer, feed: &dyn Feed, carried: &Carried, stop: &CancellationToken) -> Watched {
        let mut tick = tokio::time::interval(BITRATE_EVERY);
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::select! {
                _ = viewer.closed() => return Watched::Closed,
                _ = stop.cancelled() => return Watched::Stopped,
                _ = tick.tick() => {
                    if feed.carries() != *carried {
                        return Watched::Changed;
                    }
                    let bytes = Counters::get(&viewer.stats.own.bytes_sent);
                    let seconds = last.0.elapsed().as_secs_f64().max(1e-3);
                    let bps = (bytes.saturating_sub(last.1) as f64 * 8.0 / seconds) as u64;
                    self.bitrate_bps.store(bps, Ordering::Relaxed);
                    last = (Instant::now(), bytes);
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    crate::media::strip::unix_now_ms() / 1000
}
