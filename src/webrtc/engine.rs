//! How every peer is built: the media engine (H.264, Opus and the playout-delay extension), the
//! ICE and DTLS settings, and each viewer's interceptor chain.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{NackResponderBuilder, SenderReportBuilder, Slot};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp::extension::playout_delay_extension::PlayoutDelayExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::shared::marshal::{Marshal, MarshalSize};
use webrtc::peer_connection::{MediaEngine, Registry, SettingEngine, SettingEngineBuilder};

use super::budget::InFlight;
use super::feedback::{Feedback, Retransmissions};
use super::reports::CaptureTimeReports;
use super::stats::ViewerStats;
use super::{setup, WebRtcError};

/// The payload type of our first H.264 registration (the others follow 4 apart), and what a
/// viewer is sent when its answer names none.
pub const H264_PAYLOAD_TYPE: u8 = 102;
/// Packets kept per viewer for retransmission (a power of two).
const NACK_HISTORY: u16 = 256;
/// A viewer gone silent this long is disconnected, and failed (and removed) after the next:
/// a vanished viewer (closed tab, killed process) is released within about 11 s, consent
/// freshness in the spirit of RFC 7675, while a few seconds of network trouble are survived.
const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(3);
const ICE_FAILED_AFTER: Duration = Duration::from_secs(6);
const ICE_KEEPALIVE: Duration = Duration::from_secs(2);

/// H.264 as browsers offer it for constrained baseline, with the feedback we act on.
pub(super) fn h264_codec(profile_level_id: &str) -> RTCRtpCodec {
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
pub(super) fn playout_delay_zero() -> Bytes {
    let mut data = bytes::BytesMut::zeroed(PlayoutDelayExtension { min_delay: 0, max_delay: 0 }.marshal_size());
    PlayoutDelayExtension { min_delay: 0, max_delay: 0 }.marshal_to(&mut data).expect("fits its own size");
    data.freeze()
}

/// Profile-level-ids we answer for our own encoder's stream: constrained baseline 3.1, and
/// Chrome's "42001f" variant.
pub const H264_PROFILE_LEVEL_IDS: [&str; 2] = ["42e01f", "42001f"];
pub const OPUS_PAYLOAD_TYPE: u8 = 111;

/// Opus as browsers offer it: stereo at 48 kHz, in-band FEC.
pub(super) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

/// A media engine with our H.264 and Opus registrations (the load-test viewers use it too).
pub fn media_engine() -> Result<MediaEngine, WebRtcError> {
    media_engine_for(&H264_PROFILE_LEVEL_IDS)
}

/// A media engine answering H.264 in these profile-level-ids only (a forwarded camera's own,
/// RFC 6184 § 8.2.2: the profile must match, the level may differ), and Opus.
pub fn media_engine_for(profile_level_ids: &[&str]) -> Result<MediaEngine, WebRtcError> {
    let mut engine = MediaEngine::default();
    engine
        .register_header_extension(
            RTCRtpHeaderExtensionCapability { uri: PLAYOUT_DELAY_URI.into() },
            RtpCodecKind::Video,
            None,
        )
        .map_err(setup)?;
    for (i, profile) in profile_level_ids.iter().enumerate() {
        engine
            .register_codec(
                RTCRtpCodecParameters { rtp_codec: h264_codec(profile), payload_type: H264_PAYLOAD_TYPE + i as u8 * 4 },
                RtpCodecKind::Video,
            )
            .map_err(setup)?;
    }
    engine
        .register_codec(
            RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: OPUS_PAYLOAD_TYPE },
            RtpCodecKind::Audio,
        )
        .map_err(setup)?;
    Ok(engine)
}

/// ICE and DTLS settings for peers whose media binds to `bind`.
pub(super) fn setting_engine(bind: IpAddr) -> SettingEngine {
    SettingEngineBuilder::new()
        .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(ICE_FAILED_AFTER), Some(ICE_KEEPALIVE))
        .with_include_loopback_candidate(bind.is_loopback())
        // A server has real addresses to offer; mDNS needs multicast routes it may not have.
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        // The browser starts DTLS the moment its ICE check succeeds; as the DTLS client we
        // would wait for our own ICE agent's next check round (up to 200 ms).
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .build()
}

/// One viewer's interceptors. They hold per-connection state, so each peer gets its own chain:
/// only what a sender needs (no NACK generator, TWCC or receiver reports: viewers send us no
/// media).
pub(super) fn interceptors(in_flight: Arc<InFlight>, stats: Arc<ViewerStats>) -> Registry {
    Registry::new()
        // Next to the wire, to see the NACK responder's retransmissions leave.
        .with(Slot::from(1_000), Retransmissions::new(stats.clone()))
        // Between the wire and the reports it dates.
        .with(Slot::from(1_001), CaptureTimeReports::default())
        // Retransmits what a viewer reports lost: ~1.3 s of packets at 2 Mbit/s.
        .with(Slot::NackResponder, NackResponderBuilder::new().with_size(NACK_HISTORY).build())
        .with(Slot::SenderReport, SenderReportBuilder::new().build())
        // Last in the chain, after the interceptors that act on reports and NACKs.
        .with(Slot::from(14_000), Feedback::new(in_flight, stats))
}
