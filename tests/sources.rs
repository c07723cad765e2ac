//! Sources other than the test pattern, against real producers: a looping file, an RTSP camera
//! that goes away and comes back, and cameras whose H.264 is forwarded untouched (or not).

mod common;

use std::process::Command;
use std::time::Duration;

use common::peer::{Offer, Viewer};
use common::{free_port, Gateway, ReadyChild};
use serde_json::Value;

const START: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_loops_and_keeps_playing_with_the_strip_drawn_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    let made = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            "num-buffers=40",
            "pattern=ball",
            "!",
            "video/x-raw,width=640,height=360,framerate=20/1",
        ])
        .args(["!", "x264enc", "!", "mp4mux", "!", "filesink"])
        .arg(format!("location={}", clip.display()))
        .status()
        .unwrap();
    assert!(made.success(), "gst-launch made the clip");

    let source = format!("clip=file:{}", clip.display());
    let gateway = Gateway::start(&["--stream", &source, "--latency-strip"]);
    gateway.wait_for_state("clip", "playing", START).await;
    let viewer = Viewer::new();
    viewer.connect_whep(&gateway.base, "clip").await;
    // The clip lasts 2 s: 120 frames span several loops.
    let seen = viewer.wait_for_frames(120, Duration::from_secs(20)).await;
    assert_eq!((seen.width, seen.height), (1280, 720), "scaled to the configured size");
    assert!(gateway.log_text().contains("file ended; looping"));
    assert_eq!(gateway.stream("clip").await["state"], "playing");
}

struct RtspCamera(ReadyChild);

impl RtspCamera {
    fn start(port: u16) -> RtspCamera {
        RtspCamera::with(port, &[])
    }

    /// A camera as `tests/support/rtsp_server.py` takes its options (`--profile high`, …).
    fn with(port: u16, options: &[&str]) -> RtspCamera {
        RtspCamera(ReadyChild::python("rtsp_server.py", port, options))
    }
}

impl RtspCamera {
    /// Stops (or resumes) sending video while keeping the RTSP session up.
    fn toggle_stall(&self) {
        let _ = Command::new("kill").args(["-USR1", &self.0 .0.id().to_string()]).status();
    }
}

/// Camera frames carry no strip (no --latency-strip); the slate's do.
fn camera_frames(viewer: &Viewer) -> u64 {
    let seen = viewer.seen();
    seen.frames - seen.frames_with_strip
}

