//! Whether a stream's source delivers, and when to try it again: the state machine behind the
//! slate, as pure logic over instants, tested without GStreamer.

use std::time::{Duration, Instant};

/// Reconnect twice a second for this long after a loss: a camera that reboots or restarts its
/// RTSP server is back soon, and its picture should be too (a refused connection costs nothing).
pub const RECONNECT_FAST_FOR: Duration = Duration::from_secs(30);
pub const RECONNECT_FAST: Duration = Duration::from_millis(500);
/// After the fast phase, attempts back off from this (doubling, with jitter)…
pub const RECONNECT_SLOW_FROM: Duration = Duration::from_secs(1);
/// …to at most this.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// A rebuilt source gets this long to deliver its first frame before it is rebuilt again
/// (an RTSP camera takes a moment to answer and send a keyframe).
pub const FIRST_FRAME_GRACE: Duration = Duration::from_secs(5);

/// How long to wait before the next attempt, `lost_for` into a loss; `slow_attempts` counts
/// the attempts made after the fast phase; `jitter` is uniform in 0..1.
pub fn reconnect_delay(lost_for: Duration, slow_attempts: u32, jitter: f64) -> Duration {
    if lost_for < RECONNECT_FAST_FOR {
        return RECONNECT_FAST;
    }
    let doubled = RECONNECT_SLOW_FROM.saturating_mul(1 << slow_attempts.min(8)).min(RECONNECT_MAX);
    // ±20 %, so many gateways do not retry a shared camera in lockstep.
    doubled.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)).min(RECONNECT_MAX)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// No frame yet since the stream started.
    Starting,
    Live,
    Lost {
        since: Instant,
        reason: String,
    },
}

/// What changed, for the one log line and status update each transition gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Lost { reason: String },
    Restored { after: Duration },
}

/// Watches the frames of one stream's source.
#[derive(Debug)]
pub struct SignalMonitor {
    timeout: Duration,
    started: Instant,
    last_frame: Option<Instant>,
    signal: Signal,
}

impl SignalMonitor {
    pub fn new(timeout: Duration, now: Instant) -> SignalMonitor {
        SignalMonitor { timeout, started: now, last_frame: None, signal: Signal::Starting }
    }

    pub fn signal(&self) -> &Signal {
        &self.signal
    }

    /// How long the signal has been lost (zero unless it is).
    pub fn lost_for(&self, now: Instant) -> Duration {
        match self.signal {
            Signal::Lost { since, .. } => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        }
    }

    /// True while viewers should see the slate: the signal is lost, or never came.
    pub fn wants_slate(&self) -> bool {
        matches!(self.signal, Signal::Lost { .. })
    }

    pub fn frame(&mut self, now: Instant) -> Change {
        self.last_frame = Some(now);
        match std::mem::replace(&mut self.signal, Signal::Live) {
            Signal::Lost { since, .. } => Change::Restored { after: now.saturating_duration_since(since) },
            _ => Change::None,
        }
    }

    /// The source failed or ended. A loss already under way keeps its first reason.
    pub fn failed(&mut self, now: Instant, reason: String) -> Change {
        match self.signal {
            Signal::Lost { .. } => Change::None,
            _ => self.lose(now, reason),
        }
    }

    /// Called regularly: a source that stopped sending (or never started) is lost.
    pub fn check(&mut self, now: Instant) -> Change {
        let quiet_since = self.last_frame.unwrap_or(self.started);
        let quiet = now.saturating_duration_since(quiet_since);
        match self.signal {
            Signal::Lost { .. } => Change::None,
            _ if quiet < self.timeout => Change::None,
            Signal::Starting => {
                self.lose(now, format!("no frame from the source within {} s of start", self.timeout.as_secs_f32()))
            }
            Signal::Live => self.lose(now, format!("the source sent no frame for {} s", self.timeout.as_secs_f32())),
        }
    }

    fn lose(&mut self, now: Instant, reason: String) -> Change {
        self.signal = Signal::Lost { since: now, reason: reason.clone() };
        Change::Lost { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_twice_a_second_then_backs_off_to_five() {
        let s = Duration::from_secs;
        assert_eq!(reconnect_delay(s(0), 0, 0.5), Duration::from_millis(500));
        assert_eq!(reconnect_delay(s(29), 0, 0.9), Duration::from_millis(500));
        assert_eq!(reconnect_delay(s(30), 0, 0.5), s(1));
        assert_eq!(reconnect_delay(s(31), 1, 0.5), s(2));
        assert_eq!(reconnect_delay(s(35), 2, 0.5), s(4));
        assert_eq!(reconnect_delay(s(40), 3, 0.5), s(5));
        assert_eq!(reconnect_delay(s(999), 40, 1.0), s(5), "never more than the max");
        let jittered = reconnect_delay(s(31), 1, 0.0);
        assert!(jittered >= Duration::from_millis(1600) && jittered < s(2));
    }

    #[test]
    fn lost_on_silence_or_failure_once_then_restored_by_a_frame() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut monitor = SignalMonitor::new(Duration::from_secs(2), t0);
        assert_eq!(monitor.check(at(1500)), Change::None);
        assert_eq!(monitor.frame(at(1600)), Change::None);
        assert_eq!(monitor.signal(), &Signal::Live);
        assert_eq!(monitor.check(at(3500)), Change::None, "1.9 s of quiet is not a loss");
        let lost = monitor.check(at(3700));
        assert!(matches!(lost, Change::Lost { ref reason } if reason.contains("no frame for 2 s")), "{lost:?}");
        assert!(monitor.wants_slate());
        assert_eq!(monitor.check(at(9000)), Change::None, "a loss is reported once");
        assert_eq!(monitor.failed(at(9100), "refused".into()), Change::None);
        assert_eq!(monitor.lost_for(at(8700)), Duration::from_secs(5));
        assert_eq!(monitor.frame(at(13700)), Change::Restored { after: Duration::from_secs(10) });
        assert_eq!(monitor.lost_for(at(14000)), Duration::ZERO);
        assert!(!monitor.wants_slate());
        assert!(matches!(monitor.failed(at(14000), "EOS".into()), Change::Lost { .. }));
    }

    #[test]
    fn a_source_that_never_starts_is_lost_after_the_timeout() {
        let t0 = Instant::now();
        let mut monitor = SignalMonitor::new(Duration::from_secs(2), t0);
        assert!(!monitor.wants_slate());
        let lost = monitor.check(t0 + Duration::from_secs(2));
        assert!(matches!(lost, Change::Lost { ref reason } if reason.contains("of start")), "{lost:?}");
        assert!(monitor.wants_slate());
    }
}
