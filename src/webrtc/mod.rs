//! WebRTC peers and fan-out, on webrtc-rs. Knows only the RTP packets it is handed: each viewer
//! is one peer connection with one H.264 track of its own, fed from a shared broadcast channel.

pub mod budget;
pub mod candidates;
pub mod feedback;
pub mod forward;
pub mod h264;
pub mod ports;
pub mod shared_port;
pub mod stats;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{NackResponderBuilder, SenderReportBuilder, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp::extension::playout_delay_extension::PlayoutDelayExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::shared::marshal::{Marshal, MarshalSize};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
    RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
    SettingEngine, SettingEngineBuilder,
};
use webrtc::runtime::Runtime;

use crate::config::{MediaPorts, WebRtcSettings};
use crate::places::{Place, Places};
use budget::InFlight;
use candidates::{CandidatePolicy, MAX_REMOTE_CANDIDATES};
use forward::{Extension, Forwarder, Verdict};
use ports::{PortLease, PortPool};
use shared_port::{PeerLease, SharedPort};
use stats::{Ended, StreamTotals, ViewerStats};

#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    #[error("stream {stream} already has its maximum of {max} viewers")]
    TooManyViewers { stream: String, max: usize },
    #[error("all {total} WebRTC UDP ports ({range}) are in use; widen --webrtc-ports")]
    NoFreePort { total: usize, range: String },
    #[error("cannot bind the WebRTC media ports ({addrs}): {reason}")]
    Bind { addrs: String, reason: String },
    #[error("the offer was rejected: {0}")]
    Offer(String),
    #[error("WebRTC setup failed: {0}")]
    Setup(String),
    #[error("bad ICE candidate {candidate:?}: {reason}")]
    Candidate { candidate: String, reason: String },
}

fn setup<E: std::fmt::Display>(err: E) -> WebRtcError {
    WebRtcError::Setup(err.to_string())
}

/// Where a viewer's packets come from: one encoded stream.
pub trait Feed: Send + Sync + 'static {
    fn subscribe(&self) -> broadcast::Receiver<Bytes>;
    /// Asks for a keyframe soon; the feed rate-limits.
    fn request_keyframe(&self);
}

/// Something a peer reports to its signalling session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A local ICE candidate, as an SDP `candidate:` attribute.
    Candidate(String),
    /// The peer connection failed or closed.
    Closed,
}

/// H.264 as browsers offer it for constrained baseline, with the feedback we act on.
fn h264_codec(profile_level_id: &str) -> RTCRtpCodec {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback { typ: typ.into(), parameter: parameter.into() };
    RTCRtpCodec {
        mime_type: "video/H264".into(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile_level_id}"),
        rtcp_feedback: vec![feedback("nack", ""), feedback("nack", "pli"), feedback("ccm", "fir")],
    }
}

/// Tells the browser how long it may buffer before rendering (RFC-less, Chrome and Firefox).
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// Playout delay 0-0: render each frame as soon as it is decoded. Live video on a LAN gains
/// tens of milliseconds; the browser still smooths jitter it actually sees.
fn playout_delay_zero() -> Bytes {
    let mut data = bytes::BytesMut::zeroed(PlayoutDelayExtension { min_delay: 0, max_delay: 0 }.marshal_size());
    PlayoutDelayExtension { min_delay: 0, max_delay: 0 }.marshal_to(&mut data).expect("fits its own size");
    data.freeze()
}

/// Profile-level-ids we answer: constrained baseline 3.1, and Chrome's "42001f" variant.
pub const H264_PROFILE_LEVEL_IDS: [&str; 2] = ["42e01f", "42001f"];

