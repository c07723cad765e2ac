//! livegate: capture live video once, encode it once, serve it to browsers over WebRTC and HLS
//! from one HTTPS binary.
//!
//! # Layout
//!
//! - [`config`]: the one `Config`, from flags > `LIVEGATE_*` environment > TOML file > defaults.
//! - [`redact`]: secrets never leave the process: URL passwords masked wherever text is shown,
//!   known secrets scrubbed from every log line.
//! - [`auth`]: who may watch: viewer and admin roles from tokens, token files and JWTs.
//! - [`media`]: GStreamer only. Per stream, a pipeline from the source through one H.264
//!   encoder to a tee: one branch writes HLS, the other packetises RTP into an appsink whose
//!   packets go out on a broadcast channel. Restarts a failed pipeline; draws the latency strip.
//! - [`webrtc`]: webrtc-rs peers and fan-out. Each viewer gets its own track, SSRC and payload
//!   type; a viewer that lags drops packets, is counted and resumes at the next keyframe.
//! - [`signalling`]: the WebSocket protocol and WHEP, as serde types and pure session logic
//!   with thin transports; it drives `webrtc` and limits what each client address may do.
//! - [`relay`]: livegate as a client of other servers: publishing over WHIP, sources over WHEP.
//! - [`places`]: places counted per key (viewers per stream, pending sessions per address).
//! - [`hops`]: opt-in timing of each video frame from capture to the socket, for benchmarks.
//! - [`http`]: the axum router over rustls: who is asking (address, credential), player page,
//!   `/api`, signalling, HLS files, security headers.
//!
//! [`run`] wires them and shuts them down in order.

pub mod auth;
pub mod config;
pub mod hops;
pub mod http;
pub mod media;
pub mod places;
pub mod redact;
pub mod relay;
pub mod signalling;
pub mod webrtc;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use config::Config;
use media::{Media, MediaStream};

impl webrtc::Feed for MediaStream {
    fn subscribe(&self) -> broadcast::Receiver<rtc::rtp::Packet> {
        MediaStream::subscribe(self)
    }
    fn subscribe_audio(&self) -> broadcast::Receiver<rtc::rtp::Packet> {
        MediaStream::subscribe_audio(self)
    }
    fn carries(&self) -> webrtc::Carried {
        let output = self.output();
        webrtc::Carried { h264_profile_level_id: output.video.profile_level_id, audio: output.audio.is_some() }
    }
    fn request_keyframe(&self) {
        MediaStream::request_keyframe(self)
    }
    fn request_keyframe_for_joiner(&self) {
        MediaStream::request_keyframe_for_joiner(self)
    }
}

impl signalling::Feeds for Media {
    fn feed(&self, stream: &str) -> Option<Arc<dyn webrtc::Feed>> {
        self.stream(stream).map(|s| s.clone() as Arc<dyn webrtc::Feed>)
    }
}

/// How often the per-address rate state of quiet clients is dropped.
const FORGET_IDLE_CLIENTS: std::time::Duration = std::time::Duration::from_secs(60);

async fn forget_idle_clients(signalling: Arc<signalling::Signalling>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FORGET_IDLE_CLIENTS) => signalling.limits.forget_idle(),
            _ = stop.cancelled() => return,
        }
    }
}

/// Runs the gateway until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(config);
    let stop = CancellationToken::new();

    // TLS and credentials first: a broken certificate or token file must stop us before
    // anything starts.
    let certificate = Arc::new(http::tls::CertificateStatus::default());
    let tls = http::tls::load(&config.tls, &config.state_dir, certificate.clone(), stop.clone())
        .await
        .context("TLS setup failed")?;
    let auth = Arc::new(auth::Auth::start(&config.access, stop.clone()).await.context("access control setup failed")?);
    let listener =
        std::net::TcpListener::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;

    let media = Arc::new(
        Media::start(
            &config.streams,
            config.video,
            media::StreamOptions {
                encoder: config.encoder,
                latency_strip: config.latency_strip,
                source_timeout: config.source_timeout,
                audio: config.audio,
                audio_device: config.audio_device.clone(),
                transcode: config.transcode,
            },
            config.hls_dir.as_deref(),
            stop.clone(),
        )
        .await
        .context("media setup failed")?,
    );
    let webrtc = Arc::new(webrtc::WebRtc::new(config.webrtc.clone(), stop.clone()).context("WebRTC setup failed")?);
    let publications = Arc::new(
        relay::publish::start(&config.publish, webrtc.clone(), |stream| {
            signalling::Feeds::feed(media.as_ref(), stream)
        })
        .context("WHIP publishing setup failed")?,
    );
    let relayed =
        relay::source::start(&media, webrtc.clone(), config.audio, stop.clone()).context("WHEP source setup failed")?;
    let signalling = Arc::new(signalling::Signalling {
        webrtc: webrtc.clone(),
        feeds: media.clone(),
        ice_servers: config.webrtc.ice_servers.clone(),
        auth: auth.clone(),
        limits: signalling::limits::Limits::new(&config.limits),
        allowed_origins: config.cors_origins.clone(),
    });
    tokio::spawn(forget_idle_clients(signalling.clone(), stop.clone()));
    let state = Arc::new(http::AppState {
        config: config.clone(),
        media: media.clone(),
        webrtc: webrtc.clone(),
        publications: publications.clone(),
        auth: auth.clone(),
        metrics: http::metrics::Metrics::new(
            media.clone(),
            webrtc.clone(),
            publications.clone(),
            tls.is_some().then_some(certificate),
        ),
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(local_addr = %local, url = %format!("{scheme}://{local}/"), "listening");
    if auth.is_enabled() {
        tracing::info!("access control on: viewers and admins need a token");
    } else if !local.ip().is_loopback() {
        tracing::warn!(
            local_addr = %local,
            "no access control: anyone who can reach this address may watch every stream; \
             set --viewer-token (or --viewer-token-file, --jwt-secret-file, --jwks-url)"
        );
    }

    let server = tokio::spawn(http::serve(http::router(state, signalling), listener, tls, stop.clone()));
    shutdown.await;
    tracing::info!("shutting down");
    publications.stop().await;
    webrtc.close_all().await;
    stop.cancel();
    server.await.context("HTTP server task failed")?.context("HTTP server failed")?;
    relayed.wait().await;
    media.stopped().await;
    drop(media);
    tracing::info!("stopped");
    Ok(())
}
