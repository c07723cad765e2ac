//! An interceptor for what viewers' RTCP asks of us, beyond the NACKs and reports that
//! webrtc-rs's own interceptors handle:
//!
//! - PLI and FIR are let through to the application (inbound RTCP stops at the end of the chain
//!   unless an interceptor marks it for delivery), which asks the encoder for a keyframe.
//! - RFC 3611 receiver reference times (RRTR) are answered at once with a DLRR block, when the
//!   viewer's offer asked for them (`a=rtcp-xr:rcvr-rtt=all`). A viewer only receives, so without
//!   this it never learns the round-trip time: Chromium then assumes 100 ms, waits that long
//!   before asking again for a retransmission that was itself lost, and a frame waiting on it
//!   freezes the picture. But Chromium also shows every frame about 15 ms later in a session
//!   that negotiated it (measured with `make bench`: 14 → 30 ms median on a clean LAN), so the
//!   player asks for it only once it sees packets lost (web/player.js).
//!
//! Being closest to the application, it also sees each RTP packet the peer's driver takes from
//! the viewer's task, before NACK retransmissions join: the other side of the send budget. And
//! it counts the packets viewers report lost and the keyframes they ask for.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{Attribute, AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::extended_report::{DLRRReport, DLRRReportBlock, ExtendedReport, ReceiverReferenceTimeReportBlock};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use rtc::shared::TransportContext;

use super::budget::InFlight;
use super::forward::newer;
use super::stats::ViewerStats;

/// The SDP attribute (media level) that asks the browser to send receiver reference times.
pub const RECEIVER_RTT_ATTRIBUTE: &str = "a=rtcp-xr:rcvr-rtt=all";

pub struct Feedback {
    /// Our media SSRC: the sender of the DLRR answers.
    local_ssrc: u32,
    in_flight: Arc<InFlight>,
    stats: Arc<ViewerStats>,
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
}

impl Feedback {
    pub fn new(in_flight: Arc<InFlight>, stats: Arc<ViewerStats>) -> Feedback {
        Feedback { local_ssrc: 0, in_flight, stats, inbound: VecDeque::new(), outbound: VecDeque::new() }
    }
}

pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// The DLRR answer to an extended report's receiver reference times, if it carries any. It
/// goes out at once, so the delay since the report is zero.
pub fn answer_reference_times(report: &ExtendedReport, local_ssrc: u32) -> Option<ExtendedReport> {
    let reports: Vec<DLRRReport> = report
        .reports
        .iter()
        .filter_map(|block| block.as_any().downcast_ref::<ReceiverReferenceTimeReportBlock>())
        // The middle 32 bits of the 64-bit NTP time, as RFC 3611 § 4.5 has it.
        .map(|rrtr| DLRRReport { ssrc: report.sender_ssrc, last_rr: (rrtr.ntp_timestamp >> 16) as u32, dlrr: 0 })
        .collect();
    (!reports.is_empty())
        .then(|| ExtendedReport { sender_ssrc: local_ssrc, reports: vec![Box::new(DLRRReportBlock { reports })] })
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Feedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut message: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &message.message.packet {
            for nack in packets.iter().filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>()) {
                let lost: u32 = nack.nacks.iter().map(|pair| 1 + pair.lost_packets.count_ones()).sum();
                self.stats.nacked(u64::from(lost));
            }
            for report in packets.iter().filter_map(|p| p.as_any().downcast_ref::<ExtendedReport>()) {
                if let Some(answer) = answer_reference_times(report, self.local_ssrc) {
                    self.outbound.push_back(TaggedPacket {
                        now: message.now,
                        transport: TransportContext::default(),
                        message: AttributedPacket::new(Packet::Rtcp(vec![Box::new(answer)])),
                    });
                }
            }
            let requests: Vec<_> = packets.iter().filter(|p| is_keyframe_request(p.as_ref())).cloned().collect();
            for _ in &requests {
                self.stats.keyframe_requested();
            }
            // Reports and NACKs were for the interceptors before us; nothing for us to do.
            if requests.is_empty() {
                return Ok(());
            }
            message.message.packet = Packet::Rtcp(requests);
            message.message.add(Attribute::DeliverToApplication);
        }
        self.inbound.push_back(message);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.inbound.pop_front()
    }

    fn handle_write(&mut self, message: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtp(packet) = &message.message.packet {
            self.in_flight.taken(packet.payload.len());
        }
        self.outbound.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.outbound.pop_front()
    }
}

impl Interceptor for Feedback {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        // DLRR answers go out as from the video: Chromium hands a report to the stream of the
        // SSRC it comes from, and only the video's receiver asks for the round trip.
        if info.mime_type.to_ascii_lowercase().starts_with("video/") {
            self.local_ssrc = info.ssrc;
        }
    }
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Counts the RTP packets that leave a second time: next to the wire, after the NACK responder
/// has added its retransmissions, any packet not newer than the newest sent is one.
pub struct Retransmissions {
    stats: Arc<ViewerStats>,
    /// By SSRC: sound and video number their packets apart.
    newest: HashMap<u32, u16>,
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
}

impl Retransmissions {
    pub fn new(stats: Arc<ViewerStats>) -> Retransmissions {
        Retransmissions { stats, newest: HashMap::new(), inbound: VecDeque::new(), outbound: VecDeque::new() }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Retransmissions {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, message: TaggedPacket) -> Result<(), Error> {
        self.inbound.push_back(message);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.inbound.pop_front()
    }

    fn handle_write(&mut self, message: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtp(packet) = &message.message.packet {
            let sequence = packet.header.sequence_number;
            match self.newest.get_mut(&packet.header.ssrc) {
                Some(newest) if !newer(sequence, *newest) => self.stats.retransmitted(),
                Some(newest) => *newest = sequence,
                None => {
                    self.newest.insert(packet.header.ssrc, sequence);
                }
            }
        }
        self.outbound.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.outbound.pop_front()
    }
}

impl Interceptor for Retransmissions {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::{Marshal, Unmarshal};

    #[test]
    fn answers_a_reference_time_with_its_middle_bits_for_the_reporter() {
        let report = ExtendedReport {
            sender_ssrc: 1,
            reports: vec![Box::new(ReceiverReferenceTimeReportBlock { ntp_timestamp: 0x1122_3344_5566_7788 })],
        };
        let answer = answer_reference_times(&report, 0xabcd).expect("an answer");
        // Through the wire format, as the browser will read it.
        let wire = answer.marshal().unwrap();
        let parsed = ExtendedReport::unmarshal(&mut wire.freeze()).unwrap();
        assert_eq!(parsed.sender_ssrc, 0xabcd);
        let block = parsed.reports[0].as_any().downcast_ref::<DLRRReportBlock>().expect("a DLRR block");
        assert_eq!(block.reports, vec![DLRRReport { ssrc: 1, last_rr: 0x3344_5566, dlrr: 0 }]);
    }

    #[test]
    fn reports_without_reference_times_need_no_answer() {
        let report = ExtendedReport { sender_ssrc: 1, reports: vec![] };
        assert!(answer_reference_times(&report, 2).is_none());
    }
}
