//! One viewer: its peer, its place and leases, and its life from answer to goodbye: waiting for
//! the connection, then forwarding the stream's packets (rewritten for it) and its keyframe
//! requests until it ends.

use std::sync::{Arc, Mutex, OnceLock};

use rtc::peer_connection::transport::RTCIceProtocol;
use rtc::shared::marshal::MarshalSize;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCPeerConnectionState};

use super::budget::{self, InFlight};
use super::candidates::{CandidatePolicy, MAX_REMOTE_CANDIDATES};
use super::engine::{playout_delay_zero, H264_PAYLOAD_TYPE, OPUS_PAYLOAD_TYPE, PLAYOUT_DELAY_URI};
use super::forward::{Extension, Forwarder, Verdict};
use super::ports::PortLease;
use super::registry::{Place, Registry};
use super::shared_port::PeerLease;
use super::stats::{self, Ended, ViewerStats};
use super::{feedback, rand_u32, Feed, PeerEvent, WebRtcError, CONNECT_TIMEOUT};
use crate::hops::{self, Hop};

/// The remote candidates of one session: how many it gave, and those of its offer, held back
/// until the answer is out.
pub(super) struct RemoteCandidates {
    pub(super) policy: CandidatePolicy,
    pub(super) given: usize,
    pub(super) held: Option<Vec<String>>,
}

/// What a viewer's media goes over: `connecting` until ICE has chosen.
pub const TRANSPORTS: [&str; 3] = ["udp", "tcp", "connecting"];

/// One connected (or connecting) viewer.
pub struct Viewer {
    pub id: String,
    pub stream: String,
    pub stats: Arc<ViewerStats>,
    /// How the session was signalled (`websocket`, `whep`), for `/metrics`.
    pub signalling: &'static str,
    pub(super) peer: Arc<dyn PeerConnection>,
    pub(super) closed: CancellationToken,
    /// Cancelled once the viewer is connected, or gone without ever connecting.
    pub(super) settled: CancellationToken,
    pub(super) remote: Mutex<RemoteCandidates>,
    pub(super) in_flight: Arc<InFlight>,
    /// Held from the offer until the viewer is gone.
    pub(super) _place: Place,
    pub(super) media: MediaLease,
    /// `udp` or `tcp`, once connected.
    pub(super) transport: OnceLock<&'static str>,
}

/// How a viewer's media reaches the network: a port of its own, or its routes on the shared one.
pub(super) enum MediaLease {
    Port(PortLease),
    Shared(PeerLease),
    /// A socket of its own on an ephemeral port (a peer we offered, to a server).
    Own,
}

impl MediaLease {
    /// The UDP port the viewer's media goes through.
    fn port(&self) -> u16 {
        match self {
            MediaLease::Port(lease) => lease.port,
            MediaLease::Shared(lease) => lease.udp_port(),
            MediaLease::Own => 0,
        }
    }
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

    /// What its media goes over: one of `TRANSPORTS`.
    pub fn transport(&self) -> &'static str {
        self.transport.get().copied().unwrap_or("connecting")
    }
}

/// A viewer's track and the SSRC it was given.
pub(super) struct OwnTrack {
    pub(super) track: Arc<TrackLocalStaticRTP>,
    pub(super) ssrc: u32,
}

/// A viewer's video track, and its audio track when it gets sound.
pub(super) struct OwnTracks {
    pub(super) video: OwnTrack,
    pub(super) audio: Option<OwnTrack>,
}