/// Waits until the viewer decoded `frames` frames of the camera (without a strip), or panics.
async fn wait_for_camera_frames(viewer: &Viewer, frames: u64, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while camera_frames(viewer) < frames {
        assert!(std::time::Instant::now() < deadline, "camera frames did not arrive: {:?}", viewer.seen());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The media sequence number of an HLS playlist.
fn media_sequence(playlist: &str) -> u64 {
    playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no media sequence in {playlist}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_camera_away_for_10_s_is_a_slate_and_comes_back_by_itself() {
    let port = free_port();
    let camera = RtspCamera::start(port);
    let source = format!("cam=rtsp://127.0.0.1:{port}/cam");
    let gateway = Gateway::start(&["--stream", "live=test", "--stream", &source, "--width", "640", "--height", "360"]);
    gateway.wait_for_state("cam", "playing", START).await;
    let viewer = Viewer::new();
    viewer.connect_whep(&gateway.base, "cam").await;
    wait_for_camera_frames(&viewer, 30, Duration::from_secs(20)).await;

    // HLS: the media sequence only grows, whatever happens to the camera.
    let hls = common::client();
    let playlist_url = gateway.url("/hls/cam/index.m3u8");
    let read_sequence =
        || async { media_sequence(&hls.get(&playlist_url).send().await.unwrap().text().await.unwrap()) };
    let listed = std::time::Instant::now();
    while !hls.get(&playlist_url).send().await.unwrap().text().await.unwrap().contains(".ts") {
        assert!(listed.elapsed() < Duration::from_secs(5), "the playlist lists no segment");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sequences = vec![read_sequence().await];

    // A slow start may already have shown the slate once: count transitions from here.
    let lines_before = gateway.logs.lock().unwrap().len();
    drop(camera);
    let lost_at = std::time::Instant::now();
    let lost = gateway.wait_for_state("cam", "no-signal", Duration::from_secs(5)).await;
    eprintln!("camera gone, {} ms later: {lost}", lost_at.elapsed().as_millis());
    assert!(lost["error"].as_str().is_some_and(|e| !e.is_empty()), "the reason is shown: {lost}");
    assert!(lost["since"].as_u64().is_some());
    assert_eq!(gateway.stream("live").await["state"], "playing", "other streams keep playing");
    assert_eq!(common::client().get(gateway.url("/readyz")).send().await.unwrap().status(), 503);

    // Ten seconds away: the viewer keeps decoding (the slate, which carries the strip).
    let mut last = viewer.seen().frames;
    while lost_at.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let now = viewer.seen().frames;
        assert!(now > last + 15, "frames stalled during the outage: {last} → {now}");
        last = now;
        sequences.push(read_sequence().await);
    }
    assert!(viewer.seen().frames_with_strip > 200, "slate frames were shown: {:?}", viewer.seen());

    let before = camera_frames(&viewer);
    let _camera = RtspCamera::start(port);
    let back_at = std::time::Instant::now();
    while camera_frames(&viewer) <= before + 5 {
        assert!(
            back_at.elapsed() < Duration::from_secs(5),
            "the camera's picture did not come back: {:?}",
            viewer.seen()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = back_at.elapsed();
    eprintln!("camera picture back on the viewer {} ms after the camera was reachable", back.as_millis());
    assert!(back <= Duration::from_secs(2), "back after {back:?}");
    gateway.wait_for_state("cam", "playing", Duration::from_secs(2)).await;
    sequences.push(read_sequence().await);
    eprintln!("HLS media sequence over the outage: {sequences:?}");
    assert!(sequences.windows(2).all(|w| w[1] >= w[0]), "the media sequence never goes down: {sequences:?}");
    assert!(sequences.last() > sequences.first(), "segments kept coming: {sequences:?}");
    let logs = gateway.logs.lock().unwrap()[lines_before..].to_vec();
    let transitions: Vec<&String> =
        logs.iter().filter(|l| l.contains("signal lost") || l.contains("signal back")).collect();
    assert_eq!(transitions.len(), 2, "each transition is logged once: {transitions:#?}");
    assert!(transitions[0].contains("signal lost") && transitions[1].contains("signal back"), "{transitions:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_camera_is_replaced_by_the_slate_within_the_timeout() {
    let port = free_port();
    let camera = RtspCamera::start(port);
    let source = format!("cam=rtsp://127.0.0.1:{port}/cam");
    let gateway = Gateway::start(&["--stream", &source, "--width", "640", "--height", "360", "--source-timeout", "2"]);
    gateway.wait_for_state("cam", "playing", START).await;
    camera.toggle_stall();
    let stalled_at = std::time::Instant::now();
    let lost = gateway.wait_for_state("cam", "no-signal", Duration::from_secs(6)).await;
    let after = stalled_at.elapsed();
    eprintln!("stall noticed after {} ms: {lost}", after.as_millis());
    assert!(after <= Duration::from_secs(3), "slate after {after:?}, more than the timeout + 1 s");
    assert!(lost["error"].as_str().unwrap().contains("no frame for 2 s"), "{lost}");
    camera.toggle_stall();
    gateway.wait_for_state("cam", "playing", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encoder_restart_continues_the_one_hls_playlist_after_a_discontinuity() {
    let hls_root = tempfile::tempdir().unwrap();
    let gateway =
        Gateway::start(&["--hls-dir", hls_root.path().to_str().unwrap(), "--width", "640", "--height", "360"]);
    gateway.wait_for_state("live", "playing", START).await;
    let hls = common::client();
    let playlist_url = gateway.url("/hls/live/index.m3u8");
    let playlist = || async { hls.get(&playlist_url).send().await.unwrap().text().await.unwrap() };
    let listed = std::time::Instant::now();
    while playlist().await.matches(".ts").count() < 3 {
        assert!(listed.elapsed() < Duration::from_secs(10), "the playlist never listed 3 segments");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = playlist().await;

    // Its folder gone, hlssink2 cannot open its next segment: the encoder fails and is rebuilt.
    std::fs::remove_dir_all(hls_root.path().join("live")).unwrap();
    let mut sequences = vec![media_sequence(&before)];
    let after = loop {
        let text = playlist().await;
        if text.starts_with("#EXTM3U") {
            sequences.push(media_sequence(&text));
            // Two segments of the new encoder, after the last one of the old.
            if text.split("#EXT-X-DISCONTINUITY\n").nth(1).is_some_and(|new| new.matches(".ts").count() >= 2) {
                break text;
            }
        }
        assert!(
            listed.elapsed() < Duration::from_secs(40),
            "no discontinuity after the restart; last playlist:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("before:\n{before}\nafter the encoder restart:\n{after}\nmedia sequences seen: {sequences:?}");
    assert!(gateway.log_text().contains("encoder stopped; restarting"), "the encoder was restarted");
    assert!(sequences.windows(2).all(|w| w[0] <= w[1]), "the media sequence went down: {sequences:?}");
    let old_segment = before.lines().rfind(|l| l.ends_with(".ts")).unwrap();
    let (old_part, new_part) = after.split_once("#EXT-X-DISCONTINUITY\n").unwrap();
    assert!(old_part.contains(old_segment) || media_sequence(&after) > media_sequence(&before), "{after}");
    let new_segment = new_part.lines().find(|l| l.ends_with(".ts")).unwrap();
    assert_ne!(
        new_segment.rsplit_once('-').unwrap().0,
        old_segment.rsplit_once('-').unwrap().0,
        "new names, never reused"
    );
    assert_eq!(gateway.stream("live").await["state"], "playing");
}

/// Waits until the stream says whether its video is transcoded, as `transcoded`.
async fn wait_for_transcoded(gateway: &Gateway, stream: &str, transcoded: bool) -> Value {
    let deadline = std::time::Instant::now() + START;
    loop {
        let info = gateway.stream(stream).await;
        if info["state"] == "playing" && info["video"]["transcoded"] == transcoded {
            return info;
        }
        assert!(std::time::Instant::now() < deadline, "{stream} never had transcoded={transcoded}: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const DECODERS: [&str; 3] = ["avdec_h264", "avdec_h265", "decodebin"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_high_profile_camera_is_forwarded_with_its_sound_and_never_decoded() {
    let port = free_port();
    let _camera = RtspCamera::with(port, &["--profile", "high", "--audio", "aac", "--click", "--strip"]);
    let source = format!("cam=rtsp://127.0.0.1:{port}/cam");
    let gateway = Gateway::start(&["--stream", &source]);
    let info = wait_for_transcoded(&gateway, "cam", false).await;
    assert_eq!(info["video"]["profile"], "high", "{info}");
    assert_eq!(info["video"]["profile_level_id"].as_str().unwrap()[..4], *"6400", "{info}");
    assert_eq!(info["audio"]["webrtc"], "opus", "{info}");

    // What was built: no decoder for the video, and no encoder for it either.
    let capture = gateway.last_log("source streams found");
    let elements = capture["elements"].as_str().unwrap();
    assert!(elements.contains("rtph264depay") && elements.contains("h264parse"), "{elements}");
    assert!(!elements.contains("avdec_h264"), "the camera's video is never decoded: {elements}");
    assert!(elements.contains("avdec_aac"), "its sound is: {elements}");
    let encoding = gateway.last_log("encoding part started");
    let elements = encoding["elements"].as_str().unwrap();
    assert!(!elements.contains("x264enc") && !DECODERS.iter().any(|d| elements.contains(d)), "{elements}");

    // A browser-like viewer offering high profile decodes the camera's own strip, and its sound.
    let viewer = Viewer::offering(Offer { h264_profile_level_id: "64001f", audio: true });
    viewer.connect_whep(&gateway.base, "cam").await;
    let seen = viewer.wait_for_frames(60, Duration::from_secs(15)).await;
    assert_eq!((seen.width, seen.height), (640, 360), "the camera's own size");
    let seen = viewer.wait_for_sound(96_000, Duration::from_secs(10)).await;
    assert!(seen.loud_samples > 0, "the camera's clicks: {seen:?}");

    // One that only takes constrained baseline is told why, and pointed to HLS.
    let baseline = Viewer::new();
    let response = common::client()
        .post(gateway.url("/whep/cam"))
        .header("content-type", "application/sdp")
        .body(baseline.offer())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 406);
    let message = response.text().await.unwrap();
    assert!(message.contains("H.264 6400") && message.contains("HLS"), "{message}");

    // HLS: ffmpeg plays the forwarded video.
    let (log, frames) = common::ffmpeg_frames(&gateway.url("/hls/cam/index.m3u8"), 3).await;
    assert!(frames >= 60, "ffmpeg decoded {frames} frames: {log}");
    assert!(log.contains("High") && log.contains("aac"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transcode_always_decodes_and_encodes_even_a_forwardable_camera() {
    let port = free_port();
    let _camera = RtspCamera::with(port, &["--profile", "high"]);
    let source = format!("cam=rtsp://127.0.0.1:{port}/cam");
    let gateway = Gateway::start(&["--stream", &source, "--transcode", "always", "--width", "640", "--height", "360"]);
    let info = wait_for_transcoded(&gateway, "cam", true).await;
    assert_eq!(info["video"]["profile"], "constrained-baseline", "{info}");
    let capture = gateway.last_log("source streams found");
    assert!(capture["elements"].as_str().unwrap().contains("avdec_h264"), "{capture}");
    let viewer = Viewer::new();
    viewer.connect_whep(&gateway.base, "cam").await;
    wait_for_camera_frames(&viewer, 30, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_h265_camera_is_transcoded_under_auto_and_refused_with_the_reason_under_never() {
    let port = free_port();
    let _camera = RtspCamera::with(port, &["--video", "h265"]);
    let source = format!("cam=rtsp://127.0.0.1:{port}/cam");
    let gateway = Gateway::start(&["--stream", &source, "--width", "640", "--height", "360"]);
    wait_for_transcoded(&gateway, "cam", true).await;
    let viewer = Viewer::new();
    viewer.connect_whep(&gateway.base, "cam").await;
    wait_for_camera_frames(&viewer, 30, Duration::from_secs(15)).await;
    drop(gateway);

    let gateway = Gateway::start(&["--stream", &source, "--transcode", "never"]);
    let refused = gateway.wait_for_state("cam", "no-signal", START).await;
    let reason = refused["error"].as_str().unwrap();
    assert!(reason.contains("video/x-h265") && reason.contains("--transcode never"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_camera_with_b_frames_is_transcoded_once_they_show() {
    let port = free_port();
    let _camera = RtspCamera::with(port, &["--profile", "main", "--bframes", "2"]);
    let source = format!("cam=rtsp://127.0.0.1:{port}/cam");
    let gateway = Gateway::start(&["--stream", &source, "--width", "640", "--height", "360"]);
    // It is forwarded until the first B-frame shows (until then the slate's encoder may run).
    gateway.wait_for_log("B-frames, which WebRTC cannot carry", START).await;
    wait_for_transcoded(&gateway, "cam", true).await;
    let viewer = Viewer::new();
    viewer.connect_whep(&gateway.base, "cam").await;
    wait_for_camera_frames(&viewer, 30, Duration::from_secs(15)).await;
}
