//! WebRTC peers and fan-out, on webrtc-rs. Knows only the RTP packets it is handed: each viewer
//! is one peer connection with an H.264 track (and an Opus track, when the stream has sound) of
//! its own, fed from shared broadcast channels.

pub mod budget;
pub mod candidates;
pub mod engine;
pub mod feedback;
pub mod forward;
pub mod h264;
pub mod ports;
pub mod receive;
pub mod registry;
pub mod reports;
pub mod sdp;
pub mod shared_port;
pub mod stats;
pub mod viewer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    SettingEngine,
};
use webrtc::runtime::Runtime;

use crate::config::{MediaPorts, WebRtcSettings};
use budget::InFlight;
use candidates::CandidatePolicy;
pub use engine::{media_engine, media_engine_for, H264_PROFILE_LEVEL_IDS, PLAYOUT_DELAY_URI};
use ports::PortPool;
use registry::{Registry, ViewerCounts};
use sdp::{agree_to_reference_times, ice_credentials, rewrite_host_candidates, Advertised};
use shared_port::{SharedPort, SharedPortError};
use stats::{Ended, StreamTotals, ViewerStats};
pub use viewer::Viewer;
use viewer::{serve_viewer, MediaLease, OwnTrack, OwnTracks, RemoteCandidates};

#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    #[error("stream {stream} already has its maximum of {max} viewers")]
    TooManyViewers { stream: String, max: usize },
    #[error("all {total} WebRTC UDP ports ({range}) are in use; widen --webrtc-ports")]
    NoFreePort { total: usize, range: String },
    #[error("cannot bind the WebRTC media ports ({addrs}): {reason}; choose others with --webrtc-port and --webrtc-tcp-port")]
    Bind { addrs: String, reason: String },
    #[error("the offer was rejected: {0}")]
    Offer(String),
    #[error("the server's answer was rejected: {0}")]
    Answer(String),
    #[error("stream {stream} sends H.264 {profile_level_id} as the camera made it, and the offer has no H.264 profile that decodes it; watch it over HLS, or have the gateway transcode it (--transcode always)")]
    NoCommonCodec { stream: String, profile_level_id: String },
    #[error("WebRTC setup failed: {0}")]
    Setup(String),
    #[error("bad ICE candidate {candidate:?}: {reason}")]
    Candidate { candidate: String, reason: String },
    #[error(transparent)]
    SharedPort(#[from] SharedPortError),
}

pub(crate) fn setup<E: std::fmt::Display>(err: E) -> WebRtcError {
    WebRtcError::Setup(err.to_string())
}

/// Where a viewer's packets come from: one encoded stream.
pub trait Feed: Send + Sync + 'static {
    /// H.264 RTP packets from now on, parsed once for every viewer.
    fn subscribe(&self) -> broadcast::Receiver<rtp::Packet>;
    /// Opus RTP packets from now on.
    fn subscribe_audio(&self) -> broadcast::Receiver<rtp::Packet>;
    /// What the stream carries now.
    fn carries(&self) -> Carried;
    /// Asks for a keyframe soon, to repair a viewer's picture; the feed rate-limits.
    fn request_keyframe(&self);
    /// Asks for a keyframe for a viewer who joins (its first picture waits for it); the feed
    /// rate-limits, less tightly than repairs.
    fn request_keyframe_for_joiner(&self);
}

/// What a stream carries, as negotiation needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Carried {
    /// The camera's own H.264 profile-level-id when it is forwarded untouched; `None` for the
    /// gateway's encoder (constrained baseline).
    pub h264_profile_level_id: Option<String>,
    pub audio: bool,
}

/// Something a peer reports to its signalling session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A local ICE candidate, as an SDP `candidate:` attribute.
    Candidate(String),
    /// The peer connection failed or closed.
    Closed,
}

/// The gateway's WebRTC side: settings, port pool and every viewer.
pub struct WebRtc {
    settings: WebRtcSettings,
    setting_engine: SettingEngine,
    media: Media,
    registry: Registry,
    /// Every viewer's task, so shutdown can wait for them.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

struct Handler {
    events: mpsc::UnboundedSender<PeerEvent>,
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
    advertised: Advertised,
    /// Where a receiving peer's remote tracks go.
    tracks: Option<mpsc::UnboundedSender<Arc<dyn TrackRemote>>>,
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

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(tracks) = &self.tracks {
            let _ = tracks.send(track);
        }
    }
}