/// A media engine with our H.264 registrations (the load-test viewers use it too).
pub fn media_engine() -> Result<MediaEngine, WebRtcError> {
    let mut engine = MediaEngine::default();
    engine
        .register_header_extension(
            RTCRtpHeaderExtensionCapability { uri: PLAYOUT_DELAY_URI.into() },
            RtpCodecKind::Video,
            None,
        )
        .map_err(setup)?;
    for (i, profile) in H264_PROFILE_LEVEL_IDS.iter().enumerate() {
        engine
            .register_codec(
                RTCRtpCodecParameters { rtp_codec: h264_codec(profile), payload_type: 102 + i as u8 * 4 },
                RtpCodecKind::Video,
            )
            .map_err(setup)?;
    }
    Ok(engine)
}

/// The remote candidates of one session: how many it gave, and those of its offer, held back
/// until the answer is out.
struct RemoteCandidates {
    policy: CandidatePolicy,
    given: usize,
    held: Option<Vec<String>>,
}

/// One connected (or connecting) viewer.
pub struct Viewer {
    pub id: String,
    pub stream: String,
    pub stats: Arc<ViewerStats>,
    peer: Arc<dyn PeerConnection>,
    closed: CancellationToken,
    /// Cancelled once the viewer is connected, or gone without ever connecting.
    settled: CancellationToken,
    remote: Mutex<RemoteCandidates>,
    in_flight: Arc<InFlight>,
    /// Held from the offer until the viewer is gone.
    _slot: Place<String>,
    media: MediaLease,
}

/// How a viewer's media reaches the network: a port of its own, or its routes on the shared one.
enum MediaLease {
    Port(PortLease),
    Shared(PeerLease),
}

impl MediaLease {
    /// The UDP port the viewer's media goes through.
    fn port(&self) -> u16 {
        match self {
            MediaLease::Port(lease) => lease.port,
            MediaLease::Shared(lease) => lease.udp_port(),
        }
    }
}

/// Where media is served from: one shared socket, or a pool of ports (one per viewer).
enum Media {
    Shared(Arc<SharedPort>),
    PerViewer(PortPool),
}

impl Viewer {
    /// Gives the peer a trickled candidate, if the session's budget and the address allow.
    pub async fn add_remote_candidate(&self, candidate: RTCIceCandidateInit) -> Result<(), WebRtcError> {
        if !self.admit_candidate(&candidate.candidate) {
            return Ok(());
        }
        let text = candidate.candidate.clone();
        self.peer
            .add_ice_candidate(candidate)
            .await
            .map_err(|err| WebRtcError::Candidate { candidate: text, reason: err.to_string() })
    }

    fn admit_candidate(&self, candidate: &str) -> bool {
        let mut remote = self.remote.lock().expect("candidates lock");
        remote.given += 1;
        if remote.given > MAX_REMOTE_CANDIDATES {
            tracing::debug!(viewer = %self.id, candidate, "remote candidate ignored: over {MAX_REMOTE_CANDIDATES} in this session");
            return false;
        }
        if let Some(reason) = remote.policy.refuses(candidate) {
            tracing::debug!(viewer = %self.id, candidate, %reason, "remote candidate ignored");
            return false;
        }
        true
    }

    /// The answer has been sent: the offer's own candidates may now be checked. Until then the
    /// gateway sends no STUN anywhere on the session's behalf.
    pub async fn answer_sent(&self) {
        let held = self.remote.lock().expect("candidates lock").held.take().unwrap_or_default();
        for candidate in held {
            let init = RTCIceCandidateInit { candidate, ..Default::default() };
            if let Err(err) = self.add_remote_candidate(init).await {
                tracing::debug!(viewer = %self.id, error = %err, "offer candidate refused by the peer");
            }
        }
    }

    /// Keeps `held` (a place among a client's unconnected sessions, say) until the viewer is
    /// connected or gone.
    pub fn hold_until_settled(self: &Arc<Self>, held: impl Send + 'static) {
        let settled = self.settled.clone();
        tokio::spawn(async move {
            settled.cancelled().await;
            drop(held);
        });
    }

    /// Ends the session; the viewer's task closes the peer and frees its slot and port.
    pub fn close(&self) {
        self.closed.cancel();
    }

    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }
}

