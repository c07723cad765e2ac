//! GStreamer only: sources, encoder choice, the per-stream pipeline, HLS output and the latency
//! strip. Hands out RTP packets and takes keyframe requests; knows nothing of HTTP or WebRTC.

pub mod camera;
pub mod encoder;
pub mod pipeline;
pub mod source;
pub mod strip;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use gstreamer as gst;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::{EncoderChoice, Source, StreamSpec, VideoSettings};
use pipeline::{PipelineSettings, StreamPipeline};

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("GStreamer failed to initialise: {0}")]
    Init(String),
    #[error("GStreamer element {factory} is missing: install {package}")]
    MissingElement { factory: &'static str, package: &'static str },
    #[error("encoder {encoder} is not usable: {reason}")]
    EncoderUnavailable { encoder: &'static str, reason: String },
    #[error("camera {device}: {reason}")]
    Camera { device: String, reason: String },
    #[error("stream {stream}: source does not build: {reason}")]
    Source { stream: String, reason: String },
    #[error("stream {stream}: cannot link the pipeline: {reason}")]
    Link { stream: String, reason: String },
    #[error("stream {stream}: the pipeline refused to start")]
    StateChange { stream: String },
    #[error("stream {stream}: {reason}")]
    Runtime { stream: String, reason: String },
    #[error("HLS folder {path}: {source}")]
    HlsDir { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamState {
    Starting,
    Playing,
    Error,
}

/// Packets a slow reader may fall behind by before it starts losing them (~2.5 s at 2 Mbit/s).
const PACKET_BUFFER: usize = 512;
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Lets an action happen at most once per interval, and never loses a request: one that comes
/// too soon is put off to the end of the interval (once, however many come).
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    last: Option<Instant>,
    deferred: bool,
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    Now,
    /// Do it after this long, then call [`RateLimiter::deferred_done`].
    After(Duration),
    /// A deferred one will cover it.
    AlreadyDeferred,
}

impl RateLimiter {
    pub fn new(interval: Duration) -> RateLimiter {
        RateLimiter { interval, last: None, deferred: false }
    }

    pub fn request(&mut self, now: Instant) -> Grant {
        if self.deferred {
            return Grant::AlreadyDeferred;
        }
        match self.last.map(|last| now.saturating_duration_since(last)) {
            Some(since) if since < self.interval => {
                self.deferred = true;
                Grant::After(self.interval - since)
            }
            _ => {
                self.last = Some(now);
                Grant::Now
            }
        }
    }

    pub fn deferred_done(&mut self, now: Instant) {
        self.deferred = false;
        self.last = Some(now);
    }
}

/// One named stream: its status, its packets and its encoder's keyframe control.
pub struct MediaStream {
    pub name: String,
    pub source: Source,
    pub video: VideoSettings,
    pub hls_dir: PathBuf,
    status: Mutex<(StreamState, Option<String>)>,
    packets: broadcast::Sender<Bytes>,
    running: Mutex<Option<Arc<StreamPipeline>>>,
    keyframe_limiter: Arc<Mutex<RateLimiter>>,
}

impl MediaStream {
    fn new(spec: &StreamSpec, video: VideoSettings, hls_root: &Path) -> MediaStream {
        MediaStream {
            name: spec.name.clone(),
            source: spec.source.clone(),
            video,
            hls_dir: hls_root.join(&spec.name),
            status: Mutex::new((StreamState::Starting, None)),
            packets: broadcast::channel(PACKET_BUFFER).0,
            running: Mutex::new(None),
            keyframe_limiter: Arc::new(Mutex::new(RateLimiter::new(KEYFRAME_REQUEST_INTERVAL))),
        }
    }

    /// State and, in the error state, the reason.
    pub fn status(&self) -> (StreamState, Option<String>) {
        self.status.lock().expect("status lock").clone()
    }

    /// Reasons come from GStreamer and may quote the source: its passwords are masked.
    fn set_status(&self, state: StreamState, reason: Option<String>) {
        let reason = reason.map(|reason| crate::redact::Secrets::global().scrub(&reason).into_owned());
        *self.status.lock().expect("status lock") = (state, reason);
    }

    /// RTP packets from now on. A receiver that falls more than a few seconds behind loses the
    /// oldest ones and is told how many.
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.packets.subscribe()
    }

    /// Forces a keyframe now, or at the end of the current one-second window if one was
    /// already forced in it.
    pub fn request_keyframe(&self) {
        let Some(pipeline) = self.running.lock().expect("pipeline lock").clone() else { return };
        let grant = self.keyframe_limiter.lock().expect("keyframe lock").request(Instant::now());
        match grant {
            Grant::Now => pipeline.request_keyframe(),
            Grant::After(wait) => {
                let limiter = self.keyframe_limiter.clone();
                // Weak: a deferred request must not keep a stopped pipeline (and its camera) alive.
                let pipeline = Arc::downgrade(&pipeline);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    limiter.lock().expect("keyframe lock").deferred_done(Instant::now());
                    if let Some(pipeline) = pipeline.upgrade() {
                        pipeline.request_keyframe();
                    }
                });
            }
            Grant::AlreadyDeferred => {}
        }
    }

    fn on_packet(&self, packet: Bytes) {
        // The first packet after a (re)start is what proves the pipeline works.
        let mut status = self.status.lock().expect("status lock");
        if status.0 != StreamState::Playing {
            *status = (StreamState::Playing, None);
        }
        drop(status);
        // No receivers is not an error: nobody is watching over WebRTC.
        let _ = self.packets.send(packet);
    }

    /// Runs the stream until `shutdown`, rebuilding the pipeline after any failure.
    async fn supervise(self: Arc<Self>, encoder: EncoderChoice, latency_strip: bool, shutdown: CancellationToken) {
        let mut backoff = RESTART_BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                outcome = self.clone().run_once(encoder, latency_strip) => outcome,
                _ = shutdown.cancelled() => break,
            };
            *self.running.lock().expect("pipeline lock") = None;
            let err = match outcome {
                // A file that played to its end loops: start it again at once.
                Ok(()) if matches!(self.source, Source::File { .. }) => {
                    tracing::info!(stream = %self.name, "file ended; looping");
                    continue;
                }
                Ok(()) => MediaError::Runtime { stream: self.name.clone(), reason: "source ended".into() },
                Err(err) => err,
            };
            tracing::warn!(stream = %self.name, error = %err, retry_in = ?backoff, "stream stopped; restarting");
            self.set_status(StreamState::Error, Some(err.to_string()));
            if started.elapsed() > RESTART_BACKOFF_MAX * 3 {
                backoff = RESTART_BACKOFF_MIN;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        }
        *self.running.lock().expect("pipeline lock") = None;
        tracing::info!(stream = %self.name, "stream stopped");
    }

    /// One pipeline's life: build, play, and wait for the end of stream or an error.
    async fn run_once(self: Arc<Self>, encoder: EncoderChoice, latency_strip: bool) -> Result<(), MediaError> {
        // A restart starts a fresh playlist; old segments would only confuse players.
        let _ = std::fs::remove_dir_all(&self.hls_dir);
        std::fs::create_dir_all(&self.hls_dir)
            .map_err(|source| MediaError::HlsDir { path: self.hls_dir.clone(), source })?;
        let this = self.clone();
        let setup = tokio::task::spawn_blocking(move || {
            let settings = PipelineSettings { video: &this.video, encoder, latency_strip, hls_dir: &this.hls_dir };
            let sink = this.clone();
            let pipeline = StreamPipeline::build(&this.name, &this.source, &settings, move |p| sink.on_packet(p))?;
            pipeline.play()?;
            Ok::<_, MediaError>(pipeline)
        })
        .await
        .map_err(|err| MediaError::Runtime { stream: self.name.clone(), reason: err.to_string() })?;
        let pipeline = Arc::new(setup?);
        let mut messages = pipeline.bus().stream();
        *self.running.lock().expect("pipeline lock") = Some(pipeline.clone());
        tracing::info!(stream = %self.name, source = %self.source, "pipeline started");

        while let Some(message) = messages.next().await {
            match message.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(err) => {
                    let debug = err.debug().map(|d| format!(" ({d})")).unwrap_or_default();
                    return Err(MediaError::Runtime {
                        stream: self.name.clone(),
                        reason: format!("{}{debug}", err.error()),
                    });
                }
                gst::MessageView::Warning(warning) => {
                    tracing::warn!(stream = %self.name, warning = %warning.error(), "pipeline warning");
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// All streams, and the HLS folder they write into.
pub struct Media {
    pub streams: Vec<Arc<MediaStream>>,
    pub hls_root: PathBuf,
    /// Removes the HLS folder on drop when livegate made it.
    _temporary_hls: Option<tempfile::TempDir>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Media {
    /// Initialises GStreamer, picks the encoder and starts every stream.
    pub async fn start(
        specs: &[StreamSpec],
        video: VideoSettings,
        encoder: EncoderChoice,
        latency_strip: bool,
        hls_dir: Option<&Path>,
        shutdown: CancellationToken,
    ) -> Result<Media, MediaError> {
        gst::init().map_err(|err| MediaError::Init(err.to_string()))?;
        let encoder = tokio::task::spawn_blocking(move || encoder::resolve(encoder, &video))
            .await
            .map_err(|err| MediaError::Init(err.to_string()))??;
        tracing::info!(?encoder, "encoder chosen");

        let (hls_root, temporary) = match hls_dir {
            Some(dir) => (dir.to_owned(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("livegate-hls-")
                    .tempdir()
                    .map_err(|source| MediaError::HlsDir { path: std::env::temp_dir(), source })?;
                (dir.path().to_owned(), Some(dir))
            }
        };
        std::fs::create_dir_all(&hls_root).map_err(|source| MediaError::HlsDir { path: hls_root.clone(), source })?;
        tracing::info!(hls_dir = %hls_root.display(), temporary = temporary.is_some(), "HLS output folder");

        let streams: Vec<_> = specs.iter().map(|spec| Arc::new(MediaStream::new(spec, video, &hls_root))).collect();
        let tasks = streams
            .iter()
            .map(|stream| tokio::spawn(stream.clone().supervise(encoder, latency_strip, shutdown.clone())))
            .collect();
        Ok(Media { streams, hls_root, _temporary_hls: temporary, tasks: Mutex::new(tasks) })
    }

    pub fn stream(&self, name: &str) -> Option<&Arc<MediaStream>> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// Waits for every pipeline to stop after shutdown was signalled.
    pub async fn stopped(&self) {
        let tasks: Vec<_> = self.tasks.lock().expect("tasks lock").drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_requests_at_most_once_per_second_and_none_lost() {
        let mut limiter = RateLimiter::new(KEYFRAME_REQUEST_INTERVAL);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(limiter.request(at(0)), Grant::Now);
        assert_eq!(limiter.request(at(300)), Grant::After(Duration::from_millis(700)), "put off to the window's end");
        assert_eq!(limiter.request(at(500)), Grant::AlreadyDeferred, "a burst of viewers asks once more");
        limiter.deferred_done(at(1000));
        assert_eq!(limiter.request(at(1500)), Grant::After(Duration::from_millis(500)));
        limiter.deferred_done(at(2000));
        assert_eq!(limiter.request(at(3100)), Grant::Now);
    }
}