/// Ports tried for one viewer before giving up.
const BIND_ATTEMPTS: usize = 8;
/// How long a viewer may take from answer to connected before its port and slot are released.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for viewers to close their peers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long the answer waits for candidates to be gathered (host candidates take microseconds).
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

impl WebRtc {
    pub fn new(settings: WebRtcSettings, shutdown: CancellationToken) -> Result<WebRtc, WebRtcError> {
        let setting_engine = engine::setting_engine(settings.bind);
        let media = match settings.ports {
            MediaPorts::Shared { udp, tcp } => {
                let (udp, tcp) =
                    (SocketAddr::new(settings.bind, udp), tcp.map(|tcp| SocketAddr::new(settings.bind, tcp)));
                let port = SharedPort::bind(udp, tcp, shutdown.clone()).map_err(|err| WebRtcError::Bind {
                    addrs: format!("UDP {udp}, TCP {}", tcp.map_or("off".into(), |tcp| tcp.to_string())),
                    reason: err.to_string(),
                })?;
                Media::Shared(port)
            }
            MediaPorts::PerViewer(range) => Media::PerViewer(PortPool::new(range)),
        };
        Ok(WebRtc {
            media,
            setting_engine,
            settings,
            registry: Registry::default(),
            tasks: TaskTracker::new(),
            shutdown,
        })
    }

    /// Viewers holding a place in the stream (connected or connecting).
    pub fn viewer_count(&self, stream: &str) -> usize {
        self.registry.places(stream)
    }

    /// The stream's viewers by (signalling, transport).
    pub fn viewer_counts(&self, stream: &str) -> ViewerCounts {
        self.registry.counts(stream)
    }

    /// The shared port, if media uses one.
    pub fn shared_port(&self) -> Option<&SharedPort> {
        match &self.media {
            Media::Shared(port) => Some(port),
            Media::PerViewer(_) => None,
        }
    }

    /// What every viewer the stream ever had was sent and asked for.
    pub fn stream_totals(&self, stream: &str) -> Arc<StreamTotals> {
        self.registry.totals(stream)
    }

    pub fn viewer(&self, id: &str) -> Option<Arc<Viewer>> {
        self.registry.viewer(id)
    }

