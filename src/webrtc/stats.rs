//! Counters of what each viewer was sent and asked for, summed per stream for the API and
//! `/metrics`. Plain atomics: the peers count, readers take snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Counters {
    pub packets_sent: AtomicU64,
    /// RTP bytes (header and payload) handed to webrtc-rs, before SRTP.
    pub bytes_sent: AtomicU64,
    /// Packets a viewer never got: lost while it lagged or over its send budget, or skipped
    /// until a keyframe.
    pub packets_dropped: AtomicU64,
    /// Packets viewers reported lost (each is answered from the NACK history if still there).
    pub packets_nacked: AtomicU64,
    /// Packets sent again, answering NACKs.
    pub packets_retransmitted: AtomicU64,
    /// PLIs and FIRs received.
    pub keyframe_requests: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why a viewer's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No ICE and DTLS within the connect timeout, or closed before.
    NeverConnected,
    /// The connection failed or the browser closed it (ICE consent lost, DTLS closed).
    Failed,
    /// Closed through signalling (WHEP `DELETE`, the WebSocket closed) or at shutdown.
    Closed,
}

impl Ended {
    pub const ALL: [Ended; 3] = [Ended::NeverConnected, Ended::Failed, Ended::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            Ended::NeverConnected => "never_connected",
            Ended::Failed => "failed",
            Ended::Closed => "closed",
        }
    }
}

/// One stream's totals over every viewer it ever had.
#[derive(Debug, Default)]
pub struct StreamTotals {
    pub counters: Counters,
    pub sessions_started: AtomicU64,
    sessions_ended: [AtomicU64; 3],
}

impl StreamTotals {
    pub fn sessions_ended(&self, reason: Ended) -> u64 {
        self.sessions_ended[reason as usize].load(Ordering::Relaxed)
    }
}

/// A viewer's own counters and its stream's totals, counted together.
#[derive(Debug)]
pub struct ViewerStats {
    pub own: Counters,
    stream: Arc<StreamTotals>,
}

impl ViewerStats {
    /// A new session of the stream with `totals`.
    pub fn start(totals: Arc<StreamTotals>) -> ViewerStats {
        totals.sessions_started.fetch_add(1, Ordering::Relaxed);
        ViewerStats { own: Counters::default(), stream: totals }
    }

    fn both(&self, counter: impl Fn(&Counters) -> &AtomicU64, n: u64) {
        counter(&self.own).fetch_add(n, Ordering::Relaxed);
        counter(&self.stream.counters).fetch_add(n, Ordering::Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.both(|c| &c.packets_sent, 1);
        self.both(|c| &c.bytes_sent, bytes as u64);
    }

    pub fn dropped(&self, packets: u64) {
        self.both(|c| &c.packets_dropped, packets);
    }

    pub fn nacked(&self, packets: u64) {
        self.both(|c| &c.packets_nacked, packets);
    }

    pub fn retransmitted(&self) {
        self.both(|c| &c.packets_retransmitted, 1);
    }

    pub fn keyframe_requested(&self) {
        self.both(|c| &c.keyframe_requests, 1);
    }

    pub fn ended(&self, reason: Ended) {
        self.stream.sessions_ended[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_viewer_counts_for_itself_and_its_stream() {
        let totals = Arc::new(StreamTotals::default());
        let (a, b) = (ViewerStats::start(totals.clone()), ViewerStats::start(totals.clone()));
        a.sent(1200);
        b.sent(800);
        b.dropped(3);
        a.nacked(2);
        a.keyframe_requested();
        b.retransmitted();
        b.ended(Ended::Failed);
        assert_eq!(Counters::get(&a.own.bytes_sent), 1200);
        let c = &totals.counters;
        let sums = [
            &c.packets_sent,
            &c.bytes_sent,
            &c.packets_dropped,
            &c.packets_nacked,
            &c.keyframe_requests,
            &c.packets_retransmitted,
        ];
        assert_eq!(sums.map(Counters::get), [2, 2000, 3, 2, 1, 1]);
        assert_eq!(Counters::get(&totals.sessions_started), 2);
        assert_eq!(Ended::ALL.map(|r| totals.sessions_ended(r)), [0, 1, 0]);
    }
}
