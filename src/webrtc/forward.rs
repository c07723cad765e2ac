//! Per-viewer rewriting of the shared RTP packets: the viewer's own SSRC, payload type and
//! gap-free sequence numbers; video starts (and restarts after a loss) at a keyframe.

use bytes::Bytes;
use rtc::rtp;

use super::h264;

/// Whether RTP sequence number `sequence` comes after `than` (modulo 2^16, RFC 3550).
pub fn newer(sequence: u16, than: u16) -> bool {
    (sequence.wrapping_sub(than) as i16) > 0
}

/// What happened to one packet offered to a viewer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Send(rtp::Packet),
    /// Skipped while waiting for a keyframe to start decoding from.
    WaitingForKeyframe,
    /// The packet has no room for the header extension.
    NoRoomForExtension,
}

/// A header extension every packet carries: its negotiated id and its bytes.
#[derive(Debug, Clone)]
pub struct Extension {
    pub id: u8,
    pub data: Bytes,
}

pub struct Forwarder {
    ssrc: u32,
    payload_type: u8,
    extension: Option<Extension>,
    next_sequence: u16,
    /// Video: decoding can only start at a keyframe. Sound starts anywhere.
    keyframes: bool,
    waiting_for_keyframe: bool,
    /// Packets this viewer never got: lost while it lagged, or skipped until a keyframe.
    pub dropped: u64,
    pub sent: u64,
}

impl Forwarder {
    /// H.264, starting at a keyframe.
    pub fn video(ssrc: u32, payload_type: u8, first_sequence: u16, extension: Option<Extension>) -> Forwarder {
        Forwarder {
            ssrc,
            payload_type,
            extension,
            next_sequence: first_sequence,
            keyframes: true,
            waiting_for_keyframe: true,
            dropped: 0,
            sent: 0,
        }
    }

    /// Opus: every packet stands alone.
    pub fn audio(ssrc: u32, payload_type: u8, first_sequence: u16) -> Forwarder {
        Forwarder {
            keyframes: false,
            waiting_for_keyframe: false,
            ..Forwarder::video(ssrc, payload_type, first_sequence, None)
        }
    }

    /// The viewer fell behind and `missed` packets are gone: video resumes at the next keyframe.
    pub fn lagged(&mut self, missed: u64) {
        self.dropped += missed;
        self.waiting_for_keyframe = self.keyframes;
    }

    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    /// The stream's next packet, as this viewer gets it (the stream's own is shared by all).
    pub fn offer(&mut self, packet: &rtp::Packet) -> Verdict {
        if self.waiting_for_keyframe {
            if !h264::starts_keyframe(&packet.payload) {
                self.dropped += 1;
                return Verdict::WaitingForKeyframe;
            }
            self.waiting_for_keyframe = false;
        }
        let mut packet = packet.clone();
        packet.header.ssrc = self.ssrc;
        packet.header.payload_type = self.payload_type;
        if let Some(extension) = &self.extension {
            if packet.header.set_extension(extension.id, extension.data.clone()).is_err() {
                return Verdict::NoRoomForExtension;
            }
        }
        // Renumbered so that what we skipped is not a gap the browser would NACK.
        packet.header.sequence_number = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.sent += 1;
        Verdict::Send(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(sequence: u16, payload: &[u8]) -> rtp::Packet {
        rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: sequence,
                timestamp: 9000,
                ssrc: 1,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        }
    }

    const SPS: &[u8] = &[0x67, 0x42, 0xe0, 0x1f];
    const SLICE: &[u8] = &[0x41, 0x9a];

    fn sent(verdict: Verdict) -> rtp::Packet {
        match verdict {
            Verdict::Send(p) => p,
            other => panic!("expected a packet to send, got {other:?}"),
        }
    }

    #[test]
    fn sequence_numbers_wrap() {
        assert!(newer(1, 0) && newer(0, u16::MAX) && newer(100, 65_000));
        assert!(!newer(0, 0) && !newer(0, 1) && !newer(65_000, 100));
    }

    #[test]
    fn starts_at_a_keyframe_with_its_own_identity() {
        let mut f = Forwarder::video(0xabcd, 102, 500, Some(Extension { id: 6, data: Bytes::from_static(&[0, 0, 0]) }));
        assert_eq!(f.offer(&packet(7, SLICE)), Verdict::WaitingForKeyframe);
        let p = sent(f.offer(&packet(8, SPS)));
        assert_eq!((p.header.ssrc, p.header.payload_type, p.header.sequence_number), (0xabcd, 102, 500));
        assert_eq!(p.header.get_extension(6).as_deref(), Some(&[0u8, 0, 0][..]), "carries the extension");
        assert_eq!(sent(f.offer(&packet(9, SLICE))).header.sequence_number, 501);
        assert_eq!((f.sent, f.dropped), (2, 1));
    }

    #[test]
    fn sound_starts_anywhere_and_never_waits() {
        let mut f = Forwarder::audio(7, 111, 10);
        let p = sent(f.offer(&packet(3, &[0xfc, 0xff, 0xfe])));
        assert_eq!((p.header.ssrc, p.header.payload_type, p.header.sequence_number), (7, 111, 10));
        f.lagged(5);
        assert!(!f.waiting_for_keyframe());
        assert_eq!(sent(f.offer(&packet(9, &[0xfc]))).header.sequence_number, 11);
    }

    #[test]
    fn after_lagging_resumes_at_the_next_keyframe_without_a_sequence_gap() {
        let mut f = Forwarder::video(1, 96, u16::MAX, None);
        sent(f.offer(&packet(1, SPS)));
        f.lagged(40);
        assert!(f.waiting_for_keyframe());
        assert_eq!(f.offer(&packet(50, SLICE)), Verdict::WaitingForKeyframe);
        assert_eq!(sent(f.offer(&packet(51, SPS))).header.sequence_number, 0, "wraps and continues");
        assert_eq!(f.dropped, 41);
    }
}
