//! Low-Latency HLS (RFC 8216bis): the encoder's H.264 and AAC cut into fMP4 parts of about
//! 200 ms as they come out, listed with `EXT-X-PART` before their segment is complete, with a
//! preload hint for the next part, and blocking playlist reloads (`_HLS_msn`, `_HLS_part`)
//! answered the moment the part exists. Kept in memory: nothing waits for a disk.
//!
//! Segments start at keyframes (one per GOP, about a second); media sequence numbers go on
//! across encoders, a new encoder bringing a new initialisation segment after a discontinuity.
//! Timestamps are wall-clock times of capture, so tracks and encoders share one timeline and
//! `EXT-X-PROGRAM-DATE-TIME` says when a segment's first frame was captured.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::fmp4::{self, AudioFormat, Sample, VideoFormat, VIDEO_TIMESCALE};

pub const PLAYLIST: &str = "ll.m3u8";
/// What a part's duration may reach. Parts aim at 200 ms (six frames at 30 fps); the slack
/// keeps a part whose frames came a little late within the target, as the RFC requires.
pub const PART_TARGET: Duration = Duration::from_millis(220);
/// A keyframe starts a new segment once the open one is this long (the encoder's GOP is a
/// second; keyframes forced for joining viewers come in between).
const SEGMENT_MIN: Duration = Duration::from_millis(900);
/// Complete segments listed; parts are listed for the newest few only (§ 4.4.4.9: not older
/// than three target durations).
const SEGMENTS_LISTED: usize = 6;
const SEGMENTS_WITH_PARTS: usize = 3;
/// Segments kept in memory, listed or not, for players a little behind.
const SEGMENTS_KEPT: usize = 12;

/// An H.264 access unit from the encoding part, timed by wall-clock capture time.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    pub decode_ns: u64,
    pub presentation_ns: u64,
    pub keyframe: bool,
    pub annex_b: Bytes,
    pub width: u16,
    pub height: u16,
}

/// A raw AAC frame from the encoding part.
#[derive(Debug, Clone)]
pub struct AudioFrame {
    pub presentation_ns: u64,
    pub duration_ns: u64,
    pub data: Bytes,
}

/// A file the playlist names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Playlist,
    Init(u32),
    Segment(u64),
    Part(u64, u32),
}

impl Resource {
    /// What `name` is, if it is one of ours (`ll.m3u8`, `ll-init-G.mp4`, `ll-M.m4s`, `ll-M.P.m4s`).
    pub fn parse(name: &str) -> Option<Resource> {
        if name == PLAYLIST {
            return Some(Resource::Playlist);
        }
        if let Some(generation) = name.strip_prefix("ll-init-").and_then(|n| n.strip_suffix(".mp4")) {
            return generation.parse().ok().map(Resource::Init);
        }
        let numbers = name.strip_prefix("ll-")?.strip_suffix(".m4s")?;
        match numbers.split_once('.') {
            Some((msn, part)) => Some(Resource::Part(msn.parse().ok()?, part.parse().ok()?)),
            None => numbers.parse().ok().map(Resource::Segment),
        }
    }

    fn name(self) -> String {
        match self {
            Resource::Playlist => PLAYLIST.into(),
            Resource::Init(generation) => format!("ll-init-{generation}.mp4"),
            Resource::Segment(msn) => format!("ll-{msn}.m4s"),
            Resource::Part(msn, part) => format!("ll-{msn}.{part}.m4s"),
        }
    }
}

/// Why a blocking request is not answered with what it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    #[error("segment {asked} is more than two segments after the newest ({newest})")]
    TooFarAhead { asked: u64, newest: u64 },
    #[error("not available within {0:?}")]
    TimedOut(Duration),
    #[error("no such part or segment (any more)")]
    Gone,
}

#[derive(Debug)]
struct Part {
    duration: f64,
    independent: bool,
    bytes: Bytes,
}

#[derive(Debug)]
struct Segment {
    msn: u64,
    generation: u32,
    discontinuity: bool,
    /// Capture time of its first frame, ms since the epoch.
    starts_ms: u64,
    parts: Vec<Part>,
    /// The parts joined, once the segment is complete.
    complete: Option<Bytes>,
}

