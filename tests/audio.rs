//! Sound: carried from every kind of source to WebRTC viewers (Opus) and HLS (AAC, in the same
//! segments as the video), and its absence handled.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::peer::{Offer, Viewer};
use common::{client, Gateway};
use serde_json::Value;

const START: Duration = Duration::from_secs(30);
/// Two seconds of sound at 48 kHz.
const TWO_SECONDS: u64 = 96_000;

/// The streams (codec type, codec name, sample rate) of the newest segment in the playlist.
async fn newest_segment_streams(gateway: &Gateway, stream: &str) -> Vec<(String, String, String)> {
    let http = client();
    let deadline = std::time::Instant::now() + START;
    let segment = loop {
        let response = http.get(gateway.url(&format!("/hls/{stream}/index.m3u8"))).send().await.unwrap();
        if response.status() == 200 {
            let text = response.text().await.unwrap();
            // Past the first segments, which start before the source's sound is known.
            if text.lines().filter(|l| l.ends_with(".ts")).count() >= 3 {
                break text.lines().rev().find(|l| l.ends_with(".ts")).unwrap().to_owned();
            }
        }
        assert!(std::time::Instant::now() < deadline, "no HLS playlist with 3 segments for {stream}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let body = http.get(gateway.url(&format!("/hls/{stream}/{segment}"))).send().await.unwrap().bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("segment.ts");
    std::fs::write(&file, &body).unwrap();
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_type,codec_name,sample_rate", "-of", "json"])
        .arg(&file)
        .output()
        .expect("ffprobe is installed (scripts/install-deps test)");
    let json: Value = serde_json::from_slice(&probe.stdout).unwrap();
    json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |name: &str| s[name].as_str().unwrap_or("").to_owned();
            (field("codec_type"), field("codec_name"), field("sample_rate"))
        })
        .collect()
}

fn has_aac(streams: &[(String, String, String)]) -> bool {
    streams.iter().any(|(kind, codec, rate)| kind == "audio" && codec == "aac" && rate == "48000")
}

/// A two-second clip: the test pattern and a tone, muxed as `container` with `audio_encoder`.
fn make_clip(dir: &Path, name: &str, audio_encoder: Option<&str>, mux: &str) -> std::path::PathBuf {
    let clip = dir.join(name);
    let audio = audio_encoder.map_or(String::new(), |encoder| {
        format!(" audiotestsrc num-buffers=100 samplesperbuffer=960 ! audioconvert ! audio/x-raw,rate=48000,channels=2 ! {encoder} ! mux.")
    });
    let launch = format!(
        "videotestsrc num-buffers=60 pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 ! x264enc key-int-max=30 ! h264parse ! {mux} name=mux ! filesink location={}{audio}",
        clip.display()
    );
    let made = Command::new("gst-launch-1.0").arg("-q").args(launch.split(' ')).status().unwrap();
    assert!(made.success(), "gst-launch made {name}: {launch}");
    clip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_test_tone_reaches_webrtc_and_hls_with_its_clicks_and_video_only_viewers_still_play() {
    let gateway = Gateway::start(&[]);
    gateway.wait_for_state("live", "playing", START).await;
    let with_sound = Viewer::offering(Offer { audio: true, ..Offer::default() });
    let (_, answer) = with_sound.post_whep_offer(&gateway.base, "live", None).await;
    with_sound.accept_answer(&answer);
    let video_only = Viewer::new();
    video_only.connect_whep(&gateway.base, "live").await;

    let seen = with_sound.wait_for_sound(TWO_SECONDS, Duration::from_secs(15)).await;
    with_sound.wait_for_frames(30, Duration::from_secs(10)).await;
    // Each click is 5 ms of loud samples (240 at 48 kHz); the tone itself is quiet.
    assert!(seen.loud_samples >= 200, "the clicks are heard: {seen:?}");
    assert!(seen.loud_samples < seen.audio_samples / 20, "the tone is quiet between clicks: {seen:?}");
    let seen = video_only.wait_for_frames(30, Duration::from_secs(10)).await;
    assert_eq!(seen.audio_samples, 0);

    let info = gateway.stream("live").await;
    assert_eq!(info["audio"], serde_json::json!({"webrtc": "opus", "hls": "aac"}), "{info}");
    assert_eq!(info["video"]["transcoded"], true);
    let streams = newest_segment_streams(&gateway, "live").await;
    assert!(has_aac(&streams), "the HLS segment carries AAC at 48 kHz beside the video: {streams:?}");
    assert!(streams.iter().any(|(kind, codec, _)| kind == "video" && codec == "h264"), "{streams:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_with_aac_or_opus_sound_carry_it_and_a_file_without_sound_plays_without() {
    let dir = tempfile::tempdir().unwrap();
    let aac = make_clip(dir.path(), "aac.mp4", Some("voaacenc ! aacparse"), "mp4mux");
    let opus = make_clip(dir.path(), "opus.mkv", Some("opusenc"), "matroskamux");
    let silent = make_clip(dir.path(), "silent.mp4", None, "mp4mux");
    let sources: Vec<String> = [("aac", &aac), ("opus", &opus), ("silent", &silent)]
        .iter()
        .flat_map(|(name, clip)| ["--stream".to_owned(), format!("{name}=file:{}", clip.display())])
        .collect();
    let args: Vec<&str> = sources.iter().map(String::as_str).collect();
    let gateway = Gateway::start(&args);
    for name in ["aac", "opus", "silent"] {
        gateway.wait_for_state(name, "playing", START).await;
    }

    for name in ["aac", "opus"] {
        let viewer = Viewer::offering(Offer { audio: true, ..Offer::default() });
        viewer.connect_whep(&gateway.base, name).await;
        let seen = viewer.wait_for_sound(TWO_SECONDS, Duration::from_secs(15)).await;
        assert!(seen.frames > 0, "{name}: video too: {seen:?}");
        let streams = newest_segment_streams(&gateway, name).await;
        assert!(has_aac(&streams), "{name}: HLS has AAC: {streams:?}");
        assert_eq!(gateway.stream(name).await["audio"]["webrtc"], "opus");
    }

    let viewer = Viewer::offering(Offer { audio: true, ..Offer::default() });
    viewer.connect_whep(&gateway.base, "silent").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seen = viewer.seen();
    assert!(seen.frames > 30, "a source without sound plays: {seen:?}");
    assert_eq!(seen.audio_samples, 0, "and negotiates no sound");
    assert_eq!(gateway.stream("silent").await["audio"], Value::Null);
    let streams = newest_segment_streams(&gateway, "silent").await;
    assert!(!streams.iter().any(|(kind, _, _)| kind == "audio"), "{streams:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gst_fragment_offers_sound_by_naming_it_and_audio_off_drops_it() {
    let fragment = "gst:audiotestsrc is-live=true name=audio videotestsrc is-live=true";
    let source = format!("frag={fragment}");
    let gateway = Gateway::start(&["--stream", &source]);
    gateway.wait_for_state("frag", "playing", START).await;
    let viewer = Viewer::offering(Offer { audio: true, ..Offer::default() });
    viewer.connect_whep(&gateway.base, "frag").await;
    viewer.wait_for_sound(TWO_SECONDS, Duration::from_secs(15)).await;
    drop(gateway);

    let gateway = Gateway::start(&["--stream", &source, "--audio", "off"]);
    gateway.wait_for_state("frag", "playing", START).await;
    assert_eq!(gateway.stream("frag").await["audio"], Value::Null);
    let streams = newest_segment_streams(&gateway, "frag").await;
    assert!(!streams.iter().any(|(kind, _, _)| kind == "audio"), "{streams:?}");
}