/// The gateway's WebRTC side: settings, port pool and every viewer.
pub struct WebRtc {
    settings: WebRtcSettings,
    engine: MediaEngine,
    setting_engine: SettingEngine,
    media: Media,
    viewer_places: Places<String>,
    totals: Mutex<HashMap<String, Arc<StreamTotals>>>,
    viewers: Arc<Mutex<HashMap<String, Arc<Viewer>>>>,
    /// Every viewer's task, so shutdown can wait for them.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

struct Handler {
    events: mpsc::UnboundedSender<PeerEvent>,
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
    advertised: Advertised,
}

/// What host candidates say instead of the address webrtc-rs bound: the public address (1:1
/// NAT) and the shared ports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Advertised {
    pub ip: Option<IpAddr>,
    pub udp_port: Option<u16>,
    pub tcp_port: Option<u16>,
}

impl Advertised {
    /// `candidate:foundation component transport priority ADDRESS PORT typ host …` as advertised.
    fn candidate(&self, candidate: &str) -> String {
        let mut fields: Vec<&str> = candidate.split(' ').collect();
        if fields.len() < 8 || fields[6] != "typ" || fields[7] != "host" {
            return candidate.to_owned();
        }
        let passive_tcp = fields.windows(2).any(|pair| pair == ["tcptype", "passive"]);
        let port = match fields[2].to_ascii_lowercase().as_str() {
            "udp" => self.udp_port,
            "tcp" if passive_tcp => self.tcp_port,
            _ => None,
        };
        let (ip, port) = (self.ip.map(|ip| ip.to_string()), port.map(|port| port.to_string()));
        fields[4] = ip.as_deref().unwrap_or(fields[4]);
        fields[5] = port.as_deref().unwrap_or(fields[5]);
        fields.join(" ")
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.events.send(PeerEvent::Candidate(self.advertised.candidate(&init.candidate)));
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }
}

/// Ports tried for one viewer before giving up.
const BIND_ATTEMPTS: usize = 8;
/// Packets kept per viewer for retransmission (a power of two).
const NACK_HISTORY: u16 = 256;
/// A viewer gone silent this long is disconnected, and failed (and removed) after the next:
/// a vanished viewer (closed tab, killed process) is released within about 11 s, consent
/// freshness in the spirit of RFC 7675, while a few seconds of network trouble are survived.
const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(3);
const ICE_FAILED_AFTER: Duration = Duration::from_secs(6);
const ICE_KEEPALIVE: Duration = Duration::from_secs(2);
/// How long a viewer may take from answer to connected before its port and slot are released.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for viewers to close their peers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long the answer waits for candidates to be gathered (host candidates take microseconds).
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

