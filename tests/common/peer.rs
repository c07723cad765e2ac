//! An independent WebRTC viewer: GStreamer's webrtcbin, receiving H.264 (and Opus when it asks
//! for sound), decoding them and reading the latency strip of every frame.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_sdp as gst_sdp;
use gstreamer_video as gst_video;
use gstreamer_webrtc as gst_webrtc;
use livegate::media::strip;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// What a viewer saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub frames: u64,
    pub frames_with_strip: u64,
    pub width: i32,
    pub height: i32,
    pub latencies_ms: Vec<u64>,
    /// Decoded sound, in samples per channel.
    pub audio_samples: u64,
    /// Samples louder than the test tone: its clicks.
    pub loud_samples: u64,
}

/// What a viewer offers to receive.
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    pub h264_profile_level_id: &'static str,
    pub audio: bool,
}

impl Default for Offer {
    fn default() -> Self {
        Offer { h264_profile_level_id: "42e01f", audio: false }
    }
}

pub struct Viewer {
    pipeline: gst::Pipeline,
    webrtcbin: gst::Element,
    pub seen: Arc<Mutex<Seen>>,
}

impl Viewer {
    pub fn new() -> Viewer {
        Viewer::offering(Offer::default())
    }

    pub fn offering(offer: Offer) -> Viewer {
        gst::init().unwrap();
        let pipeline = gst::Pipeline::new();
        let webrtcbin =
            gst::ElementFactory::make("webrtcbin").property_from_str("bundle-policy", "max-bundle").build().unwrap();
        pipeline.add(&webrtcbin).unwrap();
        let mut wanted = vec![format!(
            "application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload=102,\
             packetization-mode=(string)1,profile-level-id=(string){}",
            offer.h264_profile_level_id
        )];
        if offer.audio {
            wanted.push("application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,encoding-params=(string)2,payload=111".into());
        }
        for caps in wanted {
            webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
                "add-transceiver",
                &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps.parse::<gst::Caps>().unwrap()],
            );
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let pipeline_weak = pipeline.downgrade();
        let sink_seen = seen.clone();
        webrtcbin.connect_pad_added(move |_, pad| {
            if pad.direction() != gst::PadDirection::Src {
                return;
            }
            let pipeline = pipeline_weak.upgrade().unwrap();
            let audio = pad.current_caps().and_then(|caps| caps.structure(0)?.get::<String>("media").ok())
                == Some("audio".into());
            let (description, record): (&str, fn(&gst::Sample, &Mutex<Seen>)) = if audio {
                (
                    "rtpopusdepay ! opusdec ! audioconvert ! audio/x-raw,format=S16LE,channels=1 ! appsink name=out sync=false",
                    record_sound,
                )
            } else {
                (
                    "rtph264depay ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=I420 ! appsink name=out sync=false",
                    record_frame,
                )
            };
            let decode = gst::parse::bin_from_description(description, true).unwrap();
            pipeline.add(&decode).unwrap();
            let appsink = decode.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
            let seen = sink_seen.clone();
            appsink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        record(&sample, &seen);
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
            decode.sync_state_with_parent().unwrap();
            pad.link(&decode.static_pad("sink").unwrap()).unwrap();
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        Viewer { pipeline, webrtcbin, seen }
    }

    /// Creates the offer and waits for every local candidate to be in it.
    pub fn offer(&self) -> String {
        let promise = gst::Promise::new();
        self.webrtcbin.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
        promise.wait();
        let reply = promise.get_reply().expect("create-offer replied");
        let offer = reply.value("offer").unwrap().get::<gst_webrtc::WebRTCSessionDescription>().unwrap();
        self.webrtcbin.emit_by_name::<()>("set-local-description", &[&offer, &None::<gst::Promise>]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.webrtcbin.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state")
            != gst_webrtc::WebRTCICEGatheringState::Complete
        {
            assert!(Instant::now() < deadline, "webrtcbin never finished gathering");
            std::thread::sleep(Duration::from_millis(20));
        }
        let local = self.webrtcbin.property::<gst_webrtc::WebRTCSessionDescription>("local-description");
        local.sdp().as_text().unwrap()
    }

    pub fn accept_answer(&self, sdp: &str) {
        let message = gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()).expect("the answer parses as SDP");
        let answer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, message);
        self.webrtcbin.emit_by_name::<()>("set-remote-description", &[&answer, &None::<gst::Promise>]);
    }

