//! Low-Latency HLS against the RFC's rules (RFC 8216bis § 4.4.3.7–4.4.5.2, § 6.2.5.2), read
//! over HTTP from a running gateway, and played by independent readers (GStreamer's qtdemux,
//! ffprobe).

mod common;

use std::time::{Duration, Instant};

use common::decode::{decode_video, Decoded};
use common::{client, Gateway};

const START: Duration = Duration::from_secs(20);

/// The value of attribute `name` in a tag's attribute list.
fn attribute<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let value = &line[at..];
    Some(match value.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => value.split(',').next()?,
    })
}

fn seconds(line: &str, tag: &str, name: &str) -> f64 {
    let line = line.lines().find(|l| l.starts_with(tag)).unwrap_or_else(|| panic!("no {tag} in {line}"));
    attribute(line, name).unwrap().parse().unwrap()
}

async fn playlist_with_segments(gateway: &Gateway, segments: usize) -> String {
    let started = Instant::now();
    loop {
        let response = client().get(gateway.url("/hls/live/ll.m3u8")).send().await.unwrap();
        if response.status() == 200 {
            assert_eq!(response.headers()["content-type"], "application/vnd.apple.mpegurl");
            assert_eq!(response.headers()["cache-control"], "no-cache", "it changes every part");
            let text = response.text().await.unwrap();
            if text.matches("#EXTINF").count() >= segments {
                return text;
            }
        }
        assert!(started.elapsed() < START, "no Low-Latency playlist with {segments} segments");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(msn, part)` of a part's URI (`ll-M.P.m4s`).
fn part_of(uri: &str) -> (u64, u32) {
    let (msn, part) = uri.strip_prefix("ll-").unwrap().strip_suffix(".m4s").unwrap().split_once('.').unwrap();
    (msn.parse().unwrap(), part.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_playlist_keeps_the_rfcs_rules() {
    let gateway = Gateway::start(&[]);
    let text = playlist_with_segments(&gateway, 3).await;
    eprintln!("{text}");
    let part_target = seconds(&text, "#EXT-X-PART-INF:", "PART-TARGET");
    assert!((0.15..=0.3).contains(&part_target), "parts of about 200 ms: {part_target}");
    let control = text.lines().find(|l| l.starts_with("#EXT-X-SERVER-CONTROL:")).unwrap();
    assert_eq!(attribute(control, "CAN-BLOCK-RELOAD"), Some("YES"));
    assert!(seconds(&text, "#EXT-X-SERVER-CONTROL:", "PART-HOLD-BACK") >= 2.0 * part_target, "§ 4.4.3.8");
    assert!(text.contains("#EXT-X-MAP:URI=\"ll-init-"), "fMP4 needs its initialisation segment");
    assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:"));

    let parts: Vec<&str> = text.lines().filter(|l| l.starts_with("#EXT-X-PART:")).collect();
    assert!(parts.len() >= 5, "{text}");
    let (mut bound, mut short) = (0, Vec::new());
    for (i, part) in parts.iter().enumerate() {
        let duration: f64 = attribute(part, "DURATION").unwrap().parse().unwrap();
        let (msn, index) = part_of(attribute(part, "URI").unwrap());
        assert!(duration <= part_target, "§ 4.4.4.9: {part} is longer than the part target");
        let independent = attribute(part, "INDEPENDENT") == Some("YES");
        assert_eq!(independent, index == 0, "segments start with a keyframe: {part}");
        let last_of_segment = parts.get(i + 1).is_none_or(|next| part_of(attribute(next, "URI").unwrap()).0 != msn);
        if !independent && !last_of_segment {
            bound += 1;
            if duration < 0.85 * part_target {
                short.push(*part);
            }
        }
    }
    // Parts are cut between frames stamped on arrival: a frame late by more than the slack
    // (20 ms) on a loaded machine makes its part end a frame early.
    eprintln!("{} of {bound} parts under 85 % of the target: {short:?}", short.len());
    assert!(short.len() * 5 <= bound, "§ 4.4.4.9: parts under 85 % of the part target: {short:?}\n{text}");
    // The hint names the part after the last one listed.
    let (msn, index) = part_of(attribute(parts.last().unwrap(), "URI").unwrap());
    let hint = text.lines().find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:")).expect("a preload hint");
    assert_eq!(attribute(hint, "TYPE"), Some("PART"));
    let hinted = part_of(attribute(hint, "URI").unwrap());
    assert!(hinted == (msn, index + 1) || hinted == (msn + 1, 0), "{hint} after {msn}.{index}");

    // A blocking reload for the hinted part is answered once it exists, within the hold.
    let http = client();
    let asked = Instant::now();
    let blocked = http
        .get(gateway.url(&format!("/hls/live/ll.m3u8?_HLS_msn={}&_HLS_part={}", hinted.0, hinted.1)))
        .send()
        .await
        .unwrap();
    let waited = asked.elapsed();
    assert_eq!(blocked.status(), 200);
    let newer = blocked.text().await.unwrap();
    assert!(
        newer.contains(&format!("URI=\"ll-{}.{}.m4s\"", hinted.0, hinted.1))
            || hinted.1 > 0 && newer.contains(&format!("ll-{}.m4s\n", hinted.0)),
        "{newer}"
    );
    assert!(waited < Duration::from_secs(3), "held {waited:?}, beyond three target durations");
    eprintln!("blocking reload answered after {waited:?}");

    // The hinted part after that is held until it exists, and is a fragment.
    let next =
        part_of(attribute(newer.lines().find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:")).unwrap(), "URI").unwrap());
    let part = http.get(gateway.url(&format!("/hls/live/ll-{}.{}.m4s", next.0, next.1))).send().await.unwrap();
    assert_eq!(part.status(), 200);
    assert_eq!(part.headers()["content-type"], "video/mp4");
    assert_eq!(&part.bytes().await.unwrap()[4..8], b"moof");

    let too_far = http.get(gateway.url(&format!("/hls/live/ll.m3u8?_HLS_msn={}", next.0 + 3))).send().await.unwrap();
    assert_eq!(too_far.status(), 400, "§ 6.2.5.2: more than two segments ahead");
    assert!(too_far.text().await.unwrap().contains("more than two segments"));
    let no_msn = http.get(gateway.url("/hls/live/ll.m3u8?_HLS_part=1")).send().await.unwrap();
    assert_eq!(no_msn.status(), 400);
    assert!(no_msn.text().await.unwrap().contains("_HLS_part needs _HLS_msn"));
    let gone = http.get(gateway.url("/hls/live/ll-99999.0.m4s")).send().await.unwrap();
    assert_eq!(gone.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn segments_decode_with_strips_and_sound_and_ffprobe_reads_the_playlist() {
    let gateway = Gateway::start(&[]);
    let text = playlist_with_segments(&gateway, 2).await;
    let http = client();
    let map = text.split("#EXT-X-MAP:URI=\"").nth(1).unwrap().split('"').next().unwrap();
    let segment = text.lines().rfind(|l| l.ends_with(".m4s")).unwrap();
    let mut file =
        http.get(gateway.url(&format!("/hls/live/{map}"))).send().await.unwrap().bytes().await.unwrap().to_vec();
    file.extend_from_slice(
        &http.get(gateway.url(&format!("/hls/live/{segment}"))).send().await.unwrap().bytes().await.unwrap(),
    );

    let Decoded { frames, with_strip, size } = decode_video("qtdemux", &file);
    eprintln!("{segment}: {frames} frames at {size:?}, {with_strip} strips decoded");
    assert_eq!(size, (1280, 720));
    assert!(frames >= 25, "a one-second segment at 30 fps, got {frames} frames");
    assert_eq!(with_strip, frames, "every frame carries a readable, recent strip");

    let probe = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-tls_verify", "0", "-show_entries", "stream=codec_name,width,height,sample_rate"])
        .args(["-of", "compact", &gateway.url("/hls/live/ll.m3u8")])
        .output()
        .await
        .expect("ffprobe is installed (scripts/install-deps test)");
    let streams = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    assert!(streams.contains("codec_name=h264|width=1280|height=720"), "{streams}");
    assert!(streams.contains("codec_name=aac|sample_rate=48000"), "the sound is in the same parts: {streams}");
}