impl WebRtc {
    pub fn new(settings: WebRtcSettings, shutdown: CancellationToken) -> Result<WebRtc, WebRtcError> {
        let setting_engine = SettingEngineBuilder::new()
            .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(ICE_FAILED_AFTER), Some(ICE_KEEPALIVE))
            .with_include_loopback_candidate(settings.bind.is_loopback())
            // A server has real addresses to offer; mDNS needs multicast routes it may not have.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            // The browser starts DTLS the moment its ICE check succeeds; as the DTLS client we
            // would wait for our own ICE agent's next check round (up to 200 ms).
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .build();
        let media = match settings.ports {
            MediaPorts::Shared { udp, tcp } => {
                let (udp, tcp) =
                    (SocketAddr::new(settings.bind, udp), tcp.map(|tcp| SocketAddr::new(settings.bind, tcp)));
                let port = SharedPort::bind(udp, tcp, shutdown.clone()).map_err(|err| WebRtcError::Bind {
                    addrs: format!("UDP {udp}, TCP {tcp:?}"),
                    reason: err.to_string(),
                })?;
                Media::Shared(port)
            }
            MediaPorts::PerViewer(range) => Media::PerViewer(PortPool::new(range)),
        };
        Ok(WebRtc {
            media,
            engine: media_engine()?,
            setting_engine,
            settings,
            viewer_places: Places::new(),
            totals: Default::default(),
            viewers: Default::default(),
            tasks: TaskTracker::new(),
            shutdown,
        })
    }

    pub fn viewer_count(&self, stream: &str) -> usize {
        self.viewer_places.count(&stream.to_owned())
    }

    /// What every viewer the stream ever had was sent and asked for.
    pub fn stream_totals(&self, stream: &str) -> Arc<StreamTotals> {
        self.totals.lock().expect("totals lock").entry(stream.into()).or_default().clone()
    }

    pub fn viewer(&self, id: &str) -> Option<Arc<Viewer>> {
        self.viewers.lock().expect("viewers lock").get(id).cloned()
    }

    fn reserve(&self, stream: &str) -> Result<Place<String>, WebRtcError> {
        let max = self.settings.max_viewers;
        self.viewer_places
            .take(&stream.to_owned(), max)
            .ok_or_else(|| WebRtcError::TooManyViewers { stream: stream.into(), max })
    }

    /// A peer connection whose UDP sockets bind to `addr`, from the engine and settings built
    /// once in `new`; on the shared port, through its runtime and with ICE-TCP if it has it.
    async fn build_peer(
        &self,
        handler: Arc<Handler>,
        in_flight: Arc<InFlight>,
        stats: Arc<ViewerStats>,
        addr: SocketAddr,
        shared: Option<(Arc<dyn Runtime>, bool)>,
    ) -> Result<Arc<dyn PeerConnection>, WebRtcError> {
        // Interceptors hold per-connection state, so each peer gets its own chain: only what a
        // sender needs (no NACK generator, TWCC or receiver reports: viewers send us no media).
        let registry = Registry::new()
            // Retransmits what a viewer reports lost: ~1.3 s of packets at 2 Mbit/s.
            .with(Slot::NackResponder, NackResponderBuilder::new().with_size(NACK_HISTORY).build())
            .with(Slot::SenderReport, SenderReportBuilder::new().build())
            // Last in the chain, after the interceptors that act on reports and NACKs.
            .with(Slot::from(14_000), feedback::Feedback::new(in_flight, stats));
        let mut builder = PeerConnectionBuilder::new()
            .with_media_engine(self.engine.clone())
            .with_interceptor_registry(registry)
            .with_setting_engine(self.setting_engine.clone())
            .with_handler(handler as Arc<dyn PeerConnectionEventHandler>)
            .with_udp_addrs(vec![addr]);
        if let Some((runtime, tcp)) = shared {
            builder = builder.with_runtime(runtime);
            if tcp {
                builder = builder.with_tcp_addrs(vec![addr]);
            }
        }
        Ok(Arc::new(builder.build().await.map_err(setup)?))
    }

    /// A peer on the shared socket, or on a free port of the range. The range may overlap the
    /// kernel's ephemeral ports, so another program can hold one: such a port fails to bind and
    /// is skipped.
    async fn bind_peer(
        &self,
        handler: Arc<Handler>,
        in_flight: Arc<InFlight>,
        stats: Arc<ViewerStats>,
    ) -> Result<(Arc<dyn PeerConnection>, MediaLease), WebRtcError> {
        let ports = match &self.media {
            Media::Shared(port) => {
                let (runtime, lease) = port.peer();
                // Port 0: the ephemeral socket webrtc-rs binds only names the peer's view of the
                // shared one (see `shared_port`).
                let addr = SocketAddr::new(self.settings.bind, 0);
                let shared = Some((runtime, port.tcp_port().is_some()));
                let peer = self.build_peer(handler, in_flight, stats, addr, shared).await?;
                return Ok((peer, MediaLease::Shared(lease)));
            }
            Media::PerViewer(ports) => ports,
        };
        // Held until we are done, so the pool does not hand the same busy port out again.
        let mut unusable = Vec::new();
        for _ in 0..BIND_ATTEMPTS {
            let port = ports
                .lease()
                .ok_or_else(|| WebRtcError::NoFreePort { total: ports.range.len(), range: ports.range.to_string() })?;
            let addr = SocketAddr::new(self.settings.bind, port.port);
            match self.build_peer(handler.clone(), in_flight.clone(), stats.clone(), addr, None).await {
                Ok(peer) => return Ok((peer, MediaLease::Port(port))),
                Err(err) => {
                    tracing::debug!(port = port.port, error = %err, "UDP port unusable; trying another");
                    unusable.push(port);
                }
            }
        }
        Err(WebRtcError::Setup(format!(
            "no usable UDP port after {BIND_ATTEMPTS} tries in {}: other programs hold ports of --webrtc-ports",
            ports.range
        )))
    }

    /// Answers a viewer's offer. The answer carries every candidate gathered within a short
    /// wait (all of them, for host candidates); later ones arrive as `PeerEvent::Candidate`.
    ///
    /// The work runs in a task of its own, so a client that hangs up mid-answer cannot cancel
    /// it halfway (a peer dropped while binding keeps its socket); its viewer is closed at once.
    pub async fn answer(
        self: &Arc<Self>,
        stream: &str,
        feed: Arc<dyn Feed>,
        offer_sdp: String,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<(Arc<Viewer>, String), WebRtcError> {
        let (answered, answer) = tokio::sync::oneshot::channel();
        let (this, stream) = (self.clone(), stream.to_owned());
        tokio::spawn(async move {
            let result = this.answer_now(&stream, feed, offer_sdp, events).await;
            if let Err(Ok((viewer, _))) = answered.send(result) {
                tracing::debug!(viewer = %viewer.id, "the client left before its answer; closing");
                viewer.close();
            }
        });
        answer.await.map_err(|_| setup("the answer task ended without an answer"))?
    }

    async fn answer_now(
        &self,
        stream: &str,
        feed: Arc<dyn Feed>,
        offer_sdp: String,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<(Arc<Viewer>, String), WebRtcError> {
        let slot = self.reserve(stream)?;
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (gathered_tx, mut gathered_rx) = watch::channel(false);
        let handler = Arc::new(Handler {
            events: events.clone(),
            state: state_tx,
            gathered: gathered_tx,
            advertised: self.advertised(),
        });

        let in_flight = Arc::new(InFlight::default());
        let stats = Arc::new(ViewerStats::start(self.stream_totals(stream)));
        let mut unfinished = Unfinished { stats: Some(stats.clone()), peer: None };
        let (peer, media) = self.bind_peer(handler, in_flight.clone(), stats.clone()).await?;
        unfinished.peer = Some(peer.clone());
        let (offer_sdp, offer_candidates) = candidates::split_offer_candidates(&offer_sdp);
        let (track, answer) = self.negotiate(&peer, offer_sdp, &mut gathered_rx).await?;
        if let MediaLease::Shared(lease) = &media {
            let ufrag = ice_ufrag(&answer).ok_or_else(|| setup("the answer has no a=ice-ufrag"))?;
            lease.register_ufrag(ufrag).map_err(WebRtcError::Setup)?;
        }
        unfinished.done();

        let viewer = Arc::new(Viewer {
            id: uuid::Uuid::new_v4().to_string(),
            stream: stream.into(),
            stats,
            peer: peer.clone(),
            closed: self.shutdown.child_token(),
            settled: CancellationToken::new(),
            remote: Mutex::new(RemoteCandidates {
                policy: CandidatePolicy::from_local_sdp(&answer),
                given: 0,
                held: Some(offer_candidates),
            }),
            in_flight,
            _slot: slot,
            media,
        });
        self.viewers.lock().expect("viewers lock").insert(viewer.id.clone(), viewer.clone());
        self.tasks.spawn(serve_viewer(viewer.clone(), track, feed, state_rx, events, self.viewers.clone()));
        Ok((viewer, answer))
    }

    async fn negotiate(
        &self,
        peer: &Arc<dyn PeerConnection>,
        offer_sdp: String,
        gathered: &mut watch::Receiver<bool>,
    ) -> Result<(OwnTrack, String), WebRtcError> {
        let wants_rtt = offer_sdp.lines().any(|line| line.trim_end() == feedback::RECEIVER_RTT_ATTRIBUTE);
        let offer = RTCSessionDescription::offer(offer_sdp).map_err(|e| WebRtcError::Offer(e.to_string()))?;
        peer.set_remote_description(offer).await.map_err(|e| WebRtcError::Offer(e.to_string()))?;

        let ssrc: u32 = rand_u32();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("livegate-{ssrc}"),
            format!("video-{ssrc}"),
            "livegate".into(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec: h264_codec(H264_PROFILE_LEVEL_IDS[0]),
                ..Default::default()
            }],
        )));
        peer.add_track(track.clone() as Arc<dyn TrackLocal>).await.map_err(|e| WebRtcError::Offer(e.to_string()))?;
        let answer = peer.create_answer(None).await.map_err(|e| WebRtcError::Offer(e.to_string()))?;
        peer.set_local_description(answer).await.map_err(setup)?;
        let gathering = std::time::Instant::now();
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.wait_for(|done| *done)).await;
        tracing::debug!(waited_ms = gathering.elapsed().as_millis() as u64, "local candidates gathered");
        let local = peer.local_description().await.ok_or_else(|| setup("no local description"))?;
        let mut answer = rewrite_host_candidates(&local.sdp, self.advertised());
        if wants_rtt {
            answer = agree_to_reference_times(&answer);
        }
        Ok((OwnTrack { track, ssrc }, answer))
    }

    fn advertised(&self) -> Advertised {
        let port = match &self.media {
            Media::Shared(port) => (Some(port.udp_port()), port.tcp_port()),
            Media::PerViewer(_) => (None, None),
        };
        Advertised { ip: self.settings.public_ip, udp_port: port.0, tcp_port: port.1 }
    }

    /// Closes every viewer and waits until their tasks have ended, or `SHUTDOWN_GRACE` passed.
    pub async fn close_all(&self) {
        let viewers: Vec<_> = self.viewers.lock().expect("viewers lock").values().cloned().collect();
        for viewer in &viewers {
            viewer.close();
        }
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait()).await.is_err() {
            tracing::warn!(left = self.tasks.len(), "viewers still closing at shutdown");
        }
    }
}