/// A viewer's life: wait for the connection, then forward packets until it ends.
pub(super) async fn serve_viewer(
    viewer: Arc<Viewer>,
    tracks: OwnTracks,
    feed: Arc<dyn Feed>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    events: mpsc::UnboundedSender<PeerEvent>,
    registry: Registry,
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
        let transport = selected_transport(&viewer.peer).await.unwrap_or("udp");
        let _ = viewer.transport.set(transport);
        let port = viewer.media.port();
        tracing::info!(viewer = %viewer.id, stream = %viewer.stream, after_answer_ms, port, transport, "viewer connected");
        let rtcp = tokio::spawn(forward_keyframe_requests(tracks.video.track.clone(), feed.clone()));
        let audio = tracks.audio.map(|audio| tokio::spawn(forward_audio(viewer.clone(), audio, feed.clone())));
        ended = tokio::select! {
            _ = forward_packets(&viewer, &tracks.video, feed.as_ref()) => Ended::Failed,
            _ = state.wait_for(|s| is_over(*s)) => Ended::Failed,
            _ = viewer.closed.cancelled() => Ended::Closed,
        };
        rtcp.abort();
        if let Some(audio) = audio {
            audio.abort();
        }
    }
    viewer.stats.ended(ended);
    let _ = viewer.peer.close().await;
    registry.remove(&viewer.id);
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
    feed.request_keyframe_for_joiner();
    let negotiated = negotiated(&viewer.peer, "video/H264").await;
    let payload_type = negotiated.payload_type.unwrap_or(H264_PAYLOAD_TYPE);
    let extension = negotiated.playout_delay_id.map(|id| Extension { id, data: playout_delay_zero() });
    let mut forwarder = Forwarder::video(ssrc, payload_type, (rand_u32() & 0x7fff) as u16, extension);
    let connected = std::time::Instant::now();
    let mut budget_spent = 0u64;
    let mut warned_no_room = false;
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
        let frame_end = packet.header.marker.then_some(packet.header.timestamp);
        if let Some(rtp_time) = frame_end {
            hops::stamp(rtp_time, Hop::FanOut);
        }
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
                if let Some(rtp_time) = frame_end {
                    hops::stamp(rtp_time, Hop::Written);
                }
                viewer.stats.sent(bytes);
                if forwarder.sent == 1 {
                    let waited_ms = connected.elapsed().as_millis() as u64;
                    // How long joining waited for a keyframe: the last step before the first picture.
                    tracing::info!(viewer = %viewer.id, waited_ms, "first keyframe sent");
                }
            }
            Verdict::WaitingForKeyframe => viewer.stats.dropped(1),
            Verdict::NoRoomForExtension => {
                if !warned_no_room {
                    tracing::warn!(stream = %viewer.stream, "RTP packets with no room for the playout-delay extension");
                    warned_no_room = true;
                }
            }
        }
    }
}

/// Sound, rewritten for the viewer like its video but with no keyframes to wait for; dropped
/// with the video when the viewer is over its send budget.
async fn forward_audio(viewer: Arc<Viewer>, track: OwnTrack, feed: Arc<dyn Feed>) {
    let mut packets = feed.subscribe_audio();
    let payload_type = negotiated(&viewer.peer, "audio/opus").await.payload_type.unwrap_or(OPUS_PAYLOAD_TYPE);
    let mut forwarder = Forwarder::audio(track.ssrc, payload_type, (rand_u32() & 0x7fff) as u16);
    loop {
        let packet = match packets.recv().await {
            Ok(packet) => packet,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                viewer.stats.dropped(missed);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if viewer.in_flight.spent(budget::BUDGET) {
            viewer.stats.dropped(1);
            continue;
        }
        if let Verdict::Send(rtp) = forwarder.offer(&packet) {
            viewer.in_flight.handed(rtp.payload.len());
            let bytes = rtp.header.marshal_size() + rtp.payload.len();
            if track.track.write_rtp(rtp).await.is_err() {
                return;
            }
            viewer.stats.sent(bytes);
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

/// What the peer's selected candidate pair goes over: `udp` or `tcp`.
async fn selected_transport(peer: &Arc<dyn PeerConnection>) -> Option<&'static str> {
    for sender in peer.get_senders().await {
        let Ok(Some(dtls)) = sender.transport().await else { continue };
        let Ok(Some(pair)) = dtls.ice_transport().get_selected_candidate_pair().await else { continue };
        return Some(if pair.local().protocol == RTCIceProtocol::Tcp { "tcp" } else { "udp" });
    }
    None
}

/// What the viewer's answer settled that each packet of one track must carry.
#[derive(Default)]
struct Negotiated {
    payload_type: Option<u8>,
    playout_delay_id: Option<u8>,
}

/// What was settled for the sender of codec `mime_type`.
async fn negotiated(peer: &Arc<dyn PeerConnection>, mime_type: &str) -> Negotiated {
    for sender in peer.get_senders().await {
        let Ok(parameters) = sender.get_parameters().await else { continue };
        let parameters = parameters.rtp_parameters;
        let Some(codec) = parameters.codecs.iter().find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime_type))
        else {
            continue;
        };
        let playout_delay_id = parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == PLAYOUT_DELAY_URI)
            .and_then(|e| u8::try_from(e.id).ok());
        return Negotiated { payload_type: Some(codec.payload_type), playout_delay_id };
    }
    Negotiated::default()
}
