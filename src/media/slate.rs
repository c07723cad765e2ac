//! The "no signal" slate: a calm picture that keeps the encoder, viewers and HLS going while a
//! source is away. Dark grey, the stream's name, how long the signal has been lost, and the
//! latency strip, at the stream's size; drawn in I420 with an 8×8 bitmap font, no GStreamer.

use std::time::Duration;

use super::strip;
use crate::config::VideoSettings;

/// Background luma and the text's (limited range, like the rest of the picture).
const BACKGROUND_Y: u8 = 40;
const TEXT_Y: u8 = 200;
const NEUTRAL_CHROMA: u8 = 128;
/// Glyph cells across the picture for the largest line: sets the text scale.
const COLUMNS: u32 = 24;

pub struct Slate {
    width: usize,
    height: usize,
    name: String,
    /// The frame without its strip and elapsed-time line, redrawn only when the text changes.
    frame: Vec<u8>,
    shown_seconds: Option<u64>,
}

impl Slate {
    pub fn new(video: &VideoSettings, name: &str) -> Slate {
        let (width, height) = (video.width as usize, video.height as usize);
        let mut frame = vec![NEUTRAL_CHROMA; width * height * 3 / 2];
        frame[..width * height].fill(BACKGROUND_Y);
        let mut slate = Slate { width, height, name: name.to_owned(), frame, shown_seconds: None };
        slate.write_line(0, &slate.name.clone());
        slate.write_line(1, "NO SIGNAL");
        slate
    }

    /// The slate for a signal lost `lost_for` ago, with the strip stamped `unix_ms`: an I420
    /// frame of the stream's size.
    pub fn frame(&mut self, lost_for: Duration, unix_ms: u64) -> Vec<u8> {
        let seconds = lost_for.as_secs();
        if self.shown_seconds != Some(seconds) {
            self.write_line(2, &format!("lost {} ago", clock(seconds)));
            self.shown_seconds = Some(seconds);
        }
        let mut frame = self.frame.clone();
        let (luma, chroma) = frame.split_at_mut(self.width * self.height);
        let (u, v) = chroma.split_at_mut(self.width * self.height / 4);
        let half = self.width / 2;
        strip::draw_i420(
            strip::Plane { data: luma, stride: self.width },
            strip::Plane { data: u, stride: half },
            strip::Plane { data: v, stride: half },
            self.width as u32,
            unix_ms,
        );
        frame
    }

    /// Writes `text` centred on line `line` (0, 1, 2 from the middle up), clearing the line first.
    fn write_line(&mut self, line: usize, text: &str) {
        let scale = (self.width / (COLUMNS as usize * 8)).max(1);
        let glyph = 8 * scale;
        let line_height = glyph * 2;
        let top = (self.height / 2).saturating_sub(line_height * 3 / 2) + line * line_height;
        if top + glyph > self.height {
            return;
        }
        for row in &mut self.frame[top * self.width..(top + glyph) * self.width].chunks_mut(self.width) {
            row.fill(BACKGROUND_Y);
        }
        let chars: Vec<char> = text.chars().filter(char::is_ascii).take(self.width / glyph).collect();
        let left = (self.width - chars.len() * glyph) / 2;
        for (i, c) in chars.iter().enumerate() {
            let bitmap = font8x8::legacy::BASIC_LEGACY[*c as usize];
            for (gy, bits) in bitmap.iter().enumerate() {
                for gx in 0..8 {
                    if bits & (1 << gx) == 0 {
                        continue;
                    }
                    for dy in 0..scale {
                        let y = top + gy * scale + dy;
                        let x = left + i * glyph + gx * scale;
                        self.frame[y * self.width + x..y * self.width + x + scale].fill(TEXT_Y);
                    }
                }
            }
        }
    }
}

/// `1:05:03`, `4:07`, `12 s`.
fn clock(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds} s"),
        60..=3599 => format!("{}:{:02}", seconds / 60, seconds % 60),
        _ => format!("{}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slate_carries_the_strip_and_text() {
        let video = VideoSettings { width: 640, height: 360, fps: 30, bitrate_kbps: 1000 };
        let mut slate = Slate::new(&video, "door");
        let frame = slate.frame(Duration::from_secs(75), 1_795_000_000_123);
        assert_eq!(frame.len(), 640 * 360 * 3 / 2);
        assert_eq!(
            strip::decode_luma(&frame[..640 * 360], 640, 640),
            Some(1_795_000_000_123 % (1 << 40)),
            "40-bit strip"
        );
        let text_pixels = frame[640 * 40..640 * 360].iter().filter(|y| **y == TEXT_Y).count();
        assert!(text_pixels > 500, "the text is drawn ({text_pixels} pixels)");
        let later = slate.frame(Duration::from_secs(76), 1_795_000_001_123);
        assert_ne!(frame[640 * 40..640 * 360], later[640 * 40..640 * 360], "the elapsed time moves on");
        assert_eq!(clock(5), "5 s");
        assert_eq!(clock(75), "1:15");
        assert_eq!(clock(3725), "1:02:05");
    }
}