/// A session being set up. If it ends before it has a viewer, it counts as never connected, and
/// its peer is closed: an unclosed peer keeps its UDP socket bound.
struct Unfinished {
    stats: Option<Arc<ViewerStats>>,
    peer: Option<Arc<dyn PeerConnection>>,
}

impl Unfinished {
    fn done(mut self) {
        self.stats = None;
        self.peer = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(stats) = self.stats.take() {
            stats.ended(Ended::NeverConnected);
        }
        if let Some(peer) = self.peer.take() {
            tokio::spawn(async move {
                let _ = peer.close().await;
            });
        }
    }
}

fn rand_u32() -> u32 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Rewrites the host candidates of an SDP as `advertised` says.
pub fn rewrite_host_candidates(sdp: &str, advertised: Advertised) -> String {
    sdp.split_inclusive('\n')
        .map(|line| match line.trim_end().strip_prefix("a=") {
            Some(candidate) if candidate.starts_with("candidate:") => {
                format!("a={}{}", advertised.candidate(candidate), &line[line.trim_end().len()..])
            }
            _ => line.to_owned(),
        })
        .collect()
}

/// The `a=ice-ufrag` of an SDP.
fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|line| line.trim_end().strip_prefix("a=ice-ufrag:"))
}

/// Adds `a=rtcp-xr:rcvr-rtt=all` to each media section of an answer to an offer that has it:
/// the browser then sends the reference times `feedback` answers, and learns the round trip.
fn agree_to_reference_times(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .map(|line| {
            if line.starts_with("a=mid:") {
                format!("{}\r\n{line}", feedback::RECEIVER_RTT_ATTRIBUTE)
            } else {
                line.to_owned()
            }
        })
        .collect()
}