    /// A peer connection whose UDP sockets bind to `addr`, from the engine and settings built
    /// once in `new`; on the shared port, through its runtime and with ICE-TCP if it has it.
    #[allow(clippy::too_many_arguments)]
    async fn build_peer(
        &self,
        engine: MediaEngine,
        interceptors: webrtc::peer_connection::Registry,
        handler: Arc<Handler>,
        addr: SocketAddr,
        shared: Option<(Arc<dyn Runtime>, bool)>,
        ice_servers: Vec<RTCIceServer>,
    ) -> Result<Arc<dyn PeerConnection>, WebRtcError> {
        let mut builder = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::default().with_ice_servers(ice_servers).build())
            .with_media_engine(engine)
            .with_interceptor_registry(interceptors)
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
        engine: MediaEngine,
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
                let interceptors = engine::interceptors(in_flight, stats);
                let peer = self.build_peer(engine, interceptors, handler, addr, shared, Vec::new()).await?;
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
            let interceptors = engine::interceptors(in_flight.clone(), stats.clone());
            match self.build_peer(engine.clone(), interceptors, handler.clone(), addr, None, Vec::new()).await {
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
    /// `signalling` names how the offer came (`websocket`, `whep`) in `/metrics`.
    pub async fn answer(
        self: &Arc<Self>,
        stream: &str,
        feed: Arc<dyn Feed>,
        offer_sdp: String,
        events: mpsc::UnboundedSender<PeerEvent>,
        signalling: &'static str,
    ) -> Result<(Arc<Viewer>, String), WebRtcError> {
        let (answered, answer) = tokio::sync::oneshot::channel();
        let (this, stream) = (self.clone(), stream.to_owned());
        tokio::spawn(async move {
            let result = this.answer_now(&stream, feed, offer_sdp, events, signalling).await;
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
        signalling: &'static str,
    ) -> Result<(Arc<Viewer>, String), WebRtcError> {
        let max = self.settings.max_viewers;
        let place = (self.registry.take_place(stream, max))
            .ok_or_else(|| WebRtcError::TooManyViewers { stream: stream.into(), max })?;
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (gathered_tx, mut gathered_rx) = watch::channel(false);
        let handler = Arc::new(Handler {
            events: events.clone(),
            state: state_tx,
            gathered: gathered_tx,
            advertised: self.advertised(),
            tracks: None,
        });

        let in_flight = Arc::new(InFlight::default());
        let stats = Arc::new(ViewerStats::start(self.stream_totals(stream)));
        let mut unfinished = Unfinished { stats: Some(stats.clone()), peer: None };
        let carried = feed.carries();
        // A forwarded camera's H.264 is answered as the offered profile that decodes it.
        let answered_profile = match &carried.h264_profile_level_id {
            Some(camera) => Some(sdp::answerable_h264_profile(&offer_sdp, camera).ok_or_else(|| {
                WebRtcError::NoCommonCodec { stream: stream.into(), profile_level_id: camera.clone() }
            })?),
            None => None,
        };
        let engine = match &answered_profile {
            Some(profile) => engine::media_engine_for(&[profile])?,
            None => media_engine()?,
        };
        let (peer, media) = self.bind_peer(engine, handler, in_flight.clone(), stats.clone()).await?;
        unfinished.peer = Some(peer.clone());
        let (offer_sdp, offer_candidates) = candidates::split_offer_candidates(&offer_sdp);
        let (tracks, answer) =
            self.negotiate(stream, &carried, answered_profile.as_deref(), &peer, offer_sdp, &mut gathered_rx).await?;
        if let MediaLease::Shared(lease) = &media {
            let credentials =
                ice_credentials(&answer).ok_or_else(|| setup("the answer has no a=ice-ufrag/a=ice-pwd"))?;
            lease.register(credentials.0, credentials.1)?;
            lease.gather_frames_of(tracks.video.ssrc);
        }
        unfinished.done();
        let session = Session { place, peer, media, stats, in_flight, tracks, state: state_rx, events, signalling };
        let viewer = self.serve(stream, feed, session, &answer, offer_candidates);
        Ok((viewer, answer))
    }

    /// Makes a negotiated session a viewer and starts forwarding the stream to it.
    fn serve(
        &self,
        stream: &str,
        feed: Arc<dyn Feed>,
        session: Session,
        local_sdp: &str,
        held_candidates: Vec<String>,
    ) -> Arc<Viewer> {
        let viewer = Arc::new(Viewer {
            id: uuid::Uuid::new_v4().to_string(),
            stream: stream.into(),
            stats: session.stats,
            signalling: session.signalling,
            peer: session.peer,
            closed: self.shutdown.child_token(),
            settled: CancellationToken::new(),
            remote: Mutex::new(RemoteCandidates {
                policy: CandidatePolicy::from_local_sdp(local_sdp),
                given: 0,
                held: Some(held_candidates),
            }),
            in_flight: session.in_flight,
            _place: session.place,
            media: session.media,
            transport: OnceLock::new(),
        });
        self.registry.insert(viewer.clone());
        let registry = self.registry.clone();
        self.tasks.spawn(serve_viewer(viewer.clone(), session.tracks, feed, session.state, session.events, registry));
        viewer
    }

    /// Offers stream `stream` to a server that takes it (a WHIP ingest): a sendonly peer on a
    /// socket of its own, whose offer carries every candidate it gathered (so the server need
    /// not take trickled ones). The server's answer, given to [`Offered::accept`], makes it a
    /// viewer like any other: same packets, keyframe requests and retransmissions.
    pub async fn offer_stream(
        self: &Arc<Self>,
        stream: &str,
        feed: Arc<dyn Feed>,
        ice_servers: Vec<RTCIceServer>,
        signalling: &'static str,
    ) -> Result<Offered, WebRtcError> {
        // A publication is not refused for a full stream: it is what serves the many.
        let place = self.registry.take_place(stream, usize::MAX).expect("no limit");
        let (events, _) = mpsc::unbounded_channel();
        let in_flight = Arc::new(InFlight::default());
        let stats = Arc::new(ViewerStats::start(self.stream_totals(stream)));
        let mut unfinished = Unfinished { stats: Some(stats.clone()), peer: None };
        let carried = feed.carries();
        let engine = match &carried.h264_profile_level_id {
            Some(camera) => engine::media_engine_for(&[camera])?,
            None => media_engine()?,
        };
        let interceptors = engine::interceptors(in_flight.clone(), stats.clone());
        let offering = self.offering_peer(engine, interceptors, ice_servers, events.clone(), None).await?;
        let peer = offering.peer.clone();
        unfinished.peer = Some(peer.clone());
        let sendonly = || RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: Vec::new(),
            send_encodings: Vec::new(),
        };
        let profile_level_id = carried.h264_profile_level_id.as_deref().unwrap_or(H264_PROFILE_LEVEL_IDS[0]);
        let video = own_track(RtpCodecKind::Video, engine::h264_codec(profile_level_id));
        peer.add_transceiver_from_track(video.track.clone() as Arc<dyn TrackLocal>, Some(sendonly()))
            .await
            .map_err(setup)?;
        let audio = if carried.audio {
            let audio = own_track(RtpCodecKind::Audio, engine::opus_codec());
            peer.add_transceiver_from_track(audio.track.clone() as Arc<dyn TrackLocal>, Some(sendonly()))
                .await
                .map_err(setup)?;
            Some(audio)
        } else {
            None
        };
        let (sdp, state) = self.offer_with_candidates(offering).await?;
        let session = Session {
            place,
            peer,
            media: MediaLease::Own,
            stats,
            in_flight,
            tracks: OwnTracks { video, audio },
            state,
            events,
            signalling,
        };
        Ok(Offered { sdp, stream: stream.into(), feed, session, webrtc: self.clone(), unfinished })
    }

    /// A peer that offers to a server (WHIP, WHEP), on a socket of its own; `tracks` gets the
    /// remote tracks of a receiving one.
    async fn offering_peer(
        &self,
        engine: MediaEngine,
        interceptors: webrtc::peer_connection::Registry,
        ice_servers: Vec<RTCIceServer>,
        events: mpsc::UnboundedSender<PeerEvent>,
        tracks: Option<mpsc::UnboundedSender<Arc<dyn TrackRemote>>>,
    ) -> Result<Offering, WebRtcError> {
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (gathered_tx, gathered) = watch::channel(false);
        let advertised = self.own_socket_advertised();
        let handler = Arc::new(Handler { events, state: state_tx, gathered: gathered_tx, advertised, tracks });
        let addr = SocketAddr::new(self.settings.bind, 0);
        let peer = self.build_peer(engine, interceptors, handler, addr, None, ice_servers).await?;
        Ok(Offering { peer, state, gathered })
    }

    /// The offer with every candidate gathered within a short wait: servers need not take
    /// trickled candidates (RFC 9725 § 4.3).
    async fn offer_with_candidates(
        &self,
        mut offering: Offering,
    ) -> Result<(String, watch::Receiver<RTCPeerConnectionState>), WebRtcError> {
        let peer = &offering.peer;
        let offer = peer.create_offer(None).await.map_err(setup)?;
        peer.set_local_description(offer).await.map_err(setup)?;
        let _ = tokio::time::timeout(GATHER_TIMEOUT, offering.gathered.wait_for(|done| *done)).await;
        let local = peer.local_description().await.ok_or_else(|| setup("no local description"))?;
        let advertised = self.own_socket_advertised();
        Ok((rewrite_host_candidates(&local.sdp, advertised), offering.state))
    }

    /// Answers the offer with the stream's tracks: H.264 (our encoder's, or a forwarded
    /// camera's as `answered_profile`), and Opus when it has sound and the offer takes audio.
    async fn negotiate(
        &self,
        stream: &str,
        carried: &Carried,
        answered_profile: Option<&str>,
        peer: &Arc<dyn PeerConnection>,
        offer_sdp: String,
        gathered: &mut watch::Receiver<bool>,
    ) -> Result<(OwnTracks, String), WebRtcError> {
        let wants_rtt = offer_sdp.lines().any(|line| line.trim_end() == feedback::RECEIVER_RTT_ATTRIBUTE);
        let takes_audio = sdp::offers_audio(&offer_sdp);
        let offer = RTCSessionDescription::offer(offer_sdp).map_err(|e| WebRtcError::Offer(e.to_string()))?;
        peer.set_remote_description(offer).await.map_err(|e| WebRtcError::Offer(e.to_string()))?;

        let profile_level_id = answered_profile.unwrap_or(H264_PROFILE_LEVEL_IDS[0]);
        let video = own_track(RtpCodecKind::Video, engine::h264_codec(profile_level_id));
        peer.add_track(video.track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| WebRtcError::Offer(e.to_string()))?;
        let audio = if carried.audio && takes_audio {
            let audio = own_track(RtpCodecKind::Audio, engine::opus_codec());
            peer.add_track(audio.track.clone() as Arc<dyn TrackLocal>)
                .await
                .map_err(|e| WebRtcError::Offer(e.to_string()))?;
            Some(audio)
        } else {
            None
        };
        let answer = peer.create_answer(None).await.map_err(|e| WebRtcError::Offer(e.to_string()))?;
        if !sdp::sends_video(&answer.sdp) {
            return Err(match &carried.h264_profile_level_id {
                Some(camera) => WebRtcError::NoCommonCodec { stream: stream.into(), profile_level_id: camera.clone() },
                None => WebRtcError::Offer(format!(
                    "it has no H.264 in profile {} (constrained baseline) with packetization-mode 1",
                    H264_PROFILE_LEVEL_IDS.join(" or ")
                )),
            });
        }
        peer.set_local_description(answer).await.map_err(setup)?;
        let gathering = std::time::Instant::now();
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.wait_for(|done| *done)).await;
        tracing::debug!(waited_ms = gathering.elapsed().as_millis() as u64, "local candidates gathered");
        let local = peer.local_description().await.ok_or_else(|| setup("no local description"))?;
        let mut answer = rewrite_host_candidates(&local.sdp, self.advertised());
        if wants_rtt {
            answer = agree_to_reference_times(&answer);
        }
        Ok((OwnTracks { video, audio }, answer))
    }

    /// What a peer on a socket of its own advertises: its candidates as they are (the public
    /// address is the shared port's, for viewers; a server sees this socket from where it is).
    fn own_socket_advertised(&self) -> Advertised {
        Advertised { ip: None, udp_port: None, tcp_port: None }
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
        let viewers = self.registry.viewers();
        for viewer in &viewers {
            viewer.close();
        }
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait()).await.is_err() {
            tracing::warn!(left = self.tasks.len(), "viewers still closing at shutdown");
        }
    }
}