    pub fn add_candidate(&self, mline_index: u32, candidate: &str) {
        self.webrtcbin.emit_by_name::<()>("add-ice-candidate", &[&mline_index, &candidate]);
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `samples` samples of sound arrived, or panics.
    pub async fn wait_for_sound(&self, samples: u64, within: Duration) -> Seen {
        self.wait_for_seen(within, &format!("{samples} samples of sound"), |seen| seen.audio_samples >= samples).await
    }

    /// Waits until what the viewer saw passes `enough`, or panics with it.
    async fn wait_for_seen(&self, within: Duration, awaited: &str, enough: impl Fn(&Seen) -> bool) -> Seen {
        super::wait_until(within, awaited, || async {
            let seen = self.seen();
            if enough(&seen) {
                Ok(seen)
            } else {
                Err(format!("{seen:?}"))
            }
        })
        .await
    }

    /// Waits until `frames` frames with a readable strip arrived, or panics.
    pub async fn wait_for_frames(&self, frames: u64, within: Duration) -> Seen {
        self.wait_for_seen(within, &format!("{frames} frames with strips"), |seen| seen.frames_with_strip >= frames)
            .await
    }

    /// Signals over WHEP; returns the session's Location.
    pub async fn connect_whep(&self, gateway_url: &str, stream: &str) -> String {
        self.connect_whep_with(gateway_url, stream, None).await
    }

    /// Signals over WHEP with a bearer token; returns the session's Location.
    pub async fn connect_whep_with(&self, gateway_url: &str, stream: &str, token: Option<&str>) -> String {
        let (location, answer) = self.post_whep_offer(gateway_url, stream, token).await;
        self.accept_answer(&answer);
        location
    }

    /// Posts this viewer's offer over WHEP; returns the session's Location and the answer, not
    /// yet accepted.
    pub async fn post_whep_offer(&self, gateway_url: &str, stream: &str, token: Option<&str>) -> (String, String) {
        let mut request = super::client()
            .post(format!("{gateway_url}/whep/{stream}"))
            .header("content-type", "application/sdp")
            .body(self.offer());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 201, "WHEP POST: {:?}", response.text().await);
        assert_eq!(response.headers()["content-type"], "application/sdp");
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        (location, response.text().await.unwrap())
    }

    /// Signals over the WebSocket, all local candidates in the offer; keeps the socket open
    /// (and adds the gateway's trickled candidates) until the returned task is dropped.
    pub async fn connect_ws(self: &Arc<Self>, ws_url: &str) -> tokio::task::JoinHandle<()> {
        self.connect_ws_with(ws_url, None).await
    }

    /// As `connect_ws`, first sending `{"type":"auth","token":…}` when given a token.
    pub async fn connect_ws_with(self: &Arc<Self>, ws_url: &str, token: Option<&str>) -> tokio::task::JoinHandle<()> {
        let mut socket = ws_connect(ws_url).await;
        if let Some(token) = token {
            socket.send(Message::Text(json!({"type": "auth", "token": token}).to_string().into())).await.unwrap();
        }
        socket.send(Message::Text(json!({"type": "offer", "sdp": self.offer()}).to_string().into())).await.unwrap();
        let answer = next_json(&mut socket).await.expect("an answer");
        assert_eq!(answer["type"], "answer", "{answer}");
        self.accept_answer(answer["sdp"].as_str().unwrap());
        let viewer = self.clone();
        tokio::spawn(async move {
            while let Some(message) = next_json(&mut socket).await {
                if message["type"] == "candidate" {
                    let index = message["sdpMLineIndex"].as_u64().unwrap() as u32;
                    viewer.add_candidate(index, message["candidate"].as_str().unwrap());
                }
            }
        })
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn record_frame(sample: &gst::Sample, seen: &Mutex<Seen>) {
    let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else { return };
    let Ok(info) = gst_video::VideoInfo::from_caps(caps) else { return };
    let Ok(frame) = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info) else { return };
    let value = strip::decode_luma(frame.plane_data(0).unwrap(), info.stride()[0] as usize, info.width());
    let mut seen = seen.lock().unwrap();
    seen.frames += 1;
    seen.width = info.width() as i32;
    seen.height = info.height() as i32;
    if let Some(latency) = value.and_then(|v| strip::latency_ms(v, strip::unix_now_ms())) {
        seen.frames_with_strip += 1;
        seen.latencies_ms.push(latency);
    }
}

fn record_sound(sample: &gst::Sample, seen: &Mutex<Seen>) {
    let Some(buffer) = sample.buffer() else { return };
    let Ok(map) = buffer.map_readable() else { return };
    let samples: Vec<i16> = map.chunks_exact(2).map(|s| i16::from_le_bytes([s[0], s[1]])).collect();
    let mut seen = seen.lock().unwrap();
    seen.audio_samples += samples.len() as u64;
    seen.loud_samples += samples.iter().filter(|s| s.unsigned_abs() > 15_000).count() as u64;
}

pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to the gateway's WebSocket, trusting its self-signed certificate.
pub async fn ws_connect(url: &str) -> WsStream {
    super::install_crypto();
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::default()))
        .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(config));
    let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
        .await
        .unwrap_or_else(|err| panic!("WebSocket {url}: {err}"));
    socket
}

/// The next JSON text message, or `None` when the socket closes.
pub async fn next_json(socket: &mut WsStream) -> Option<Value> {
    match next_message(socket).await {
        Some(Ok(value)) => Some(value),
        _ => None,
    }
}

/// The next JSON text message, or the close code (0 without one) when the socket closes.
pub async fn next_message(socket: &mut WsStream) -> Option<Result<Value, u16>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await.ok()? {
            Some(Ok(Message::Text(text))) => {
                return Some(Ok(serde_json::from_str(&text).expect("the gateway sends JSON")))
            }
            Some(Ok(Message::Close(frame))) => return Some(Err(frame.map_or(0, |f| u16::from(f.code)))),
            Some(Err(_)) | None => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Accepts any certificate (the gateway's is self-signed); can remember the SHA-256 fingerprint
/// of the last one it saw.
#[derive(Debug, Default)]
pub struct AcceptAnyCertificate {
    pub seen: Option<Arc<Mutex<String>>>,
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let Some(seen) = &self.seen {
            *seen.lock().unwrap() = livegate::http::tls::fingerprint_der(end_entity.as_ref());
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}
