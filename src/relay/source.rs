//! Streams whose source is a WHEP server (another livegate, say): livegate is one viewer of the
//! origin and hands what it receives to the stream's inlet, where the media side forwards the
//! H.264 as it is and decodes the sound like any camera's. The viewers' keyframe requests, one
//! per rate-limit window, go upstream as PLIs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::peer_connection::{RTCIceServer, RTCPeerConnectionState};

use super::{wait_unless_stopped, Backoff, Ended, Next, RelayError, Server};
use crate::config::{AudioMode, Source};
use crate::media::inlet::{RtpFormat, RtpInlet, RtpMedia};
use crate::media::Media;
use crate::webrtc::WebRtc;

const WHEP_ORIGIN: &str = "WHEP origin";
/// The first packet may wait for ICE and DTLS; after it, a silence this long means the origin
/// is gone (a killed process sends no goodbye).
const FIRST_PACKET_WITHIN: Duration = Duration::from_secs(10);
const SILENT_FOR: Duration = Duration::from_secs(2);

/// Starts a WHEP client for every stream whose source is `whep:`; they run until `stop`.
pub fn start(
    media: &Media,
    webrtc: Arc<WebRtc>,
    audio: AudioMode,
    stop: CancellationToken,
) -> Result<TaskTracker, RelayError> {
    let tasks = TaskTracker::new();
    for stream in media.streams.iter() {
        let Source::Whep(upstream) = &stream.source else { continue };
        let server = Server::new(WHEP_ORIGIN, upstream)?;
        tracing::info!(stream = %stream.name, url = %server.shown(), "taking the stream from a WHEP origin");
        let client = Client {
            stream: stream.name.clone(),
            server,
            inlet: stream.inlet.clone(),
            audio: audio == AudioMode::Auto,
        };
        tasks.spawn(client.run(webrtc.clone(), stop.clone()));
    }
    tasks.close();
    Ok(tasks)
}

struct Client {
    stream: String,
    server: Server,
    inlet: Arc<RtpInlet>,
    audio: bool,
}

async fn failed(state: &mut tokio::sync::watch::Receiver<RTCPeerConnectionState>) {
    let _ = state.wait_for(|s| matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)).await;
}

impl Client {
    async fn run(self, webrtc: Arc<WebRtc>, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        let ice_servers = self.server.ice_servers().await;
        loop {
            let outcome = self.receive_once(&webrtc, ice_servers.clone(), &stop).await;
            match backoff.after(outcome) {
                Next::Stop => return,
                Next::Now => {}
                Next::Retry { reason, delay } => {
                    tracing::warn!(stream = %self.stream, url = %self.server.shown(), %reason, retry_in = ?delay, "WHEP origin lost; reconnecting");
                    if !wait_unless_stopped(delay, &stop).await {
                        return;
                    }
                }
            }
        }
    }

    async fn receive_once(
        &self,
        webrtc: &WebRtc,
        ice_servers: Vec<RTCIceServer>,
        stop: &CancellationToken,
    ) -> Result<Ended, RelayError> {
        let receiving = webrtc.offer_to_receive(self.audio, ice_servers).await?;
        let resource = tokio::select! {
            resource = self.server.post_offer(&receiving.sdp) => resource?,
            _ = stop.cancelled() => return Ok(Ended::Stopped),
        };
        let received = match receiving.accept(resource.answer.clone()).await {
            Ok(received) => received,
            Err(err) => {
                self.server.delete(&resource).await;
                return Err(err.into());
            }
        };
        let (mut packets, mut state, control) = (received.packets, received.state, received.control);
        let started = Instant::now();
        let mut silence_limit = FIRST_PACKET_WITHIN;
        let reason = loop {
            tokio::select! {
                packet = tokio::time::timeout(silence_limit, packets.recv()) => match packet {
                    Ok(Some(incoming)) => {
                        silence_limit = SILENT_FOR;
                        let media = if incoming.kind == RtpCodecKind::Audio { RtpMedia::Audio } else { RtpMedia::Video };
                        let format = RtpFormat {
                            encoding_name: incoming.encoding_name,
                            clock_rate: incoming.clock_rate,
                            payload_type: incoming.payload_type,
                        };
                        self.inlet.push(media, &format, &incoming.packet);
                    }
                    Ok(None) => break "the connection to the origin closed".to_owned(),
                    Err(_) => break format!("no media from the origin for {} s", silence_limit.as_secs()),
                },
                _ = self.inlet.keyframe_wanted() => control.request_keyframe().await,
                _ = failed(&mut state) => {
                    break "the connection to the origin failed".to_owned();
                }
                _ = stop.cancelled() => {
                    self.server.delete(&resource).await;
                    control.close().await;
                    return Ok(Ended::Stopped);
                }
            }
        };
        self.server.delete(&resource).await;
        control.close().await;
        Ok(Ended::Lost { lasted: started.elapsed(), reason })
    }
}
