//! Each viewer's send budget: how much it may have handed to webrtc-rs that the peer's driver
//! has not yet taken. webrtc-rs queues every packet a viewer's task writes in a channel to the
//! peer's driver, and a full channel makes the writer wait rather than drop. A driver that
//! cannot keep up (a socket that will not take more, a starved task) would so turn a viewer's
//! lag into seconds of stale video. Over budget, the viewer drops packets instead, is counted,
//! and resumes at the next keyframe.

use std::sync::atomic::{AtomicU64, Ordering};

/// The most a viewer may have in flight inside webrtc-rs. Below the driver channel's 256
/// events (which also carry RTCP), and above the largest burst a healthy viewer has in flight:
/// a 1080p keyframe at 8 Mbit/s is about 150 packets and 180 KB, written back to back.
pub const BUDGET: SendBudget = SendBudget { packets: 192, bytes: 256 * 1024 };

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendBudget {
    pub packets: u64,
    pub bytes: u64,
}

/// Payload packets and bytes a viewer's task handed to webrtc-rs, and those the peer's driver
/// took (seen by the viewer's interceptor), counted on both sides.
#[derive(Debug, Default)]
pub struct InFlight {
    handed_packets: AtomicU64,
    handed_bytes: AtomicU64,
    taken_packets: AtomicU64,
    taken_bytes: AtomicU64,
}

impl InFlight {
    pub fn handed(&self, payload_bytes: usize) {
        self.handed_packets.fetch_add(1, Ordering::Relaxed);
        self.handed_bytes.fetch_add(payload_bytes as u64, Ordering::Relaxed);
    }

    pub fn taken(&self, payload_bytes: usize) {
        // Released so that `now` never sees more taken than handed.
        self.taken_bytes.fetch_add(payload_bytes as u64, Ordering::Release);
        self.taken_packets.fetch_add(1, Ordering::Release);
    }

    /// Packets and bytes handed but not yet taken.
    pub fn now(&self) -> SendBudget {
        let taken = SendBudget {
            packets: self.taken_packets.load(Ordering::Acquire),
            bytes: self.taken_bytes.load(Ordering::Acquire),
        };
        SendBudget {
            packets: self.handed_packets.load(Ordering::Relaxed).saturating_sub(taken.packets),
            bytes: self.handed_bytes.load(Ordering::Relaxed).saturating_sub(taken.bytes),
        }
    }

    /// Whether what is in flight has used up `budget`, in packets or in bytes.
    pub fn spent(&self, budget: SendBudget) -> bool {
        let now = self.now();
        now.packets >= budget.packets || now.bytes >= budget.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: SendBudget = SendBudget { packets: 3, bytes: 3000 };

    #[test]
    fn spent_by_packets_or_by_bytes_and_refilled_as_the_driver_takes() {
        let flight = InFlight::default();
        assert!(!flight.spent(SMALL));
        flight.handed(100);
        flight.handed(100);
        assert!(!flight.spent(SMALL));
        flight.handed(100);
        assert!(flight.spent(SMALL), "three packets in flight");
        flight.taken(100);
        assert!(!flight.spent(SMALL));
        flight.handed(2900);
        assert_eq!(flight.now(), SendBudget { packets: 3, bytes: 3100 });
        flight.taken(100);
        flight.taken(100);
        assert_eq!(flight.now(), SendBudget { packets: 1, bytes: 2900 });
        assert!(!flight.spent(SMALL));
        flight.handed(100);
        assert!(flight.spent(SMALL), "3000 bytes in two packets");
    }
}