/// A viewer's track and the SSRC it was given.
struct OwnTrack {
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
}

/// A viewer's life: wait for the connection, then forward packets until it ends.
async fn serve_viewer(
    viewer: Arc<Viewer>,
    track: OwnTrack,
    feed: Arc<dyn Feed>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    events: mpsc::UnboundedSender<PeerEvent>,
    registry: Arc<Mutex<HashMap<String, Arc<Viewer>>>>,
) {
    let answered = std::time::Instant::now();
    let connected = tokio::select! {
        result = tokio::time::timeout(CONNECT_TIMEOUT, state.wait_for(|s| *s == RTCPeerConnectionState::Connected || is_over(*s))) => {
            matches!(result, Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected)
        }
        _ = viewer.closed.cancelled() => false,
    };
    if !connected {
        tracing::info!(viewer = %viewer.id, stream = %viewer.stream, "viewer never connected; released");
    }
    viewer.settled.cancel();
    let mut ended = Ended::NeverConnected;
    if connected {
        let after_answer_ms = answered.elapsed().as_millis() as u64;
        let port = viewer.media.port();
        tracing::info!(viewer = %viewer.id, stream = %viewer.stream, after_answer_ms, port, "viewer connected");
        let rtcp = tokio::spawn(forward_keyframe_requests(track.track.clone(), feed.clone()));
        ended = tokio::select! {
            _ = forward_packets(&viewer, &track, feed.as_ref()) => Ended::Failed,
            _ = state.wait_for(|s| is_over(*s)) => Ended::Failed,
            _ = viewer.closed.cancelled() => Ended::Closed,
        };
        rtcp.abort();
    }
    viewer.stats.ended(ended);
    let _ = viewer.peer.close().await;
    registry.lock().expect("viewers lock").remove(&viewer.id);
    viewer.closed.cancel();
    let _ = events.send(PeerEvent::Closed);
    tracing::info!(
        viewer = %viewer.id,
        stream = %viewer.stream,
        sent = stats::Counters::get(&viewer.stats.own.packets_sent),
        dropped = stats::Counters::get(&viewer.stats.own.packets_dropped),
        ended = ended.as_str(),
        "viewer left"
    );
}

