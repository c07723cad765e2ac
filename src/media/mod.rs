//! GStreamer only: sources, encoder choice, the per-stream pipelines, HLS output, the slate and
//! the latency strip. Hands out RTP packets and takes keyframe requests; knows nothing of HTTP
//! or WebRTC.
//!
//! Each stream is two pipelines joined by appsink → appsrc: a **capture** part (source bin →
//! strip → appsink) that may fail, stall and be rebuilt, and an **encoding** part (appsrc →
//! encoder → tee → HLS + RTP) that runs for the life of the stream. When the source fails or
//! sends nothing for `--source-timeout`, the supervisor feeds the encoder the slate instead, so
//! viewers stay connected and HLS stays one continuous playlist; it rebuilds the source in the
//! background and switches back, with a keyframe, on its first frame. appsink/appsrc rather than
//! `input-selector` keeps the two lifetimes apart: a broken source is torn down whole, with no
//! dynamic relinking inside a running pipeline (Debian's GStreamer has no `fallbackswitch`).

pub mod camera;
pub mod capture;
pub mod encoder;
pub mod fmp4;
pub mod hls;
pub mod inlet;
pub mod llhls;
pub mod passthrough;
pub mod pipeline;
pub mod signal;
pub mod slate;
pub mod source;
pub mod strip;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use gstreamer as gst;
use gstreamer_video::prelude::*;
use rtc::rtp;
use rtc::shared::marshal::Unmarshal;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::{AudioDevice, AudioMode, EncoderChoice, Source, StreamSpec, TranscodeMode, VideoSettings};
use capture::{Capture, CaptureOptions, Captured, Layout, VideoIn};
use passthrough::H264Profile;
use pipeline::{PipelineSettings, Plan, StreamPipeline, VideoPlan};
use signal::{Change, SignalMonitor};
use slate::Slate;

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
    #[error("file {path}: {reason}")]
    File { path: PathBuf, reason: String },
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
#[serde(rename_all = "kebab-case")]
pub enum StreamState {
    Starting,
    Playing,
    /// The source is away: viewers see the slate while it is reconnected.
    NoSignal,
    /// The encoding part failed (the source's failures are `NoSignal`).
    Error,
}

impl StreamState {
    pub const ALL: [StreamState; 4] =
        [StreamState::Starting, StreamState::Playing, StreamState::NoSignal, StreamState::Error];
}

/// A stream's state, why (unless playing), and since when (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: StreamState,
    pub reason: Option<String>,
    pub since: u64,
}

/// Packets a slow reader may fall behind by before it starts losing them (~2.5 s at 2 Mbit/s).
const PACKET_BUFFER: usize = 512;
/// Keyframes asked for to repair a viewer's picture (PLI, FIR, lag): a lossy viewer's requests
/// cost every viewer bitrate, so at most one a second.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);
/// Keyframes asked for by viewers who join: each waits at most this long for its first picture
/// (a GOP, 1 s, without one), and a crowd joining adds at most four keyframes a second.
const JOINING_KEYFRAME_INTERVAL: Duration = Duration::from_millis(250);
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a source's first streams may wait for the rest (`no-more-pads`) before the encoding
/// part is built for what it has.
const LAYOUT_WAIT: Duration = Duration::from_secs(2);
/// How often the supervisor looks for a stalled source.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);
/// Frames and sound between the capture's streaming threads and the supervisor: a few frames
/// and their sound (10–20 ms audio buffers).
const FRAME_CHANNEL: usize = 32;

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

/// What happened to a stream since it started, for `/metrics`.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Times the source was tried again after failing, stalling or ending.
    pub source_reconnects: AtomicU64,
    /// Times the signal was lost (the slate took over).
    pub signal_losses: AtomicU64,
    pub encoder_restarts: AtomicU64,
    /// Keyframes asked of the encoder (for new viewers, lagging ones, PLI and FIR), after the
    /// rate limit.
    pub keyframes_forced: AtomicU64,
    pub frames_from_source: AtomicU64,
    pub frames_from_slate: AtomicU64,
    /// Frames out of the encoding part (encoded or forwarded), as RTP (the packets that end a
    /// frame carry the marker bit).
    pub frames_encoded: AtomicU64,
    pub hls_segments: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One named stream: its status, its packets and its encoder's keyframe control.
