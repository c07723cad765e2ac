//! Receiving a stream from a server (a WHEP origin): a recvonly peer whose RTP is handed over
//! packet by packet, and which asks the server for keyframes.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rtc::interceptor::{NackGeneratorBuilder, ReceiverReportBuilder, Slot};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::shared::marshal::Marshal;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCIceServer, RTCPeerConnectionState, RTCSessionDescription};

use super::{engine, setup, Unfinished, WebRtc, WebRtcError};

/// H.264 profiles a relay takes: whatever its origin forwards, which it forwards in turn.
pub const RECEIVED_H264_PROFILES: [&str; 4] = ["42e01f", "42001f", "4d001f", "64001f"];
/// Packets waiting for the receiver: a relay that falls this far behind drops, and its
/// depayloader resumes at the next keyframe.
const RECEIVED_QUEUE: usize = 1024;

/// The video track and its SSRC, once media arrived: where keyframe requests go.
type VideoTrack = Arc<Mutex<Option<(Arc<dyn TrackRemote>, u32)>>>;

/// One RTP packet as it arrived, with what its payload is.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub kind: RtpCodecKind,
    /// `H264`, `OPUS`: RTP encoding names, as GStreamer's caps spell them.
    pub encoding_name: String,
    pub clock_rate: u32,
    pub payload_type: u8,
    pub packet: Bytes,
}

/// A receiving peer that offered, waiting for the server's answer.
pub struct Receiving {
    /// The offer, with every local candidate.
    pub sdp: String,
    peer: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
    /// Closes the peer if no answer is taken (the server refused, or was not there).
    unfinished: Unfinished,
}

/// A connected (or connecting) receiving peer: its packets, its state, and its controls.
pub struct Received {
    pub packets: mpsc::Receiver<Incoming>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    pub control: ReceiverControl,
}

pub struct ReceiverControl {
    peer: Arc<dyn PeerConnection>,
    /// The video track and its SSRC, once media arrived: where keyframe requests go.
    video: VideoTrack,
}

impl WebRtc {
    /// A recvonly peer offering H.264 (every profile a relay forwards) and, when `audio`, Opus.
    pub async fn offer_to_receive(
        &self,
        audio: bool,
        ice_servers: Vec<RTCIceServer>,
    ) -> Result<Receiving, WebRtcError> {
        let engine = engine::media_engine_for(&RECEIVED_H264_PROFILES)?;
        // A receiver's chain: it asks for what it lost and reports what it got.
        let interceptors = webrtc::peer_connection::Registry::new()
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build());
        let (tracks_tx, tracks) = mpsc::unbounded_channel();
        let (events, _) = mpsc::unbounded_channel();
        let offering = self.offering_peer(engine, interceptors, ice_servers, events, Some(tracks_tx)).await?;
        let peer = offering.peer.clone();
        let unfinished = Unfinished::peer(peer.clone());
        let recvonly = || RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            streams: Vec::new(),
            send_encodings: Vec::new(),
        };
        let kinds: &[RtpCodecKind] =
            if audio { &[RtpCodecKind::Video, RtpCodecKind::Audio] } else { &[RtpCodecKind::Video] };
        for kind in kinds {
            peer.add_transceiver_from_kind(*kind, Some(recvonly())).await.map_err(setup)?;
        }
        let (sdp, state) = self.offer_with_candidates(offering).await?;
        Ok(Receiving { sdp, peer, state, tracks, unfinished })
    }
}

impl Receiving {
    /// Takes the server's answer; packets of every track arrive on [`Received::packets`].
    pub async fn accept(self, answer_sdp: String) -> Result<Received, WebRtcError> {
        let answer = RTCSessionDescription::answer(answer_sdp).map_err(|e| WebRtcError::Answer(e.to_string()))?;
        self.peer.set_remote_description(answer).await.map_err(|e| WebRtcError::Answer(e.to_string()))?;
        self.unfinished.done();
        let (packets_tx, packets) = mpsc::channel(RECEIVED_QUEUE);
        let video = Arc::new(Mutex::new(None));
        tokio::spawn(read_tracks(self.tracks, packets_tx, video.clone()));
        Ok(Received { packets, state: self.state, control: ReceiverControl { peer: self.peer, video } })
    }
}

impl ReceiverControl {
    /// Asks the server for a keyframe (a PLI on the video track).
    pub async fn request_keyframe(&self) {
        let video = self.video.lock().expect("video track lock").clone();
        let Some((track, media_ssrc)) = video else { return };
        let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc };
        if let Err(err) = track.write_rtcp(vec![Box::new(pli)]).await {
            tracing::debug!(error = %err, "keyframe request not sent");
        }
    }

    pub async fn close(&self) {
        let _ = self.peer.close().await;
    }
}

/// Reads every remote track as it appears until the peer is gone.
async fn read_tracks(
    mut tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
    packets: mpsc::Sender<Incoming>,
    video: VideoTrack,
) {
    while let Some(track) = tracks.recv().await {
        tokio::spawn(read_track(track, packets.clone(), video.clone()));
    }
}

async fn read_track(track: Arc<dyn TrackRemote>, packets: mpsc::Sender<Incoming>, video: VideoTrack) {
    let kind = track.kind().await;
    let mut codec: Option<(u32, String, u32)> = None;
    while let Some(event) = track.poll().await {
        let packet = match event {
            TrackRemoteEvent::OnRtpPacket(packet) => packet,
            TrackRemoteEvent::OnEnded => return,
            _ => continue,
        };
        let ssrc = packet.header.ssrc;
        if codec.as_ref().is_none_or(|(known, _, _)| *known != ssrc) {
            let Some(found) = track.codec(ssrc).await else { continue };
            let name = found.mime_type.split_once('/').map_or(found.mime_type.as_str(), |(_, name)| name);
            codec = Some((ssrc, name.to_ascii_uppercase(), found.clock_rate));
            if kind == RtpCodecKind::Video {
                *video.lock().expect("video track lock") = Some((track.clone(), ssrc));
            }
        }
        let Some((_, encoding_name, clock_rate)) = &codec else { continue };
        let Ok(bytes) = packet.marshal() else { continue };
        let incoming = Incoming {
            kind,
            encoding_name: encoding_name.clone(),
            clock_rate: *clock_rate,
            payload_type: packet.header.payload_type,
            packet: bytes.freeze(),
        };
        // Full: the receiver is behind; this packet is lost to it, and it will say so.
        if let Err(mpsc::error::TrySendError::Closed(_)) = packets.try_send(incoming) {
            return;
        }
    }
}
