//! Opt-in timing of each video frame's way through the gateway, for the benchmarks
//! (`LIVEGATE_HOP_TRACE=1`; when off, a hop costs one load of a flag). Each hop stamps the
//! wall-clock time a frame passed it, the frame known by its RTP timestamp, and its capture time
//! is read from its latency strip. When the frame's last packet leaves the socket (the first
//! viewer's), one log line (target `livegate::hops`) gives every hop in ms after capture.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a frame is stamped, in the order it passes; the socket ends it ([`left`]).
#[derive(Debug, Clone, Copy)]
pub enum Hop {
    /// Into the encoder (the capture's appsink, the supervisor and the appsrc behind it).
    EncoderIn,
    /// Out of the encoder, whole.
    EncoderOut,
    /// Into the payloader, past the tee.
    PayloaderIn,
    /// The frame's last packet in the appsink callback (payloaded), before the broadcast.
    Appsink,
    /// The last packet taken from the broadcast by a viewer's task.
    FanOut,
    /// The last packet handed to webrtc-rs (`write_rtp` returned).
    Written,
}

const HOPS: usize = 6;
/// Frames followed at once: one whose last packet never leaves (no viewer) is forgotten after.
const FOLLOWED: usize = 16;
/// The pipeline's RTP time of a frame (from running time) and the payloader's may differ by
/// a tick of rounding; frames are 3000 ticks apart at 30 fps.
const SAME_FRAME_TICKS: i32 = 2;

struct Frame {
    rtp_time: u32,
    captured_ms: u64,
    at_ns: [Option<u64>; HOPS],
}

fn frames() -> Option<&'static Mutex<VecDeque<Frame>>> {
    static FRAMES: OnceLock<Option<Mutex<VecDeque<Frame>>>> = OnceLock::new();
    FRAMES
        .get_or_init(|| {
            (std::env::var_os("LIVEGATE_HOP_TRACE").is_some_and(|v| v == "1"))
                .then(|| Mutex::new(VecDeque::with_capacity(FOLLOWED)))
        })
        .as_ref()
}

pub fn enabled() -> bool {
    frames().is_some()
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn same_frame(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32).abs() <= SAME_FRAME_TICKS
}

/// A frame captured at `captured_ms` (its strip) enters the encoder.
pub fn captured(rtp_time: u32, captured_ms: u64) {
    let Some(frames) = frames() else { return };
    let mut at_ns = [None; HOPS];
    at_ns[Hop::EncoderIn as usize] = Some(now_ns());
    let mut frames = frames.lock().expect("hops lock");
    if frames.len() == FOLLOWED {
        frames.pop_front();
    }
    frames.push_back(Frame { rtp_time, captured_ms, at_ns });
}

/// The frame of `rtp_time` passed `hop` (the first time it does: the first viewer's).
pub fn stamp(rtp_time: u32, hop: Hop) {
    let Some(frames) = frames() else { return };
    let mut frames = frames.lock().expect("hops lock");
    if let Some(frame) = frames.iter_mut().find(|f| same_frame(f.rtp_time, rtp_time)) {
        frame.at_ns[hop as usize].get_or_insert_with(now_ns);
    }
}

/// The last packet of the frame of `rtp_time` left the socket: logs its hops.
pub fn left(rtp_time: u32) {
    let Some(frames) = frames() else { return };
    let at = now_ns();
    let frame = {
        let mut frames = frames.lock().expect("hops lock");
        let Some(i) = frames.iter().position(|f| same_frame(f.rtp_time, rtp_time)) else { return };
        frames.remove(i).expect("found")
    };
    // Not stamped (NaN) reads as null in the JSON log.
    let after_capture = |ns: Option<u64>| ns.map_or(f64::NAN, |ns| ns as f64 / 1e6 - frame.captured_ms as f64);
    let hop = |hop: Hop| after_capture(frame.at_ns[hop as usize]);
    tracing::info!(
        target: "livegate::hops",
        captured_ms = frame.captured_ms,
        encoder_in = hop(Hop::EncoderIn),
        encoder_out = hop(Hop::EncoderOut),
        payloader_in = hop(Hop::PayloaderIn),
        appsink = hop(Hop::Appsink),
        fan_out = hop(Hop::FanOut),
        written = hop(Hop::Written),
        socket = after_capture(Some(at)),
        "frame hops"
    );
}