pub struct MediaStream {
    pub name: String,
    pub source: Source,
    pub video: VideoSettings,
    pub hls_dir: PathBuf,
    status: Mutex<Status>,
    packets: broadcast::Sender<rtp::Packet>,
    audio_packets: broadcast::Sender<rtp::Packet>,
    running: Mutex<Option<Arc<StreamPipeline>>>,
    /// What the encoding part carries now, kept while it is rebuilt.
    plan: Mutex<Plan>,
    /// The source has had sound: the stream keeps an audio track (silent if need be) from then
    /// on, so viewers' negotiated tracks and the HLS layout stay valid.
    had_audio: AtomicBool,
    /// The camera's H.264 has B-frames, which WebRTC cannot carry: it is transcoded from then on.
    has_b_frames: AtomicBool,
    /// The name a V4L2 camera reported, to find it again if it comes back as another device.
    camera_name: Mutex<Option<String>>,
    keyframe_limiter: Arc<Mutex<RateLimiter>>,
    joining_keyframe_limiter: Arc<Mutex<RateLimiter>>,
    /// Where a WHEP source's packets come in, and its keyframe requests go out.
    pub inlet: Arc<inlet::RtpInlet>,
    /// The public HLS playlist, continued across encoders.
    playlist: Mutex<hls::Playlist>,
    /// Low-Latency HLS, continued across encoders.
    pub low_latency: Arc<llhls::LowLatencyHls>,
    pub counters: Arc<StreamCounters>,
}

impl MediaStream {
    fn new(spec: &StreamSpec, video: VideoSettings, hls_root: &Path) -> MediaStream {
        MediaStream {
            name: spec.name.clone(),
            source: spec.source.clone(),
            video,
            hls_dir: hls_root.join(&spec.name),
            status: Mutex::new(Status { state: StreamState::Starting, reason: None, since: unix_now_s() }),
            packets: broadcast::channel(PACKET_BUFFER).0,
            audio_packets: broadcast::channel(PACKET_BUFFER).0,
            running: Mutex::new(None),
            plan: Mutex::new(Plan { video: VideoPlan::Encode, audio: false }),
            had_audio: AtomicBool::new(false),
            has_b_frames: AtomicBool::new(false),
            camera_name: Mutex::new(None),
            keyframe_limiter: Arc::new(Mutex::new(RateLimiter::new(KEYFRAME_REQUEST_INTERVAL))),
            joining_keyframe_limiter: Arc::new(Mutex::new(RateLimiter::new(JOINING_KEYFRAME_INTERVAL))),
            inlet: Arc::default(),
            playlist: Mutex::new(hls::Playlist::new(
                pipeline::HLS_PLAYLIST_LENGTH,
                pipeline::HLS_FILES_KEPT,
                pipeline::HLS_SEGMENT_SECONDS,
            )),
            low_latency: Arc::default(),
            counters: Arc::default(),
        }
    }

    pub fn status(&self) -> Status {
        self.status.lock().expect("status lock").clone()
    }

    /// Reasons come from GStreamer and may quote the source: its passwords are masked.
    fn set_status(&self, state: StreamState, reason: Option<String>) {
        let reason = reason.map(|reason| crate::redact::Secrets::global().scrub(&reason).into_owned());
        *self.status.lock().expect("status lock") = Status { state, reason, since: unix_now_s() };
    }

    /// RTP packets from now on. A receiver that falls more than a few seconds behind loses the
    /// oldest ones and is told how many.
    pub fn subscribe(&self) -> broadcast::Receiver<rtp::Packet> {
        self.packets.subscribe()
    }

    /// Opus RTP packets from now on (silence while the source has none).
    pub fn subscribe_audio(&self) -> broadcast::Receiver<rtp::Packet> {
        self.audio_packets.subscribe()
    }

    /// What the stream carries now.
    pub fn output(&self) -> Output {
        let plan = self.plan.lock().expect("plan lock").clone();
        let video = match plan.video {
            VideoPlan::Encode => VideoOutput {
                codec: "h264",
                profile: encoder::H264_PROFILE.into(),
                profile_level_id: None,
                transcoded: true,
            },
            VideoPlan::Forward(H264Profile { profile, profile_level_id }) => {
                VideoOutput { codec: "h264", profile, profile_level_id: Some(profile_level_id), transcoded: false }
            }
        };
        Output { video, audio: plan.audio.then_some(AudioOutput { webrtc: "opus", hls: "aac" }) }
    }