impl Segment {
    fn duration(&self) -> f64 {
        self.parts.iter().map(|p| p.duration).sum()
    }
}

#[derive(Debug, Default)]
struct State {
    target_seconds: u32,
    /// Initialisation segments by generation, newest last.
    inits: VecDeque<(u32, Bytes)>,
    video_format: Option<VideoFormat>,
    audio_format: Option<AudioFormat>,
    /// The next segment starts after a new encoder.
    discontinuity_next: bool,
    discontinuity_sequence: u64,
    /// Oldest first; the last one may be open (not complete).
    segments: VecDeque<Segment>,
    next_msn: u64,
    /// The newest frame: its duration is known once the next one arrives.
    pending: Option<Sample>,
    last_duration: u32,
    part_video: Vec<Sample>,
    part_audio: Vec<Sample>,
    /// Where the next audio frame continues the track, in its timescale.
    audio_next: Option<u64>,
    fragment_sequence: u32,
}

/// One stream's Low-Latency HLS, kept across encoders.
#[derive(Debug)]
pub struct LowLatencyHls {
    state: Mutex<State>,
    /// Bumped whenever a part is added: blocked requests look again.
    changed: watch::Sender<u64>,
}

impl Default for LowLatencyHls {
    fn default() -> Self {
        LowLatencyHls {
            state: Mutex::new(State { target_seconds: 1, ..State::default() }),
            changed: watch::channel(0).0,
        }
    }
}

/// Nanoseconds in a timescale, rounded to the nearest tick (an AAC frame is 21 333 333 ns:
/// 1024 ticks at 48 kHz, not 1023).
fn ticks(ns: u64, timescale: u32) -> u64 {
    ((u128::from(ns) * u128::from(timescale) + 500_000_000) / 1_000_000_000) as u64
}