fn is_over(state: RTCPeerConnectionState) -> bool {
    matches!(state, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)
}

async fn forward_packets(viewer: &Viewer, track: &OwnTrack, feed: &dyn Feed) {
    let (ssrc, track) = (track.ssrc, &track.track);
    let mut packets = feed.subscribe();
    feed.request_keyframe();
    let negotiated = negotiated(&viewer.peer).await;
    let extension = negotiated.playout_delay_id.map(|id| Extension { id, data: playout_delay_zero() });
    let mut forwarder = Forwarder::new(ssrc, negotiated.payload_type, (rand_u32() & 0x7fff) as u16, extension);
    let connected = std::time::Instant::now();
    let mut budget_spent = 0u64;
    loop {
        let packet = match packets.recv().await {
            Ok(packet) => packet,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                forwarder.lagged(missed);
                viewer.stats.dropped(missed);
                feed.request_keyframe();
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if viewer.in_flight.spent(budget::BUDGET) {
            if !forwarder.waiting_for_keyframe() {
                let in_flight = viewer.in_flight.now();
                let (packets, bytes) = (in_flight.packets, in_flight.bytes);
                // Once at info; a viewer that stays too slow would say it every few seconds.
                if budget_spent == 0 {
                    tracing::info!(viewer = %viewer.id, packets, bytes, "viewer over its send budget: dropping until the next keyframe");
                } else {
                    tracing::debug!(viewer = %viewer.id, packets, bytes, times = budget_spent + 1, "viewer over its send budget again");
                }
                budget_spent += 1;
                feed.request_keyframe();
            }
            forwarder.lagged(1);
            viewer.stats.dropped(1);
            continue;
        }
        match forwarder.offer(&packet) {
            Verdict::Send(rtp) => {
                // Counted before the driver can take it, so taken never runs ahead of handed.
                viewer.in_flight.handed(rtp.payload.len());
                let bytes = rtp.header.marshal_size() + rtp.payload.len();
                if track.write_rtp(rtp).await.is_err() {
                    return;
                }
                viewer.stats.sent(bytes);
                if forwarder.sent == 1 {
                    let waited_ms = connected.elapsed().as_millis() as u64;
                    tracing::debug!(viewer = %viewer.id, waited_ms, "first keyframe sent");
                }
            }
            Verdict::WaitingForKeyframe => viewer.stats.dropped(1),
            Verdict::Malformed => {
                tracing::warn!(stream = %viewer.stream, "malformed RTP packet from the pipeline")
            }
        }
    }
}

async fn forward_keyframe_requests(track: Arc<TrackLocalStaticRTP>, feed: Arc<dyn Feed>) {
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(packets) = event {
            if packets.iter().any(|p| feedback::is_keyframe_request(p.as_ref())) {
                feed.request_keyframe();
            }
        }
    }
}