    /// Forces a keyframe now, or at the end of the current one-second window if one was
    /// already forced in it: from our encoder, or from a WHEP origin whose video is forwarded
    /// (one request upstream for all the viewers asking). A camera cannot be asked.
    pub fn request_keyframe(&self) {
        self.force_keyframe(&self.keyframe_limiter)
    }

    /// Like [`MediaStream::request_keyframe`], for a viewer who joins, in windows of 250 ms.
    pub fn request_keyframe_for_joiner(&self) {
        self.force_keyframe(&self.joining_keyframe_limiter)
    }

    fn force_keyframe(&self, limiter: &Arc<Mutex<RateLimiter>>) {
        let Some(pipeline) = self.running.lock().expect("pipeline lock").clone() else { return };
        let upstream = pipeline.plan.video != VideoPlan::Encode;
        if upstream && !matches!(self.source, Source::Whep(_)) {
            return;
        }
        let grant = limiter.lock().expect("keyframe lock").request(Instant::now());
        let force = move |pipeline: &StreamPipeline, inlet: &inlet::RtpInlet, counters: &StreamCounters| {
            count(&counters.keyframes_forced);
            if upstream {
                inlet.request_keyframe();
            } else {
                pipeline.request_keyframe();
            }
        };
        match grant {
            Grant::Now => force(&pipeline, &self.inlet, &self.counters),
            Grant::After(wait) => {
                let (limiter, counters, inlet) = (limiter.clone(), self.counters.clone(), self.inlet.clone());
                // Weak: a deferred request must not keep a stopped pipeline (and its camera) alive.
                let pipeline = Arc::downgrade(&pipeline);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    limiter.lock().expect("keyframe lock").deferred_done(Instant::now());
                    if let Some(pipeline) = pipeline.upgrade() {
                        force(&pipeline, &inlet, &counters);
                    }
                });
            }
            Grant::AlreadyDeferred => {}
        }
    }

    /// Parsed here, once for every viewer.
    fn on_packet(&self, mut raw: Bytes) {
        if let Some(packet) = self.parse_rtp(&mut raw) {
            if packet.header.marker {
                count(&self.counters.frames_encoded);
                crate::hops::stamp(packet.header.timestamp, crate::hops::Hop::Appsink);
            }
            // No receivers is not an error: nobody is watching over WebRTC.
            let _ = self.packets.send(packet);
        }
    }

    fn on_audio_packet(&self, mut raw: Bytes) {
        if let Some(packet) = self.parse_rtp(&mut raw) {
            let _ = self.audio_packets.send(packet);
        }
    }

    fn parse_rtp(&self, raw: &mut Bytes) -> Option<rtp::Packet> {
        rtp::Packet::unmarshal(raw)
            .map_err(|err| tracing::warn!(stream = %self.name, error = %err, "malformed RTP packet from the pipeline"))
            .ok()
    }

    /// Runs the stream until `shutdown`: the encoding part for good (rebuilt only if it fails),
    /// fed by the source or the slate.
    async fn supervise(self: Arc<Self>, options: StreamOptions, shutdown: CancellationToken) {
        tracing::info!(stream = %self.name, source = %self.source, "stream starting");
        // Sound the configuration promises is in the first encoding part: no rebuild at start.
        let declared = source::SourceOptions {
            video: &self.video,
            audio: options.audio == AudioMode::Auto,
            audio_device: options.audio_device.as_ref(),
        };
        if source::declared_audio(&self.source, declared) == Some(true) {
            self.had_audio.store(true, Ordering::Relaxed);
        }
        let mut backoff = RESTART_BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let plan = Plan { video: VideoPlan::Encode, audio: self.had_audio.load(Ordering::Relaxed) };
            let outcome = match self.clone().start_encoder(options.encoder, plan).await {
                Ok(encoder) => self.feed(encoder, &options, &shutdown).await,
                Err(err) => Err(err),
            };
            let err = match outcome {
                Ok(()) => break,
                Err(err) => err,
            };
            tracing::warn!(stream = %self.name, error = %err, retry_in = ?backoff, "encoder stopped; restarting");
            count(&self.counters.encoder_restarts);
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
        tracing::info!(stream = %self.name, "stream stopped");
    }

    /// Appends the segments hlssink2 has finished to the public playlist, and deletes the files
    /// that left it. The playlist is replaced in one rename, so a reader never sees half of it.
    async fn publish_hls(&self) {
        let private = match tokio::fs::read_to_string(self.hls_dir.join(pipeline::HLSSINK2_PLAYLIST)).await {
            Ok(text) => text,
            Err(err) => return tracing::warn!(stream = %self.name, error = %err, "hlssink2's playlist unreadable"),
        };
        let (text, gone) = {
            let mut playlist = self.playlist.lock().expect("playlist lock");
            let gone = playlist.update_from(&private);
            (playlist.render(), gone)
        };
        let public = self.hls_dir.join(pipeline::HLS_PLAYLIST);
        let next = public.with_extension("m3u8.next");
        let written = async {
            tokio::fs::write(&next, text).await?;
            tokio::fs::rename(&next, &public).await
        };
        if let Err(err) = written.await {
            tracing::warn!(stream = %self.name, error = %err, "HLS playlist not written");
        }
        for file in gone {
            let _ = tokio::fs::remove_file(self.hls_dir.join(file)).await;
        }
    }

    /// Builds and starts the encoding part, off the async runtime, and makes it the running one.
    async fn start_encoder(
        self: Arc<Self>,
        encoder: EncoderChoice,
        plan: Plan,
    ) -> Result<Arc<StreamPipeline>, MediaError> {
        std::fs::create_dir_all(&self.hls_dir)
            .map_err(|source| MediaError::HlsDir { path: self.hls_dir.clone(), source })?;
        self.playlist.lock().expect("playlist lock").new_encoder();
        self.low_latency.new_encoder(plan.audio.then(pipeline::aac_format));
        let this = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            let settings = PipelineSettings { video: &this.video, encoder, hls_dir: &this.hls_dir, plan: &plan };
            let (video, audio) = (this.clone(), this.clone());
            let pipeline = StreamPipeline::build(
                &this.name,
                &settings,
                move |p| video.on_packet(p),
                move |p| audio.on_audio_packet(p),
                this.low_latency.clone(),
            )?;
            pipeline.play()?;
            Ok::<_, MediaError>(pipeline)
        })
        .await
        .map_err(|err| MediaError::Runtime { stream: self.name.clone(), reason: err.to_string() })??;
        let built = Arc::new(built);
        tracing::info!(
            stream = %self.name,
            video = ?built.plan.video,
            audio = built.plan.audio,
            elements = %built.element_factories().join(","),
            "encoding part started"
        );
        *self.plan.lock().expect("plan lock") = built.plan.clone();
        *self.running.lock().expect("pipeline lock") = Some(built.clone());
        Ok(built)
    }

    /// Replaces the encoding part with one that carries `plan`.
    async fn rebuild_encoder(
        self: &Arc<Self>,
        encoder: &mut Arc<StreamPipeline>,
        options: &StreamOptions,
        plan: Plan,
    ) -> Result<(), MediaError> {
        tracing::info!(stream = %self.name, from = ?encoder.plan, to = ?plan, "rebuilding the encoding part");
        *self.running.lock().expect("pipeline lock") = None;
        stop_off_runtime(encoder.clone()).await;
        *encoder = self.clone().start_encoder(options.encoder, plan).await?;
        Ok(())
    }

    /// What the encoding part should carry: the camera's own H.264 while it delivers some we
    /// may forward, else our encoder's; sound once the source has had some. Decided once the
    /// source has found all its streams (`settled`), so that it is rebuilt once, not per stream.
    fn wanted_plan(&self, live: bool, layout: &Layout, settled: bool) -> Plan {
        if settled && layout.audio && !self.had_audio.swap(true, Ordering::Relaxed) {
            tracing::info!(stream = %self.name, "the source has sound");
        }
        let video = match &layout.video {
            Some(VideoIn::H264(profile)) if live && settled => VideoPlan::Forward(profile.clone()),
            _ => VideoPlan::Encode,
        };
        Plan { video, audio: self.had_audio.load(Ordering::Relaxed) }
    }

    /// Feeds the encoding part until `shutdown` (`Ok`) or until it fails (`Err`): the source
    /// while it delivers, the slate while it does not, rebuilding the source in the background;
    /// the encoding part is rebuilt when what it must carry changes. Stops it at the end.
    async fn feed(
        self: &Arc<Self>,
        mut encoder: Arc<StreamPipeline>,
        options: &StreamOptions,
        shutdown: &CancellationToken,
    ) -> Result<(), MediaError> {
        let mut encoder_bus = encoder.bus().stream();
        let mut monitor = SignalMonitor::new(options.source_timeout, Instant::now());
        let mut slate = Slate::new(&self.video, &self.name);
        let slate_info = video_info(&self.video);
        let mut slate_tick = tokio::time::interval(Duration::from_secs(1) / self.video.fps);
        let mut check_tick = tokio::time::interval(SIGNAL_CHECK);
        // What captures send carries the generation of the capture that sent it, so leftovers
        // of a torn-down capture are ignored.
        let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<(u64, Captured)>(FRAME_CHANNEL);
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<(u64, CaptureEvent)>();
        let mut generation = 0u64;
        let mut capture: Option<(Capture, Instant)> = None;
        let mut layout = Layout::default();
        let mut last_h264_pts = None;
        // When the current capture's first frame to forward came: if the source never says it
        // has found all its streams, it is taken to have after `LAYOUT_WAIT`.
        let mut forwarding_since: Option<Instant> = None;
        let mut next_attempt = Some(tokio::time::Instant::now());
        let mut slow_attempts = 0u32;
        let outcome = loop {
            let settled = layout.complete || forwarding_since.is_some_and(|since| since.elapsed() >= LAYOUT_WAIT);
            let wanted = self.wanted_plan(monitor.signal() == &signal::Signal::Live, &layout, settled);
            if wanted != encoder.plan {
                if let Err(err) = self.rebuild_encoder(&mut encoder, options, wanted).await {
                    break Err(err);
                }
                encoder_bus = encoder.bus().stream();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                Some(message) = encoder_bus.next() => {
                    if let Some(err) = bus_error(&message) {
                        break Err(MediaError::Runtime { stream: self.name.clone(), reason: err });
                    }
                    if pipeline::closes_hls_segment(&message) {
                        count(&self.counters.hls_segments);
                        self.publish_hls().await;
                    }
                }
                Some((from, captured)) = frames.recv() => {
                    if from != generation {
                        continue;
                    }
                    let (frame, forwarded) = match captured {
                        Captured::Audio { samples, arrived_unix_ns } => {
                            encoder.push_audio(samples, arrived_unix_ns);
                            continue;
                        }
                        Captured::Raw(frame) => (frame, false),
                        Captured::H264(frame) => (frame, true),
                        Captured::Layout(_) => continue,
                    };
                    if forwarded && self.b_frames(&frame, &mut last_h264_pts, options) {
                        generation += 1;
                        stop_capture(capture.take()).await;
                        next_attempt = Some(tokio::time::Instant::now());
                        continue;
                    }
                    let was_live = monitor.signal() == &signal::Signal::Live;
                    if let Change::Restored { after } = monitor.frame(Instant::now()) {
                        tracing::info!(stream = %self.name, after_s = after.as_secs_f32(), "signal back; switching from the slate to the source");
                        encoder.request_keyframe();
                        slow_attempts = 0;
                    }
                    if !was_live {
                        self.set_status(StreamState::Playing, None);
                    }
                    count(&self.counters.frames_from_source);
                    // The first frame of a camera to forward brings its encoding part: keep it,
                    // it may be the keyframe to start from.
                    if forwarded {
                        forwarding_since.get_or_insert_with(Instant::now);
                    }
                    let wanted = self.wanted_plan(true, &layout, settled);
                    if wanted != encoder.plan {
                        if let Err(err) = self.rebuild_encoder(&mut encoder, options, wanted).await {
                            break Err(err);
                        }
                        encoder_bus = encoder.bus().stream();
                    }
                    if forwarded == matches!(encoder.plan.video, VideoPlan::Forward(_)) {
                        encoder.push_video(frame);
                    }
                }
                Some((from, event)) = events.recv() => {
                    if from != generation {
                        continue;
                    }
                    let outcome = match event {
                        CaptureEvent::Layout(found) => {
                            if let (true, Some((capture, _))) = (found.complete, &capture) {
                                tracing::info!(
                                    stream = %self.name,
                                    video = ?found.video,
                                    audio = found.audio,
                                    elements = %capture.element_factories().join(","),
                                    "source streams found"
                                );
                            }
                            layout = found;
                            continue;
                        }
                        CaptureEvent::Lost => {
                            tracing::debug!(stream = %self.name, "forwarded video lost a frame; resuming at the next keyframe");
                            encoder.resume_at_keyframe();
                            continue;
                        }
                        CaptureEvent::Ended(outcome) => outcome,
                    };
                    // Frames it queued before it ended are stale now: a new generation ignores them.
                    generation += 1;
                    stop_capture(capture.take()).await;
                    match outcome {
                        // A file that played to its end loops: start it again at once.
                        Ok(()) if matches!(self.source, Source::File { .. }) => {
                            tracing::info!(stream = %self.name, "file ended; looping");
                            next_attempt = Some(tokio::time::Instant::now());
                            continue;
                        }
                        Ok(()) => self.on_change(monitor.failed(Instant::now(), "the source ended".into())),
                        Err(reason) => self.on_change(monitor.failed(Instant::now(), reason)),
                    }
                    next_attempt = Some(self.reconnect_at(&monitor, &mut slow_attempts));
                }
                _ = sleep_until(next_attempt), if capture.is_none() => {
                    next_attempt = None;
                    generation += 1;
                    last_h264_pts = None;
                    forwarding_since = None;
                    match self.start_capture(options, generation, frames_tx.clone(), events_tx.clone()).await {
                        Ok(started) => {
                            tracing::debug!(stream = %self.name, generation, "source started");
                            capture = Some((started, Instant::now()));
                        }
                        Err(err) => {
                            self.on_change(monitor.failed(Instant::now(), err.to_string()));
                            next_attempt = Some(self.reconnect_at(&monitor, &mut slow_attempts));
                        }
                    }
                }
                _ = slate_tick.tick(), if monitor.wants_slate() && encoder.plan.video == VideoPlan::Encode => {
                    let frame = slate.frame(monitor.lost_for(Instant::now()), strip::unix_now_ms());
                    count(&self.counters.frames_from_slate);
                    encoder.push_video(i420_buffer(&slate_info, &frame));
                }
                _ = check_tick.tick() => {
                    let now = Instant::now();
                    let change = monitor.check(now);
                    let stalled = matches!(change, Change::Lost { .. });
                    self.on_change(change);
                    // A source that went quiet, or a rebuilt one that never delivered, is rebuilt.
                    let silent_restart = monitor.wants_slate()
                        && capture.as_ref().is_some_and(|(_, started)| now.duration_since(*started) > signal::FIRST_FRAME_GRACE);
                    if stalled || silent_restart {
                        generation += 1;
                        stop_capture(capture.take()).await;
                        next_attempt = Some(self.reconnect_at(&monitor, &mut slow_attempts));
                    }
                }
            }
        };
        stop_capture(capture.take()).await;
        *self.running.lock().expect("pipeline lock") = None;
        stop_off_runtime(encoder).await;
        outcome
    }

    /// Whether forwarded H.264 shows B-frames (presentation times going back), which WebRTC
    /// cannot carry. With `--transcode auto` the stream is transcoded from then on (the caller
    /// rebuilds the source); with `never` it is refused.
    fn b_frames(&self, frame: &gst::Buffer, last_pts: &mut Option<gst::ClockTime>, options: &StreamOptions) -> bool {
        let Some(pts) = frame.pts() else { return false };
        let reordered = last_pts.is_some_and(|last| pts < last);
        *last_pts = Some(pts);
        if !reordered || self.has_b_frames.swap(true, Ordering::Relaxed) {
            return false;
        }
        match options.transcode {
            TranscodeMode::Never => tracing::error!(
                stream = %self.name,
                "the camera's H.264 has B-frames, which WebRTC cannot carry, and --transcode never forbids re-encoding it"
            ),
            _ => {
                tracing::warn!(stream = %self.name, "the camera's H.264 has B-frames, which WebRTC cannot carry: transcoding it")
            }
        }
        true
    }

    /// Logs a transition once and shows it in the status.
    fn on_change(&self, change: Change) {
        if let Change::Lost { reason } = change {
            let reason = crate::redact::Secrets::global().scrub(&reason).into_owned();
            tracing::warn!(stream = %self.name, %reason, "signal lost; showing the slate and reconnecting");
            count(&self.counters.signal_losses);
            self.set_status(StreamState::NoSignal, Some(reason));
        }
    }

    /// When to try the source again, counting attempts after the fast phase.
    fn reconnect_at(&self, monitor: &SignalMonitor, slow_attempts: &mut u32) -> tokio::time::Instant {
        let lost_for = monitor.lost_for(Instant::now());
        if lost_for >= signal::RECONNECT_FAST_FOR {
            *slow_attempts += 1;
        }
        let delay = signal::reconnect_delay(lost_for, slow_attempts.saturating_sub(1), jitter());
        count(&self.counters.source_reconnects);
        tracing::debug!(stream = %self.name, ?delay, "reconnecting the source");
        tokio::time::Instant::now() + delay
    }

    /// Builds the capture part off the async runtime, wiring what it delivers and its end.
    async fn start_capture(
        &self,
        options: &StreamOptions,
        generation: u64,
        frames: tokio::sync::mpsc::Sender<(u64, Captured)>,
        events: tokio::sync::mpsc::UnboundedSender<(u64, CaptureEvent)>,
    ) -> Result<Capture, MediaError> {
        let b_frames = self.has_b_frames.load(Ordering::Relaxed);
        let transcode = match options.transcode {
            // Refused: the error says why.
            TranscodeMode::Never if b_frames => {
                return Err(MediaError::Source {
                    stream: self.name.clone(),
                    reason: "its H.264 has B-frames, which WebRTC cannot carry; --transcode never forbids re-encoding it (use --transcode auto)".into(),
                })
            }
            _ if b_frames => TranscodeMode::Always,
            chosen => chosen,
        };
        let capture_options = CaptureOptions {
            video: self.video,
            latency_strip: options.latency_strip,
            audio: options.audio == AudioMode::Auto,
            audio_device: options.audio_device.clone(),
            transcode,
            inlet: self.inlet.clone(),
        };
        let (name, source, capture_events) = (self.name.clone(), self.locate_source(), events.clone());
        let capture = tokio::task::spawn_blocking(move || {
            Capture::start(&name, &source, &capture_options, move |captured| match captured {
                Captured::Layout(layout) => {
                    let _ = capture_events.send((generation, CaptureEvent::Layout(layout)));
                }
                captured => {
                    let forwarded = matches!(captured, Captured::H264(_));
                    // The supervisor keeps up at frame rate; if it ever does not, drop, never block.
                    if frames.try_send((generation, captured)).is_err() && forwarded {
                        let _ = capture_events.send((generation, CaptureEvent::Lost));
                    }
                }
            })
        })
        .await
        .map_err(|err| MediaError::Runtime { stream: self.name.clone(), reason: err.to_string() })??;
        let mut bus = capture.bus().stream();
        tokio::spawn(async move {
            while let Some(message) = bus.next().await {
                let outcome = match message.view() {
                    gst::MessageView::Eos(_) => Ok(()),
                    _ => match bus_error(&message) {
                        Some(reason) => Err(reason),
                        None => continue,
                    },
                };
                let _ = events.send((generation, CaptureEvent::Ended(outcome)));
                return;
            }
        });
        Ok(capture)
    }
}