impl LowLatencyHls {
    /// A new encoder starts: what the old one left ends its segment, and the new one's stream
    /// (with `audio` in it, if any) is described afresh from its first keyframe.
    pub fn new_encoder(&self, audio: Option<AudioFormat>) {
        let mut state = self.state.lock().expect("hls lock");
        let closed = state.flush();
        state.video_format = None;
        state.audio_format = audio;
        state.audio_next = None;
        if !state.segments.is_empty() {
            state.discontinuity_next = true;
        }
        drop(state);
        if closed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    pub fn push_video(&self, frame: VideoFrame) {
        let unit = fmp4::access_unit(&frame.annex_b);
        let decode_time = ticks(frame.decode_ns, VIDEO_TIMESCALE);
        let presentation = ticks(frame.presentation_ns, VIDEO_TIMESCALE);
        let mut state = self.state.lock().expect("hls lock");
        let mut closed = false;
        if let Some(previous) = state.pending.take() {
            let duration = decode_time.saturating_sub(previous.decode_time);
            let duration =
                if duration == 0 { state.last_duration.max(1) } else { duration.min(u32::MAX.into()) as u32 };
            state.last_duration = duration;
            // It came later than its part was left open for: no part may outlast the target.
            if ticks_to_seconds(state.part_ticks() + u64::from(duration)) > PART_TARGET.as_secs_f64() {
                closed |= state.close_part();
            }
            state.part_video.push(Sample { duration, ..previous });
        }
        let new_format = match (frame.keyframe, unit.sps, unit.pps) {
            (true, Some(sps), Some(pps)) => Some(VideoFormat { width: frame.width, height: frame.height, sps, pps })
                .filter(|format| state.video_format.as_ref() != Some(format)),
            _ => None,
        };
        if let Some(format) = new_format {
            match fmp4::init_segment(&format, state.audio_format.as_ref()) {
                Ok(init) => {
                    closed |= state.flush();
                    if state.video_format.is_some() {
                        state.discontinuity_next = true;
                    }
                    let generation = state.inits.back().map_or(0, |(g, _)| g + 1);
                    state.inits.push_back((generation, init));
                    state.video_format = Some(format);
                }
                Err(err) => tracing::warn!(error = %err, "no Low-Latency HLS for this keyframe"),
            }
        }
        if state.video_format.is_none() {
            return; // Nothing to describe the stream with until a keyframe with parameter sets.
        }
        let open = state.segments.back().filter(|s| s.complete.is_none()).map(Segment::duration);
        let part_seconds = ticks_to_seconds(state.part_ticks());
        match open {
            None if !frame.keyframe => return, // A segment starts with a keyframe.
            Some(seconds) if frame.keyframe && seconds + part_seconds >= SEGMENT_MIN.as_secs_f64() => {
                closed |= state.close_segment();
                state.open_segment(frame.presentation_ns);
            }
            None => state.open_segment(frame.presentation_ns),
            Some(_) => {
                // Closed as soon as a next frame as long as the last would not fit.
                let next = ticks_to_seconds(state.last_duration.into());
                if part_seconds + next > PART_TARGET.as_secs_f64() {
                    closed |= state.close_part();
                }
            }
        }
        state.pending = Some(Sample {
            decode_time,
            duration: 0,
            composition_offset: presentation.saturating_sub(decode_time).min(i32::MAX as u64) as i32,
            sync: frame.keyframe,
            data: unit.data.into(),
        });
        drop(state);
        if closed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// AAC frames go into the part being built; before the first segment there is nothing to
    /// put them in.
    pub fn push_audio(&self, frame: AudioFrame) {
        let mut state = self.state.lock().expect("hls lock");
        let Some(rate) = state.audio_format.as_ref().map(|f| f.sample_rate) else { return };
        if state.segments.back().is_none_or(|s| s.complete.is_some()) {
            return;
        }
        let duration = ticks(frame.duration_ns, rate).max(1) as u32;
        let mut decode_time = ticks(frame.presentation_ns, rate);
        // Rounding must not open gaps of a tick between frames that follow each other.
        if let Some(next) = state.audio_next {
            if decode_time.abs_diff(next) < u64::from(duration / 2) {
                decode_time = next;
            }
        }
        state.audio_next = Some(decode_time + u64::from(duration));
        state.part_audio.push(Sample { decode_time, duration, composition_offset: 0, sync: true, data: frame.data });
    }

    /// The playlist as it is now.
    pub fn playlist(&self) -> Option<String> {
        let state = self.state.lock().expect("hls lock");
        state.segments.back()?;
        Some(state.render())
    }

    pub fn file(&self, resource: Resource) -> Option<Bytes> {
        let state = self.state.lock().expect("hls lock");
        match resource {
            Resource::Playlist => None,
            Resource::Init(generation) => state.inits.iter().find(|(g, _)| *g == generation).map(|(_, b)| b.clone()),
            Resource::Segment(msn) => state.segment(msn)?.complete.clone(),
            Resource::Part(msn, part) => state.segment(msn)?.parts.get(part as usize).map(|p| p.bytes.clone()),
        }
    }

    /// A part, waiting for it if it is the one the playlist hints at next.
    pub async fn part(&self, msn: u64, part: u32, within: Duration) -> Result<Bytes, Blocked> {
        if let Some(bytes) = self.file(Resource::Part(msn, part)) {
            return Ok(bytes);
        }
        let hinted = self.state.lock().expect("hls lock").next_part() == Some((msn, part));
        if !hinted {
            return Err(Blocked::Gone);
        }
        self.wait_for(msn, Some(part), within).await?;
        self.file(Resource::Part(msn, part)).ok_or(Blocked::Gone)
    }

    /// Waits until the playlist holds segment `msn` complete, or with part `part` of it, or
    /// anything later (RFC 8216bis § 6.2.5.2).
    pub async fn wait_for(&self, msn: u64, part: Option<u32>, within: Duration) -> Result<(), Blocked> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            {
                let state = self.state.lock().expect("hls lock");
                let newest = state.segments.back().map_or(0, |s| s.msn);
                if msn > newest + 2 {
                    return Err(Blocked::TooFarAhead { asked: msn, newest });
                }
                if state.holds(msn, part) {
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(Blocked::TimedOut(within)),
            }
        }
    }

    /// How long a blocking request may be held: three target durations (§ 6.2.5.2).
    pub fn blocking_limit(&self) -> Duration {
        Duration::from_secs(3 * u64::from(self.state.lock().expect("hls lock").target_seconds))
    }
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    ticks as f64 / f64::from(VIDEO_TIMESCALE)
}

impl State {
    fn part_ticks(&self) -> u64 {
        self.part_video.iter().map(|s| u64::from(s.duration)).sum()
    }

    fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        self.segments.get(msn.checked_sub(first)? as usize)
    }

    fn open_segment(&mut self, starts_ns: u64) {
        let generation = self.inits.back().map_or(0, |(g, _)| *g);
        let discontinuity = std::mem::take(&mut self.discontinuity_next);
        self.segments.push_back(Segment {
            msn: self.next_msn,
            generation,
            discontinuity,
            starts_ms: starts_ns / 1_000_000,
            parts: Vec::new(),
            complete: None,
        });
        self.next_msn += 1;
    }

    /// Ends the part being built (if it has video): returns whether one was added.
    fn close_part(&mut self) -> bool {
        if self.part_video.is_empty() {
            return false;
        }
        let Some(segment) = self.segments.back_mut().filter(|s| s.complete.is_none()) else { return false };
        let video = std::mem::take(&mut self.part_video);
        let audio = std::mem::take(&mut self.part_audio);
        self.fragment_sequence = self.fragment_sequence.wrapping_add(1);
        match fmp4::fragment(self.fragment_sequence, &video, &audio) {
            Ok(bytes) => {
                segment.parts.push(Part {
                    duration: ticks_to_seconds(video.iter().map(|s| u64::from(s.duration)).sum()),
                    independent: video[0].sync,
                    bytes,
                });
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "a Low-Latency HLS part could not be written");
                false
            }
        }
    }

    fn close_segment(&mut self) -> bool {
        let closed = self.close_part();
        let Some(segment) = self.segments.back_mut().filter(|s| s.complete.is_none()) else { return closed };
        if segment.parts.is_empty() {
            self.segments.pop_back();
            self.next_msn -= 1;
            return closed;
        }
        let mut joined = BytesMut::new();
        for part in &segment.parts {
            joined.extend_from_slice(&part.bytes);
        }
        segment.complete = Some(joined.freeze());
        // No segment may be longer than the target (§ 4.4.3.1): it grows, and never shrinks.
        self.target_seconds = self.target_seconds.max(segment.duration().round() as u32);
        while self.segments.len() > SEGMENTS_KEPT {
            if self.segments.pop_front().is_some_and(|gone| gone.discontinuity) {
                self.discontinuity_sequence += 1;
            }
        }
        if let Some(oldest) = self.segments.front().map(|s| s.generation) {
            self.inits.retain(|(g, _)| *g >= oldest);
        }
        true
    }

    /// Ends what is being built: the pending frame with the last known duration, its part and
    /// its segment.
    fn flush(&mut self) -> bool {
        if let Some(last) = self.pending.take() {
            self.part_video.push(Sample { duration: self.last_duration.max(1), ..last });
        }
        let closed = self.close_segment();
        self.part_video.clear();
        self.part_audio.clear();
        closed
    }

    /// The part the playlist's preload hint names.
    fn next_part(&self) -> Option<(u64, u32)> {
        let last = self.segments.back()?;
        Some(match last.complete {
            None => (last.msn, last.parts.len() as u32),
            Some(_) => (last.msn + 1, 0),
        })
    }

    fn holds(&self, msn: u64, part: Option<u32>) -> bool {
        let Some(last) = self.segments.back() else { return false };
        let newest_complete = if last.complete.is_some() { Some(last.msn) } else { last.msn.checked_sub(1) };
        match part {
            None => newest_complete.is_some_and(|m| m >= msn),
            Some(part) => {
                msn < last.msn || (msn == last.msn && (last.parts.len() as u32 > part || last.complete.is_some()))
            }
        }
    }

    fn render(&self) -> String {
        let target = PART_TARGET.as_secs_f64();
        let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:6\n");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", self.target_seconds);
        // Players start three parts from the live edge (the RFC's minimum is two).
        let _ = writeln!(out, "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}", 3.0 * target);
        let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={target:.3}");
        let open = usize::from(self.segments.back().is_some_and(|s| s.complete.is_none()));
        let listed = self.segments.len().saturating_sub(SEGMENTS_LISTED + open);
        let mut shown = self.segments.iter().skip(listed).peekable();
        let first = shown.peek().map_or(self.next_msn, |s| s.msn);
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first}");
        let discontinuities_gone = self.segments.iter().take(listed).filter(|s| s.discontinuity).count() as u64;
        if self.discontinuity_sequence + discontinuities_gone > 0 {
            let _ =
                writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", self.discontinuity_sequence + discontinuities_gone);
        }
        let with_parts_from = self.segments.len().saturating_sub(SEGMENTS_WITH_PARTS);
        let mut map = None;
        for (index, segment) in self.segments.iter().enumerate().skip(listed) {
            if segment.parts.is_empty() {
                continue;
            }
            if segment.discontinuity {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if map != Some(segment.generation) {
                map = Some(segment.generation);
                let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}\"", Resource::Init(segment.generation).name());
            }
            let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_ms(segment.starts_ms));
            if index >= with_parts_from {
                for (i, part) in segment.parts.iter().enumerate() {
                    let _ = write!(
                        out,
                        "#EXT-X-PART:DURATION={:.3},URI=\"{}\"",
                        part.duration,
                        Resource::Part(segment.msn, i as u32).name()
                    );
                    out.push_str(if part.independent { ",INDEPENDENT=YES\n" } else { "\n" });
                }
            }
            if segment.complete.is_some() {
                let _ = writeln!(out, "#EXTINF:{:.3},\n{}", segment.duration(), Resource::Segment(segment.msn).name());
            }
        }
        if let Some((msn, part)) = self.next_part() {
            let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"", Resource::Part(msn, part).name());
        }
        out
    }
}

