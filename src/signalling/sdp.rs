//! Checks an offer before any WebRTC work: it must parse and ask to receive H.264 video that
//! livegate can send.

use std::io::Cursor;

use rtc::sdp::description::media::MediaDescription;
use rtc::sdp::description::session::SessionDescription;

/// What livegate sends, said in every rejection so the viewer knows what to offer.
pub const WHAT_WE_SEND: &str = "livegate sends H.264 video with packetization-mode=1 (constrained baseline, profile-level-id 42e01f, or a forwarded camera's own profile: see /api/streams) and Opus sound when the stream has some";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("the offer is not valid SDP ({0}); {WHAT_WE_SEND}")]
    Unparsable(String),
    #[error("the offer has no video section; {WHAT_WE_SEND}")]
    NoVideo,
    #[error("the offer's video section does not accept H.264 with packetization-mode=1 (it offers {offered}); {WHAT_WE_SEND}")]
    NoH264 { offered: String },
    #[error("the offer's video section is {direction}: it must be able to receive; {WHAT_WE_SEND}")]
    CannotReceive { direction: String },
}

/// Where in the offer our video goes, for the candidates we trickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoSection {
    pub mid: String,
    pub mline_index: u16,
}

pub fn check_offer(sdp: &str) -> Result<VideoSection, OfferError> {
    let description = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
        .map_err(|err| OfferError::Unparsable(err.to_string()))?;
    let (index, video) = description
        .media_descriptions
        .iter()
        .enumerate()
        .find(|(_, m)| m.media_name.media == "video")
        .ok_or(OfferError::NoVideo)?;
    for direction in ["sendonly", "inactive"] {
        if video.attribute(direction).is_some() {
            return Err(OfferError::CannotReceive { direction: direction.into() });
        }
    }
    fn attribute_values<'a>(video: &'a MediaDescription, key: &'a str) -> impl Iterator<Item = &'a str> {
        video.attributes.iter().filter(move |a| a.key == key).filter_map(|a| a.value.as_deref())
    }
    let h264_payload_types: Vec<&str> = attribute_values(video, "rtpmap")
        .filter_map(|v| v.split_once(' '))
        .filter(|(_, codec)| codec.to_ascii_uppercase().starts_with("H264/"))
        .map(|(pt, _)| pt)
        .collect();
    let packetization_mode_1 = |pt: &str| {
        attribute_values(video, "fmtp")
            .filter_map(|v| v.split_once(' '))
            .any(|(fmt, params)| fmt == pt && params.split(';').any(|p| p.trim() == "packetization-mode=1"))
    };
    if !h264_payload_types.iter().any(|pt| packetization_mode_1(pt)) {
        let offered: Vec<&str> =
            attribute_values(video, "rtpmap").filter_map(|v| v.split_once(' ')).map(|(_, c)| c).collect();
        let offered = if offered.is_empty() { "nothing".to_owned() } else { offered.join(", ") };
        return Err(OfferError::NoH264 { offered });
    }
    let mid = video.attribute("mid").flatten().unwrap_or("0").to_owned();
    Ok(VideoSection { mid, mline_index: index as u16 })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn offer(media: &str) -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n{media}"
        )
    }

    pub const H264_VIDEO: &str = "m=video 9 UDP/TLS/RTP/SAVPF 96 102\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=recvonly\r\n\
         a=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n\
         a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";

    #[test]
    fn accepts_a_browser_like_offer() {
        assert_eq!(check_offer(&offer(H264_VIDEO)), Ok(VideoSection { mid: "1".into(), mline_index: 1 }));
    }

    #[test]
    fn rejections_say_what_we_send() {
        let vp8_only = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n";
        let mode0 = "m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=0\r\n";
        let sendonly = H264_VIDEO.replace("recvonly", "sendonly");
        let cases = [
            ("hello".to_owned(), "not valid SDP"),
            (offer(""), "no video section"),
            (offer(vp8_only), "it offers VP8/90000"),
            (offer(mode0), "packetization-mode=1"),
            (offer(&sendonly), "is sendonly"),
        ];
        for (sdp, expected) in cases {
            let message = check_offer(&sdp).unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} should contain {expected:?}");
            assert!(message.contains("constrained baseline") && message.contains("Opus"), "{message}");
        }
    }
}