/// What a capture reports besides its media.
#[derive(Debug)]
enum CaptureEvent {
    Layout(Layout),
    /// A forwarded frame was dropped on its way to the encoding part.
    Lost,
    /// It ended (a file's end, `Ok`) or failed.
    Ended(Result<(), String>),
}

impl MediaStream {
    /// The source to open now: for a camera, the configured device while it exists, else the
    /// device it came back as after an unplug (found by name).
    fn locate_source(&self) -> Source {
        let Source::V4l2 { device } = &self.source else { return self.source.clone() };
        let sysfs = Path::new(camera::SYSFS_VIDEO4LINUX);
        let mut known = self.camera_name.lock().expect("camera name lock");
        let Some(found) = camera::locate(sysfs, Path::new("/dev"), device, known.as_deref()) else {
            return self.source.clone();
        };
        if known.is_none() {
            *known = camera::device_name(sysfs, &found);
        }
        if found != *device {
            tracing::info!(stream = %self.name, configured = %device.display(), found = %found.display(), "camera found again under another device");
        }
        Source::V4l2 { device: found }
    }
}

/// The error a bus message reports, if it is one.
fn bus_error(message: &gst::Message) -> Option<String> {
    match message.view() {
        gst::MessageView::Error(err) => {
            let debug = err.debug().map(|d| format!(" ({d})")).unwrap_or_default();
            Some(format!("{}{debug}", err.error()))
        }
        gst::MessageView::Warning(warning) => {
            tracing::debug!(warning = %warning.error(), "pipeline warning");
            None
        }
        _ => None,
    }
}