/// A peer that will offer, and what its handler reports.
struct Offering {
    peer: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    gathered: watch::Receiver<bool>,
}

/// A negotiated peer and everything it holds, not yet serving.
struct Session {
    place: registry::Place,
    peer: Arc<dyn PeerConnection>,
    media: MediaLease,
    stats: Arc<ViewerStats>,
    in_flight: Arc<InFlight>,
    tracks: OwnTracks,
    state: watch::Receiver<RTCPeerConnectionState>,
    events: mpsc::UnboundedSender<PeerEvent>,
    signalling: &'static str,
}

/// A peer that offered to send a stream, waiting for the server's answer.
pub struct Offered {
    /// The offer, with every local candidate.
    pub sdp: String,
    stream: String,
    feed: Arc<dyn Feed>,
    session: Session,
    webrtc: Arc<WebRtc>,
    /// Closes the peer if no answer makes it a viewer (the server refused, or was not there).
    unfinished: Unfinished,
}

impl Offered {
    /// Takes the server's answer; the peer then connects and is served as a viewer.
    pub async fn accept(self, answer_sdp: String) -> Result<Arc<Viewer>, WebRtcError> {
        let answer = RTCSessionDescription::answer(answer_sdp).map_err(|e| WebRtcError::Answer(e.to_string()))?;
        let peer = &self.session.peer;
        peer.set_remote_description(answer).await.map_err(|e| WebRtcError::Answer(e.to_string()))?;
        if !sdp::answer_receives_video(&peer.remote_description().await.map(|d| d.sdp).unwrap_or_default()) {
            return Err(WebRtcError::Answer("it takes no video (no H.264 section that receives)".into()));
        }
        self.unfinished.done();
        Ok(self.webrtc.serve(&self.stream, self.feed, self.session, &self.sdp, Vec::new()))
    }
}

/// A session being set up. If it ends before it has a viewer, it counts as never connected, and
/// its peer is closed: an unclosed peer keeps its UDP socket bound.
struct Unfinished {
    stats: Option<Arc<ViewerStats>>,
    peer: Option<Arc<dyn PeerConnection>>,
}

impl Unfinished {
    /// A peer without a viewer's counters (a receiving one).
    fn peer(peer: Arc<dyn PeerConnection>) -> Unfinished {
        Unfinished { stats: None, peer: Some(peer) }
    }
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

/// A track of the viewer's own, with an SSRC of its own.
fn own_track(kind: RtpCodecKind, codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec) -> OwnTrack {
    let ssrc = rand_u32();
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        // One stream id for both tracks: the browser plays them in sync.
        "livegate".into(),
        format!("{}-{ssrc}", if kind == RtpCodecKind::Audio { "audio" } else { "video" }),
        "livegate".into(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec,
            ..Default::default()
        }],
    )));
    OwnTrack { track, ssrc }
}

pub(crate) fn rand_u32() -> u32 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Where media is served from: one shared socket, or a pool of ports (one per viewer).
enum Media {
    Shared(Arc<SharedPort>),
    PerViewer(PortPool),
}