fn rfc3339_ms(unix_ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use mp4_atom::{Decode, Moof};

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11];
    const PPS: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];
    const FRAME_NS: u64 = 33_333_333;
    /// 2026-11-28T00:00:00Z: the pipeline hands over wall-clock times.
    const START_NS: u64 = 1_795_824_000_000_000_000;

    fn annex_b(keyframe: bool) -> Bytes {
        let mut out = Vec::new();
        if keyframe {
            for set in [SPS, PPS] {
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(set);
            }
        }
        out.extend_from_slice(&[0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }, 0x88, 0x84]);
        out.into()
    }

    /// Frame `n` of a 30 fps stream with a keyframe every 30 frames, late by up to 3 ms.
    fn frame(n: u64) -> VideoFrame {
        let at = START_NS + n * FRAME_NS + (n * 7919 % 4) * 1_000_000;
        VideoFrame {
            decode_ns: at,
            presentation_ns: at,
            keyframe: n % 30 == 0,
            annex_b: annex_b(n % 30 == 0),
            width: 640,
            height: 360,
        }
    }

    /// Pushes frames `from..to` with the AAC frames (1024 samples at 48 kHz) captured meanwhile.
    fn feed(hls: &LowLatencyHls, from: u64, to: u64) {
        const AAC_NS: u64 = 1024 * 1_000_000_000 / 48_000;
        for n in from..to {
            hls.push_video(frame(n));
            let captured_since_last_frame = (START_NS + n.saturating_sub(1) * FRAME_NS).div_ceil(AAC_NS)
                ..(START_NS + n * FRAME_NS).div_ceil(AAC_NS);
            for a in captured_since_last_frame.filter(|_| n > 0) {
                hls.push_audio(AudioFrame {
                    presentation_ns: a * AAC_NS,
                    duration_ns: AAC_NS,
                    data: Bytes::from_static(b"aac"),
                });
            }
        }
    }

    fn with_audio() -> LowLatencyHls {
        let hls = LowLatencyHls::default();
        hls.new_encoder(Some(AudioFormat::from_config(&[0x11, 0x90], 48_000, 2).unwrap()));
        hls
    }

    /// `(duration, independent)` of each `EXT-X-PART`, and the preload hint, of a playlist.
    fn parts(playlist: &str) -> Vec<(String, f64, bool)> {
        playlist
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-PART:"))
            .map(|attrs| {
                let duration = attrs.strip_prefix("DURATION=").unwrap().split(',').next().unwrap().parse().unwrap();
                let uri = attrs.split("URI=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
                (uri, duration, attrs.ends_with("INDEPENDENT=YES"))
            })
            .collect()
    }

    fn hint(playlist: &str) -> String {
        let line = playlist.lines().find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=")).unwrap();
        line.trim_matches('"').to_owned()
    }

    #[test]
    fn parts_keep_to_the_target_and_segments_start_independent() {
        let hls = with_audio();
        feed(&hls, 0, 30 * 8 + 10);
        let playlist = hls.playlist().unwrap();
        let target = PART_TARGET.as_secs_f64();
        let listed = parts(&playlist);
        assert!(listed.len() >= 10, "{playlist}");
        for (i, (uri, duration, independent)) in listed.iter().enumerate() {
            assert!(*duration <= target, "{uri} lasts {duration} s: {playlist}");
            let Some(Resource::Part(_, index)) = Resource::parse(uri) else { panic!("{uri}") };
            assert_eq!(*independent, index == 0, "{uri}: segments start at keyframes, and only they");
            let last_of_segment = listed.get(i + 1).is_none_or(|(next, _, _)| next.ends_with(".0.m4s"));
            if !independent && !last_of_segment {
                assert!(*duration >= 0.85 * target, "{uri} lasts {duration} s, under 85 % of the target");
            }
            // An independent part's first video sample is a sync sample.
            let bytes = hls.file(Resource::parse(uri).unwrap()).unwrap();
            let moof = Moof::decode(&mut &bytes[..]).unwrap();
            assert_eq!(moof.traf[0].trun[0].entries[0].flags == Some(SYNC_FLAGS), *independent, "{uri}");
        }
        assert!(playlist.contains("#EXT-X-TARGETDURATION:1\n"), "{playlist}");
        assert!(playlist.contains("#EXTINF:1.0"), "one-second GOPs make one-second segments: {playlist}");
        assert!(playlist.contains("#EXT-X-PROGRAM-DATE-TIME:2026-11-28T00:00:0"), "{playlist}");
    }

    const SYNC_FLAGS: u32 = 0x0200_0000;

    #[test]
    fn the_preload_hint_names_the_part_after_the_last_listed() {
        let hls = with_audio();
        for n in 0..100 {
            feed(&hls, n, n + 1);
            let Some(playlist) = hls.playlist() else { continue };
            let (Some((last, _, _)), hint) = (parts(&playlist).pop(), hint(&playlist)) else { continue };
            let (Some(Resource::Part(m, p)), Some(Resource::Part(hm, hp))) =
                (Resource::parse(&last), Resource::parse(&hint))
            else {
                panic!("{playlist}")
            };
            assert!((hm, hp) == (m, p + 1) || (hm, hp) == (m + 1, 0), "hint {hint} after {last}: {playlist}");
            assert!(hls.file(Resource::Part(hm, hp)).is_none(), "the hinted part does not exist yet");
        }
    }

    #[test]
    fn a_segment_is_its_parts_joined_with_video_and_sound_in_each() {
        let hls = with_audio();
        feed(&hls, 0, 65);
        let segment = hls.file(Resource::Segment(0)).unwrap();
        let parts: Vec<Bytes> = (0..).map_while(|p| hls.file(Resource::Part(0, p))).collect();
        assert_eq!(parts.len(), 5, "five parts of 200 ms");
        assert_eq!(segment, parts.concat());
        for part in parts {
            let moof = Moof::decode(&mut &part[..]).unwrap();
            let tracks: Vec<u32> = moof.traf.iter().map(|t| t.tfhd.track_id).collect();
            assert_eq!(tracks, [fmp4::VIDEO_TRACK, fmp4::AUDIO_TRACK]);
        }
        let init = hls.file(Resource::Init(0)).unwrap();
        let mut init = &init[..];
        mp4_atom::Ftyp::decode(&mut init).unwrap();
        assert_eq!(mp4_atom::Moov::decode(&mut init).unwrap().trak.len(), 2);
    }

    #[test]
    fn each_track_runs_on_from_part_to_part_without_gaps() {
        let hls = with_audio();
        feed(&hls, 0, 30 * 4 + 1);
        let mut ends = [None, None];
        for msn in 0..4 {
            for (index, part) in (0..).map_while(|p| hls.file(Resource::Part(msn, p))).enumerate() {
                for traf in Moof::decode(&mut &part[..]).unwrap().traf {
                    let start = traf.tfdt.unwrap().base_media_decode_time;
                    let track = traf.tfhd.track_id as usize - 1;
                    if let Some(end) = ends[track] {
                        assert_eq!(start, end, "track {} of part {msn}.{index} starts where the last ended", track + 1);
                    }
                    let durations: u64 = traf.trun[0].entries.iter().map(|e| u64::from(e.duration.unwrap())).sum();
                    ends[track] = Some(start + durations);
                }
            }
        }
        assert!(ends.iter().all(Option::is_some), "video and sound");
    }

    #[test]
    fn a_new_encoder_continues_the_sequence_after_a_discontinuity_with_its_own_map() {
        let hls = with_audio();
        feed(&hls, 0, 45);
        hls.new_encoder(None);
        feed(&hls, 60, 125);
        let playlist = hls.playlist().unwrap();
        assert!(playlist.contains("#EXT-X-MAP:URI=\"ll-init-0.mp4\"\n"), "{playlist}");
        let after = playlist.split("#EXT-X-DISCONTINUITY\n").nth(1).expect("a discontinuity");
        assert!(after.starts_with("#EXT-X-MAP:URI=\"ll-init-1.mp4\"\n"), "{playlist}");
        assert!(
            after.contains("ll-2.m4s"),
            "the half segment the old encoder left is 1, the new one's first 2: {playlist}"
        );
        let init = hls.file(Resource::Init(1)).unwrap();
        let mut init = &init[..];
        mp4_atom::Ftyp::decode(&mut init).unwrap();
        assert_eq!(mp4_atom::Moov::decode(&mut init).unwrap().trak.len(), 1, "no sound any more");
    }

    #[test]
    fn old_segments_leave_the_playlist_and_memory() {
        let hls = with_audio();
        feed(&hls, 0, 30 * 20 + 1);
        let playlist = hls.playlist().unwrap();
        assert!(playlist.contains("#EXT-X-MEDIA-SEQUENCE:14\n"), "six of twenty listed: {playlist}");
        assert_eq!(playlist.matches("#EXTINF").count(), SEGMENTS_LISTED);
        assert!(hls.file(Resource::Segment(8)).is_some(), "kept a while after it left");
        assert!(hls.file(Resource::Segment(7)).is_none());
        assert_eq!(parts(&playlist).first().map(|p| p.0.as_str()), Some("ll-18.0.m4s"), "parts of the newest only");
    }

    #[tokio::test]
    async fn blocking_reloads_answer_when_the_part_exists() {
        let hls = Arc::new(with_audio());
        feed(&hls, 0, 40);
        // Segment 1 holds frames 30-39: parts 0 (30-35) done, part 1 on its way.
        assert_eq!(hls.wait_for(1, Some(0), Duration::ZERO).await, Ok(()));
        assert_eq!(hls.wait_for(0, None, Duration::ZERO).await, Ok(()));
        assert_eq!(
            hls.wait_for(1, None, Duration::from_millis(10)).await,
            Err(Blocked::TimedOut(Duration::from_millis(10)))
        );
        assert_eq!(hls.wait_for(4, Some(0), Duration::ZERO).await, Err(Blocked::TooFarAhead { asked: 4, newest: 1 }));

        let waiting = {
            let hls = hls.clone();
            tokio::spawn(async move { hls.part(1, 1, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the hinted part is held until it exists");
        feed(&hls, 40, 50);
        let part = waiting.await.unwrap().expect("the part, once written");
        assert_eq!(Some(part), hls.file(Resource::Part(1, 1)));
        assert_eq!(hls.part(1, 9, Duration::from_secs(5)).await, Err(Blocked::Gone), "only the hinted part is awaited");
    }

    #[test]
    fn file_names() {
        for resource in [Resource::Playlist, Resource::Init(3), Resource::Segment(12), Resource::Part(12, 4)] {
            assert_eq!(Resource::parse(&resource.name()), Some(resource));
        }
        for name in ["ll-.m4s", "ll-1.x.m4s", "ll-init-.mp4", "index.m3u8", "ll-1.m4s.ts", "ll--1.m4s"] {
            assert_eq!(Resource::parse(name), None, "{name}");
        }
    }
}