/// Sleeps until `at`, or for ever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stops a pipeline off the async runtime: a state change to NULL can block.
async fn stop_off_runtime<T: Send + 'static>(pipeline: T) {
    let _ = tokio::task::spawn_blocking(move || drop(pipeline)).await;
}

async fn stop_capture(capture: Option<(Capture, Instant)>) {
    if let Some((capture, _)) = capture {
        stop_off_runtime(capture).await;
    }
}

/// A number in 0..1 that differs between calls.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (random >> 11) as f64 / (1u64 << 53) as f64
}

fn unix_now_s() -> u64 {
    strip::unix_now_ms() / 1000
}

fn video_info(video: &VideoSettings) -> gstreamer_video::VideoInfo {
    gstreamer_video::VideoInfo::builder(gstreamer_video::VideoFormat::I420, video.width, video.height)
        .fps(gst::Fraction::new(video.fps as i32, 1))
        .build()
        .expect("validated sizes make valid video info")
}

/// A GStreamer I420 buffer (its own strides) from a tightly packed I420 frame.
fn i420_buffer(info: &gstreamer_video::VideoInfo, packed: &[u8]) -> gst::Buffer {
    let mut buffer = gst::Buffer::with_size(info.size()).expect("allocates");
    {
        let buffer = buffer.get_mut().expect("a new buffer is writable");
        if let Ok(mut frame) = gstreamer_video::VideoFrameRef::from_buffer_ref_writable(buffer, info) {
            let (width, height) = (info.width() as usize, info.height() as usize);
            let (luma, chroma) = packed.split_at(width * height);
            let (u, v) = chroma.split_at(width * height / 4);
            for (plane, (source, row_bytes, rows)) in
                [(luma, width, height), (u, width / 2, height / 2), (v, width / 2, height / 2)].into_iter().enumerate()
            {
                let stride = frame.plane_stride()[plane] as usize;
                let data = frame.plane_data_mut(plane as u32).expect("I420 has three planes");
                for row in 0..rows {
                    data[row * stride..row * stride + row_bytes]
                        .copy_from_slice(&source[row * row_bytes..][..row_bytes]);
                }
            }
        }
    }
    buffer
}