/// What the viewer's answer settled that each packet must carry.
struct Negotiated {
    payload_type: u8,
    playout_delay_id: Option<u8>,
}

async fn negotiated(peer: &Arc<dyn PeerConnection>) -> Negotiated {
    let mut negotiated = Negotiated { payload_type: 102, playout_delay_id: None };
    for sender in peer.get_senders().await {
        let Ok(parameters) = sender.get_parameters().await else { continue };
        let parameters = parameters.rtp_parameters;
        if let Some(codec) = parameters.codecs.iter().find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/H264"))
        {
            negotiated.payload_type = codec.payload_type;
        }
        negotiated.playout_delay_id = parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == PLAYOUT_DELAY_URI)
            .and_then(|e| u8::try_from(e.id).ok());
    }
    negotiated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_host_candidates() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host\r\n\
                   a=candidate:2 1 udp 1694498815 198.51.100.1 50000 typ srflx raddr 10.0.0.5 rport 50000\r\n";
        let public = Advertised { ip: Some("203.0.113.7".parse().unwrap()), ..Default::default() };
        let out = rewrite_host_candidates(sdp, public);
        assert!(out.contains("a=candidate:1 1 udp 2130706431 203.0.113.7 50000 typ host\r\n"), "{out}");
        assert!(out.contains("198.51.100.1 50000 typ srflx"));
        let shared = rewrite_host_candidates(sdp, Advertised { udp_port: Some(8189), tcp_port: Some(8190), ..public });
        assert!(shared.contains("a=candidate:1 1 udp 2130706431 203.0.113.7 8189 typ host\r\n"), "{shared}");
        assert!(shared.contains("198.51.100.1 50000 typ srflx"), "only host candidates");
        let tcp = "a=candidate:3 1 tcp 1 10.0.0.5 40000 typ host tcptype passive\r\n\
                   a=candidate:4 1 tcp 1 10.0.0.5 9 typ host tcptype active\r\n";
        let tcp = rewrite_host_candidates(tcp, Advertised { udp_port: Some(8189), tcp_port: Some(8190), ..public });
        assert!(tcp.contains("tcp 1 203.0.113.7 8190 typ host tcptype passive"), "{tcp}");
        assert!(tcp.contains("tcp 1 203.0.113.7 9 typ host tcptype active"), "active ones keep port 9: {tcp}");
        assert_eq!(rewrite_host_candidates(sdp, Advertised::default()), sdp);
    }
}
