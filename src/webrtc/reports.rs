//! Sender reports that tell the capture time. webrtc-rs's sender report interceptor maps an RTP
//! timestamp to the moment its packet was *sent*; a browser aligns sound and picture by that
//! mapping, so sound, which leaves ~30 ms after capture (a 20 ms Opus frame and its mixing)
//! against ~5 ms for a frame of video, would play that much late. Our RTP timestamps count
//! wall-clock time from capture (`media::pipeline` gives every payloader the offset of its
//! pipeline's base time), so the NTP time of an RTP time is known exactly: this interceptor, next
//! to the wire, writes it into each report (RFC 3550 § 6.4.1: "the same time as the NTP
//! timestamp").

use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

#[derive(Default)]
pub struct CaptureTimeReports {
    /// Each local stream's clock rate, by SSRC.
    clock_rates: HashMap<u32, u32>,
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
}

/// The 64-bit NTP time at which RTP time `rtp_time` (at `clock_rate`, counting wall-clock time
/// modulo 2^32) was captured, given the wall-clock time now in nanoseconds since the Unix epoch.
pub fn capture_ntp_time(rtp_time: u32, clock_rate: u32, now_unix_ns: u128) -> u64 {
    let rate = u128::from(clock_rate.max(1));
    let now_rtp = (now_unix_ns * rate / 1_000_000_000) as u32;
    // Signed: a report may extrapolate a little past the newest packet.
    let age_ticks = i128::from(now_rtp.wrapping_sub(rtp_time) as i32);
    let captured_ns = now_unix_ns as i128 - age_ticks * 1_000_000_000 / rate as i128;
    let captured_ns = captured_ns.max(0) as u128;
    let seconds = (captured_ns / 1_000_000_000) as u64 + NTP_UNIX_OFFSET_S;
    let fraction = ((captured_ns % 1_000_000_000) << 32) / 1_000_000_000;
    (seconds << 32) | fraction as u64
}

fn now_unix_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos())
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for CaptureTimeReports {
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

    fn handle_write(&mut self, mut message: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &mut message.message.packet {
            for packet in packets.iter_mut() {
                let Some(report) = packet.as_any().downcast_ref::<SenderReport>() else { continue };
                let Some(rate) = self.clock_rates.get(&report.ssrc) else { continue };
                let ntp_time = capture_ntp_time(report.rtp_time, *rate, now_unix_ns());
                *packet = Box::new(SenderReport { ntp_time, ..report.clone() });
            }
        }
        self.outbound.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.outbound.pop_front()
    }
}

impl Interceptor for CaptureTimeReports {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.clock_rates.insert(info.ssrc, info.clock_rate);
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.clock_rates.remove(&info.ssrc);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_s(ntp: u64) -> f64 {
        (ntp >> 32) as f64 - NTP_UNIX_OFFSET_S as f64 + (ntp & 0xffff_ffff) as f64 / 2f64.powi(32)
    }

    #[test]
    fn an_rtp_time_is_dated_when_it_was_captured() {
        let now_ns: u128 = 1_795_000_000_250_000_000;
        // Captured 40 ms ago, at 48 kHz and at 90 kHz.
        for rate in [48_000u32, 90_000] {
            let rtp = ((now_ns - 40_000_000) * u128::from(rate) / 1_000_000_000) as u32;
            let dated = unix_s(capture_ntp_time(rtp, rate, now_ns));
            assert!((dated - 1_795_000_000.210).abs() < 0.000_1, "{rate} Hz: {dated}");
        }
        // A report's RTP time may run a little ahead of the newest packet.
        let ahead = ((now_ns + 5_000_000) * 90_000 / 1_000_000_000) as u32;
        assert!((unix_s(capture_ntp_time(ahead, 90_000, now_ns)) - 1_795_000_000.255).abs() < 0.000_1);
    }
}
