//! What the gateway's SDP says beyond what webrtc-rs writes: host candidates as the network sees
//! them (`--public-ip`, the shared ports), and agreement to receiver reference times.

use std::net::IpAddr;

use super::feedback;

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
    pub(super) fn candidate(&self, candidate: &str) -> String {
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

/// Whether an offer has an audio section that is not rejected.
pub fn offers_audio(sdp: &str) -> bool {
    media_sections(sdp).any(|(kind, port, lines)| kind == "audio" && !rejected(port, &lines))
}

/// Whether our answer sends video: a video section neither rejected, inactive nor recvonly.
pub fn sends_video(sdp: &str) -> bool {
    has_live_video(sdp, "a=recvonly")
}

/// Whether a server's answer to our sendonly offer takes the video.
pub fn answer_receives_video(sdp: &str) -> bool {
    has_live_video(sdp, "a=sendonly")
}

/// Whether `sdp` has a video section with a codec that is neither rejected, inactive nor
/// flowing only the other way (`wrong_way`).
fn has_live_video(sdp: &str, wrong_way: &str) -> bool {
    media_sections(sdp).any(|(kind, port, lines)| {
        kind == "video"
            && !rejected(port, &lines)
            && lines.iter().any(|line| line.starts_with("a=rtpmap:"))
            && !lines.iter().any(|line| *line == "a=inactive" || *line == wrong_way)
    })
}

/// The H.264 profiles (profile_idc and constraint flags, as in `profile-level-id`) whose
/// decoders also decode a camera's profile (H.264 Annex A): its own first, then the wider ones.
fn decoders_of(camera_profile: &str) -> &'static [&'static str] {
    match camera_profile {
        "42e0" => &["42e0", "4200", "4d00", "640c", "6400", "f400"],
        "4200" => &["4200"],
        "4d00" => &["4d00", "6400", "f400"],
        "640c" => &["640c", "6400", "f400"],
        "6400" => &["6400", "f400"],
        _ => &[],
    }
}

/// The `profile-level-id` of the offer's H.264 that best takes a camera's `profile_level_id`
/// (the same profile, else the narrowest wider one; the level may differ, RFC 6184 § 8.2.2),
/// with packetization-mode 1. Chromium without High offers High 4:4:4 Predictive, whose
/// decoders decode High.
pub fn answerable_h264_profile(sdp: &str, profile_level_id: &str) -> Option<String> {
    let camera = profile_level_id.get(..4)?.to_ascii_lowercase();
    let offered: Vec<String> = media_sections(sdp)
        .filter(|(kind, port, lines)| *kind == "video" && !rejected(port, lines))
        .flat_map(|(_, _, lines)| {
            let h264: Vec<&str> = lines
                .iter()
                .filter_map(|line| line.strip_prefix("a=rtpmap:")?.split_once(' '))
                .filter(|(_, codec)| codec.to_ascii_uppercase().starts_with("H264/"))
                .map(|(pt, _)| pt)
                .collect();
            lines
                .iter()
                .filter_map(|line| line.strip_prefix("a=fmtp:")?.split_once(' '))
                .filter(|(pt, parameters)| {
                    h264.contains(pt) && parameters.split(';').any(|p| p.trim() == "packetization-mode=1")
                })
                .flat_map(|(_, parameters)| {
                    parameters.split(';').filter_map(|p| p.trim().strip_prefix("profile-level-id="))
                })
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
        })
        .collect();
    decoders_of(&camera).iter().find_map(|profile| offered.iter().find(|id| id.starts_with(profile))).cloned()
}

/// Port 0 rejects a section, unless it only means "bundled" (RFC 8843 § 6, `a=bundle-only`).
fn rejected(port: &str, lines: &[&str]) -> bool {
    port == "0" && !lines.contains(&"a=bundle-only")
}

/// Each `m=` section: its media, its port and its lines.
fn media_sections(sdp: &str) -> impl Iterator<Item = (&str, &str, Vec<&str>)> {
    let mut sections: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(media) = line.strip_prefix("m=") {
            let mut fields = media.split(' ');
            sections.push((fields.next().unwrap_or(""), fields.next().unwrap_or(""), Vec::new()));
        } else if let Some((_, _, lines)) = sections.last_mut() {
            lines.push(line);
        }
    }
    sections.into_iter()
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

/// The `a=ice-ufrag` and `a=ice-pwd` of an SDP.
pub(super) fn ice_credentials(sdp: &str) -> Option<(&str, &str)> {
    let attribute = |name: &str| sdp.lines().find_map(|line| line.trim_end().strip_prefix(name));
    Some((attribute("a=ice-ufrag:")?, attribute("a=ice-pwd:")?))
}

/// Adds `a=rtcp-xr:rcvr-rtt=all` to each media section of an answer to an offer that has it:
/// the browser then sends the reference times `feedback` answers, and learns the round trip.
pub(super) fn agree_to_reference_times(sdp: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_sections_are_read_for_what_they_offer_and_answer() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";
        assert!(offers_audio(offer));
        assert!(!offers_audio("v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 0\r\nm=video 9 UDP 102\r\n"), "rejected");
        assert!(offers_audio("v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=bundle-only\r\n"), "bundled");
        assert!(sends_video(&format!("{offer}a=sendonly\r\n")));
        assert!(!sends_video("v=0\r\nm=video 0 UDP/TLS/RTP/SAVPF 0\r\n"), "rejected");
        let chrome = "m=video 9 UDP/TLS/RTP/SAVPF 102 112\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\na=rtpmap:112 H264/90000\r\na=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f\r\n";
        assert_eq!(answerable_h264_profile(chrome, "640028").as_deref(), Some("64001f"), "high at another level");
        assert_eq!(answerable_h264_profile(chrome, "42E028").as_deref(), Some("42e01f"));
        assert_eq!(answerable_h264_profile(chrome, "4d0028").as_deref(), Some("64001f"), "high decoders decode main");
        assert_eq!(answerable_h264_profile(chrome, "4d4028"), None, "an unknown constraint");
        assert_eq!(answerable_h264_profile(&chrome.replace("H264", "VP8"), "640028"), None, "not H.264");
        // Debian's Chromium: no High, but High 4:4:4 Predictive; and mode 0 does not count.
        let debian = "m=video 9 UDP/TLS/RTP/SAVPF 102 41 43\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\na=rtpmap:43 H264/90000\r\na=fmtp:43 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=f4001f\r\na=rtpmap:41 H264/90000\r\na=fmtp:41 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=f4001f\r\n";
        assert_eq!(answerable_h264_profile(debian, "640028").as_deref(), Some("f4001f"));
        assert!(!sends_video("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\na=inactive\r\n"));
    }

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
