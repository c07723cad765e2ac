//! The stream's one HLS playlist, kept across encoder restarts. hlssink2 writes the segments
//! and a playlist of its own that starts again at sequence 0 whenever its pipeline is rebuilt;
//! players would stop on that (RFC 8216 § 6.2.2: a live playlist's media sequence never goes
//! down). So hlssink2's playlist stays private, and after each segment its newest entries are
//! appended here: one media sequence for the life of the stream, `EXT-X-DISCONTINUITY` where a
//! new encoder starts new timestamps, old segment files deleted here when they leave.

use std::collections::VecDeque;
use std::fmt::Write;

/// A segment as a playlist lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub uri: String,
    pub seconds: f64,
    /// The first segment of a new encoder: its timestamps do not follow the one before.
    pub discontinuity: bool,
}

#[derive(Debug)]
pub struct Playlist {
    /// Segments listed.
    length: usize,
    /// Segment files kept on disk (listed or not), so a player that just read the playlist still
    /// finds what it lists.
    files_kept: usize,
    target_seconds: u32,
    /// Sequence number of the first listed segment.
    media_sequence: u64,
    /// Discontinuities that have left the playlist (`EXT-X-DISCONTINUITY-SEQUENCE`).
    discontinuity_sequence: u64,
    listed: VecDeque<Segment>,
    /// Every file on disk, oldest first.
    files: VecDeque<String>,
    /// The next segment starts after a new encoder.
    discontinuity_next: bool,
}

impl Playlist {
    pub fn new(length: usize, files_kept: usize, target_seconds: u32) -> Playlist {
        Playlist {
            length,
            files_kept: files_kept.max(length),
            target_seconds,
            media_sequence: 0,
            discontinuity_sequence: 0,
            listed: VecDeque::new(),
            files: VecDeque::new(),
            discontinuity_next: false,
        }
    }

    /// A new encoder has started: its segments' timestamps start afresh.
    pub fn new_encoder(&mut self) {
        if !self.listed.is_empty() {
            self.discontinuity_next = true;
        }
    }

    /// Takes the segments of hlssink2's own playlist that are newer than the last one listed;
    /// returns the segment files that may now be deleted.
    pub fn update_from(&mut self, private_playlist: &str) -> Vec<String> {
        let entries = entries(private_playlist);
        let last = self.listed.back().map(|s| s.uri.as_str());
        // After the last one we listed; all of them if it is not there (a new encoder's list).
        let start = last.and_then(|last| entries.iter().position(|(uri, _)| *uri == last)).map_or(0, |i| i + 1);
        let mut gone = Vec::new();
        for (uri, seconds) in entries[start..].iter() {
            gone.extend(self.push(uri, *seconds));
        }
        gone
    }

    fn push(&mut self, uri: &str, seconds: f64) -> Option<String> {
        let discontinuity = std::mem::take(&mut self.discontinuity_next);
        // A segment longer than the target would break the rule that none is (§ 4.3.3.1);
        // the target grows, and never shrinks.
        self.target_seconds = self.target_seconds.max(seconds.round() as u32);
        self.listed.push_back(Segment { uri: uri.to_owned(), seconds, discontinuity });
        self.files.push_back(uri.to_owned());
        if self.listed.len() > self.length {
            let left = self.listed.pop_front().expect("longer than its length");
            self.media_sequence += 1;
            if left.discontinuity {
                self.discontinuity_sequence += 1;
            }
        }
        (self.files.len() > self.files_kept).then(|| self.files.pop_front()).flatten()
    }

    pub fn render(&self) -> String {
        let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", self.target_seconds);
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", self.media_sequence);
        if self.discontinuity_sequence > 0 {
            let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", self.discontinuity_sequence);
        }
        for segment in &self.listed {
            if segment.discontinuity {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            let _ = writeln!(out, "#EXTINF:{:.3},\n{}", segment.seconds, segment.uri);
        }
        out
    }
}

/// The `(uri, seconds)` of each segment a playlist lists.
fn entries(playlist: &str) -> Vec<(&str, f64)> {
    let mut out = Vec::new();
    let mut seconds = None;
    for line in playlist.lines().map(str::trim) {
        if let Some(info) = line.strip_prefix("#EXTINF:") {
            seconds = info.split(',').next().and_then(|s| s.parse::<f64>().ok());
        } else if !line.is_empty() && !line.starts_with('#') {
            if let Some(seconds) = seconds.take() {
                out.push((line, seconds));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What hlssink2 writes, listing `names`.
    fn hlssink2(names: &[&str]) -> String {
        let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:1\n\n");
        for name in names {
            out.push_str(&format!("#EXTINF:0.96666669845581055,\n{name}\n"));
        }
        out
    }

    fn media_sequence(playlist: &str) -> u64 {
        playlist.lines().find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")).unwrap().parse().unwrap()
    }

    fn uris(playlist: &str) -> Vec<&str> {
        playlist.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect()
    }

    #[test]
    fn appends_only_what_is_new_and_slides_its_window() {
        let mut p = Playlist::new(3, 4, 1);
        assert!(p.update_from(&hlssink2(&["a0", "a1"])).is_empty());
        assert!(p.update_from(&hlssink2(&["a0", "a1"])).is_empty(), "nothing new");
        assert!(p.update_from(&hlssink2(&["a0", "a1", "a2", "a3"])).is_empty());
        let text = p.render();
        assert_eq!(uris(&text), ["a1", "a2", "a3"]);
        assert_eq!(media_sequence(&text), 1);
        assert!(text.contains("#EXTINF:0.967,\na1\n"), "{text}");
        assert_eq!(p.update_from(&hlssink2(&["a2", "a3", "a4"])), ["a0"], "five files, four kept");
    }

    #[test]
    fn a_new_encoder_continues_the_sequence_after_a_discontinuity() {
        let mut p = Playlist::new(3, 3, 1);
        p.update_from(&hlssink2(&["a0", "a1", "a2"]));
        p.new_encoder();
        // The new hlssink2 starts its own list afresh.
        p.update_from(&hlssink2(&["b0"]));
        let text = p.render();
        assert_eq!(uris(&text), ["a1", "a2", "b0"]);
        assert_eq!(media_sequence(&text), 1, "goes on, never back to 0");
        assert!(text.contains("a2\n#EXT-X-DISCONTINUITY\n#EXTINF:0.967,\nb0\n"), "{text}");
        assert!(!text.contains("DISCONTINUITY-SEQUENCE"));

        p.update_from(&hlssink2(&["b0", "b1", "b2", "b3"]));
        let text = p.render();
        assert_eq!(uris(&text), ["b1", "b2", "b3"]);
        assert_eq!(media_sequence(&text), 4);
        assert!(!text.contains("#EXT-X-DISCONTINUITY\n"), "the discontinuity has left: {text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{text}");
    }

    #[test]
    fn the_first_encoder_is_no_discontinuity() {
        let mut p = Playlist::new(3, 3, 1);
        p.new_encoder();
        p.update_from(&hlssink2(&["a0"]));
        assert!(!p.render().contains("DISCONTINUITY"));
    }

    #[test]
    fn a_long_segment_raises_the_target_duration_for_good() {
        let mut p = Playlist::new(2, 2, 1);
        p.update_from("#EXTINF:1.6,\nlong\n");
        p.update_from("#EXTINF:1.6,\nlong\n#EXTINF:1,\nx\n#EXTINF:1,\ny\n#EXTINF:1,\nz\n");
        assert!(p.render().contains("#EXT-X-TARGETDURATION:2\n"));
    }
}