/// What every stream is run with.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub encoder: EncoderChoice,
    pub latency_strip: bool,
    /// No frame for this long and the slate takes over.
    pub source_timeout: Duration,
    pub audio: AudioMode,
    pub audio_device: Option<AudioDevice>,
    pub transcode: TranscodeMode,
}

/// What a stream carries, for `/api/streams` and WebRTC negotiation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Output {
    pub video: VideoOutput,
    pub audio: Option<AudioOutput>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VideoOutput {
    pub codec: &'static str,
    pub profile: String,
    /// The camera's own, when forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_level_id: Option<String>,
    pub transcoded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudioOutput {
    pub webrtc: &'static str,
    pub hls: &'static str,
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
        options: StreamOptions,
        hls_dir: Option<&Path>,
        shutdown: CancellationToken,
    ) -> Result<Media, MediaError> {
        let chosen = options.encoder;
        let encoder = tokio::task::spawn_blocking(move || {
            gst::init().map_err(|err| MediaError::Init(err.to_string()))?;
            encoder::resolve(chosen, &video)
        })
        .await
        .map_err(|err| MediaError::Init(err.to_string()))??;
        let options = StreamOptions { encoder, ..options };
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
            .map(|stream| tokio::spawn(stream.clone().supervise(options.clone(), shutdown.clone())))
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

    #[test]
    fn a_joiner_waits_at_most_a_quarter_second_for_its_keyframe() {
        let mut joining = RateLimiter::new(JOINING_KEYFRAME_INTERVAL);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(joining.request(at(0)), Grant::Now);
        assert_eq!(joining.request(at(100)), Grant::After(Duration::from_millis(150)));
        joining.deferred_done(at(250));
        assert_eq!(joining.request(at(600)), Grant::Now);
    }
}
