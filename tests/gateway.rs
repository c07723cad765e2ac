//! End-to-end tests against a real gateway process: real pipeline, real TLS, real WebRTC peers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::decode::{decode_video, Decoded};
use common::peer::{self, Viewer};
use common::{client, Gateway};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const START: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_webrtc_viewers_over_whep_and_websocket_decode_strips() {
    let gateway = Gateway::start(&[]);
    gateway.wait_for_state("live", "playing", START).await;

    let over_whep = Viewer::new();
    let location = over_whep.connect_whep(&gateway.base, "live").await;
    assert!(location.starts_with("/whep/live/"), "{location}");
    let over_ws = Arc::new(Viewer::new());
    let signalling = over_ws.connect_ws(&gateway.ws_url("/ws/live")).await;

    gateway.wait_for_viewers("live", 2, Duration::from_secs(5)).await;
    for (name, viewer) in [("WHEP", &over_whep), ("WebSocket", &*over_ws)] {
        let seen = viewer.wait_for_frames(60, Duration::from_secs(20)).await;
        assert_eq!((seen.width, seen.height), (1280, 720), "{name}");
        let mut latencies = seen.latencies_ms.clone();
        latencies.sort_unstable();
        let median = latencies[latencies.len() / 2];
        eprintln!("{name}: {} frames, {} with strips, median latency {median} ms", seen.frames, seen.frames_with_strip);
        assert!(median < 2000, "{name}: median latency {median} ms is not live");
    }

    let deleted = client().delete(gateway.url(&location)).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    gateway.wait_for_viewers("live", 1, Duration::from_secs(5)).await;
    signalling.abort();
    drop(over_ws);
    gateway.wait_for_viewers("live", 0, Duration::from_secs(5)).await;
    assert_eq!(client().delete(gateway.url(&location)).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hls_playlist_appears_and_segments_decode_with_strips() {
    let gateway = Gateway::start(&[]);
    let started = Instant::now();
    let http = client();
    let playlist = loop {
        let response = http.get(gateway.url("/hls/live/index.m3u8")).send().await.unwrap();
        if response.status() == 200 {
            assert_eq!(response.headers()["content-type"], "application/vnd.apple.mpegurl");
            assert_eq!(response.headers()["cache-control"], "public, max-age=0, s-maxage=1", "a CDN may hold it 1 s");
            let text = response.text().await.unwrap();
            if text.lines().any(|l| l.ends_with(".ts")) {
                break text;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no playlist with a segment within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("playlist after {:?}:\n{playlist}", started.elapsed());
    assert!(playlist.contains("#EXT-X-TARGETDURATION:1"), "{playlist}");

    let segment = playlist.lines().rev().find(|l| l.ends_with(".ts")).unwrap();
    let response = http.get(gateway.url(&format!("/hls/live/{segment}"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "video/mp2t");
    assert!(response.headers()["cache-control"].to_str().unwrap().contains("max-age"));
    let body = response.bytes().await.unwrap();

    let Decoded { frames, with_strip, size } = decode_video("tsdemux", &body);
    eprintln!("segment {segment}: {frames} frames at {size:?}, {with_strip} strips decoded");
    assert_eq!(size, (1280, 720));
    assert!(frames >= 15, "a 1 s segment at 30 fps has ~30 frames, got {frames}");
    assert_eq!(with_strip, frames, "every frame carries a readable strip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_http_input_gets_clear_answers() {
    let gateway = Gateway::start(&["--max-viewers", "1", "--ice-server", "turn:user:pass@turn.example.org:3478"]);
    gateway.wait_for_state("live", "playing", START).await;
    let http = client();
    let config: Value = http.get(gateway.url("/api/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        config,
        json!({
            "iceServers": [{"urls": ["turn:turn.example.org:3478"], "username": "user", "credential": "pass"}],
            "stream": "live",
        })
    );
    let whep = |stream: &str, content_type: &str, body: String| {
        http.post(gateway.url(&format!("/whep/{stream}"))).header("content-type", content_type).body(body).send()
    };

    let missing = whep("nope", "application/sdp", "v=0".into()).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("no stream named \"nope\""));
    assert_eq!(http.get(gateway.url("/hls/nope/index.m3u8")).send().await.unwrap().status(), 404);

    let not_sdp = whep("live", "application/json", "{}".into()).await.unwrap();
    assert_eq!(not_sdp.status(), 415);
    assert!(not_sdp.text().await.unwrap().contains("application/sdp"));

    let garbage = whep("live", "application/sdp", "hello".into()).await.unwrap();
    assert_eq!(garbage.status(), 400);
    assert!(garbage.text().await.unwrap().contains("H.264 video with packetization-mode=1 (constrained baseline"));

    let vp8_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                    c=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n";
    let no_h264 = whep("live", "application/sdp", vp8_only.into()).await.unwrap();
    assert_eq!(no_h264.status(), 400);
    let message = no_h264.text().await.unwrap();
    assert!(message.contains("VP8/90000") && message.contains("livegate sends H.264"), "{message}");

    let patch = http.patch(gateway.url("/whep/live/x")).send().await.unwrap();
    assert_eq!(patch.status(), 405);
    let preflight = http
        .request(reqwest::Method::OPTIONS, gateway.url("/whep/live"))
        .header("origin", "https://player.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    // --max-viewers 1: the first viewer plays, the second is turned away.
    let first = Viewer::new();
    first.connect_whep(&gateway.base, "live").await;
    assert_eq!(gateway.stream("live").await["viewers"], 1);
    let second = Viewer::new();
    let full = whep("live", "application/sdp", second.offer()).await.unwrap();
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "5");
    assert!(full.text().await.unwrap().contains("maximum of 1 viewers"));
    let mut socket = peer::ws_connect(&gateway.ws_url("/ws/live")).await;
    socket.send(Message::Text(json!({"type": "offer", "sdp": second.offer()}).to_string().into())).await.unwrap();
    let refused = peer::next_json(&mut socket).await.unwrap();
    assert_eq!(refused["type"], "error");
    assert!(refused["message"].as_str().unwrap().contains("maximum of 1 viewers"), "{refused}");
    assert!(peer::next_json(&mut socket).await.is_none(), "closed after the error");

    // Nobody else was harmed: the first viewer still plays.
    let before = first.seen().frames_with_strip;
    first.wait_for_frames(before + 30, Duration::from_secs(10)).await;
}

/// Sends one message on a fresh socket and returns the error the gateway answers with.
async fn ws_error_for(gateway: &Gateway, path: &str, message: Message) -> String {
    let mut socket = peer::ws_connect(&gateway.ws_url(path)).await;
    let _ = socket.send(message).await;
    let reply: Value = peer::next_json(&mut socket).await.expect("an error message");
    assert_eq!(reply["type"], "error", "{reply}");
    assert!(peer::next_json(&mut socket).await.is_none(), "the socket closes after an error");
    reply["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_websocket_input_gets_an_error_then_close() {
    let gateway = Gateway::start(&[]);
    gateway.wait_for_state("live", "playing", START).await;
    let text = |s: &str| Message::Text(s.to_owned().into());

    let unknown = ws_error_for(&gateway, "/ws/nope", text("{}")).await;
    assert!(unknown.contains("no stream named \"nope\""), "{unknown}");
    let not_json = ws_error_for(&gateway, "/ws/live", text("hello")).await;
    assert!(not_json.contains("not a JSON signalling message"), "{not_json}");
    let unknown_type = ws_error_for(&gateway, "/ws/live", text(r#"{"type":"subscribe"}"#)).await;
    assert!(unknown_type.contains("unknown variant `subscribe`"), "{unknown_type}");
    let huge = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "a".repeat(70 * 1024));
    let too_large = ws_error_for(&gateway, "/ws/live", text(&huge)).await;
    assert!(too_large.contains("over the 65536-byte limit"), "{too_large}");
    let bad_offer = ws_error_for(&gateway, "/ws/live", text(r#"{"type":"offer","sdp":"v=0"}"#)).await;
    assert!(bad_offer.contains("constrained baseline"), "{bad_offer}");

    // A second offer on a socket that already has a session.
    let viewer = Viewer::new();
    let mut socket = peer::ws_connect(&gateway.ws_url("/ws/live")).await;
    let offer = json!({"type": "offer", "sdp": viewer.offer()}).to_string();
    socket.send(text(&offer)).await.unwrap();
    assert_eq!(peer::next_json(&mut socket).await.unwrap()["type"], "answer");
    socket.send(text(&offer)).await.unwrap();
    let reply = loop {
        let message = peer::next_json(&mut socket).await.expect("an error before close");
        if message["type"] == "error" {
            break message;
        }
    };
    assert!(reply["message"].as_str().unwrap().contains("second offer"), "{reply}");
    gateway.wait_for_viewers("live", 0, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_camera_is_a_slate_with_its_reason_and_harms_no_one() {
    let gateway = Gateway::start(&["--stream", "live=test", "--stream", "cam=v4l2:/dev/video-missing"]);
    gateway.wait_for_state("live", "playing", START).await;
    let cam = gateway.wait_for_state("cam", "no-signal", START).await;
    let reason = cam["error"].as_str().unwrap();
    assert!(reason.contains("/dev/video-missing") && reason.contains("no such device"), "{cam}");
    assert!(gateway.log_text().contains("/dev/video-missing"), "the reason is logged");
    let ready = client().get(gateway.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while a stream is in error");
    assert_eq!(client().get(gateway.url("/healthz")).send().await.unwrap().status(), 200);

    let viewer = Viewer::new();
    viewer.connect_whep(&gateway.base, "live").await;
    viewer.wait_for_frames(30, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_source_fragment_is_a_slate_with_its_reason() {
    let gateway = Gateway::start(&["--stream", "live=test", "--stream", "bad=gst:nosuchelement"]);
    let bad = gateway.wait_for_state("bad", "no-signal", START).await;
    assert!(bad["error"].as_str().unwrap().contains("nosuchelement"), "{bad}");
    gateway.wait_for_state("live", "playing", START).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_removes_the_temporary_hls_folder() {
    let mut gateway = Gateway::start(&[]);
    gateway.wait_for_state("live", "playing", START).await;
    let hls_dir = gateway
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|l| l["hls_dir"].as_str().map(str::to_owned))
        .expect("the HLS folder is logged");
    assert!(std::path::Path::new(&hls_dir).exists());
    let status = gateway.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(!std::path::Path::new(&hls_dir).exists(), "{hls_dir} left behind");
    assert!(gateway.log_text().contains("stopped"));
}

#[test]
fn start_up_errors_name_the_problem() {
    let (code, stderr) = common::run_to_exit(&["--width", "641"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("`width`") && stderr.contains("even number"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let (code, stderr) = common::run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "a broken certificate is fatal, never a fallback to HTTP");
    assert!(stderr.contains("TLS") && stderr.contains("tls.crt"), "{stderr}");

    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) =
        common::run_to_exit(&["--listen", "127.0.0.1:0", "--webrtc-bind", "127.0.0.1", "--webrtc-port", &port]);
    assert_ne!(code, 0, "a media port in use is fatal");
    assert!(stderr.contains(&format!("UDP 127.0.0.1:{port}")) && stderr.contains("--webrtc-port"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_the_hls_stream() {
    let gateway = Gateway::start(&[]);
    gateway.wait_for_state("live", "playing", START).await;
    let playlist = gateway.url("/hls/live/index.m3u8");
    // Wait for a playlist with segments: ffmpeg reads a live playlist as it is at the start.
    let started = Instant::now();
    while !client().get(&playlist).send().await.unwrap().text().await.unwrap().contains(".ts") {
        assert!(started.elapsed() < Duration::from_secs(10), "no HLS segment");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (stderr, frames) = common::ffmpeg_frames(&playlist, 2).await;
    assert!(stderr.contains("h264") && stderr.contains("1280x720"), "{stderr}");
    assert!(frames >= 50, "ffmpeg decoded {frames} frames in 2 s of a 30 fps stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_is_served_and_revalidated_with_etags() {
    let gateway = Gateway::start(&[]);
    let http = client();
    let page = http.get(gateway.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let etag = page.headers()["etag"].clone();
    assert!(page.text().await.unwrap().contains("<video"));
    let again = http.get(gateway.url("/")).header("if-none-match", etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    for (path, mime) in
        [("/player.js", "javascript"), ("/strip.js", "javascript"), ("/vendor/hls.min.js", "javascript")]
    {
        let response = http.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers()["content-type"].to_str().unwrap().contains(mime), "{path}");
    }
    assert_eq!(http.get(gateway.url("/strip.test.mjs")).send().await.unwrap().status(), 404, "tests are not shipped");
    assert_eq!(http.get(gateway.url("/../Cargo.toml")).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_port_held_by_another_program_is_skipped() {
    let ports = common::port_range(2);
    let low: u16 = ports.split('-').next().unwrap().parse().unwrap();
    // Another program (a client's ephemeral port, say) holds the first port of the range.
    let _squatter = std::net::UdpSocket::bind((common::media_ip().as_str(), low)).unwrap();
    let gateway = Gateway::start_in(&[], tempfile::tempdir().unwrap(), &ports);
    gateway.wait_for_state("live", "playing", START).await;
    let viewer = Viewer::new();
    viewer.connect_whep(&gateway.base, "live").await;
    viewer.wait_for_frames(10, Duration::from_secs(20)).await;
}
