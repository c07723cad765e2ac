//! Sources other than the test pattern, against real producers: a looping file and an RTSP
//! camera that goes away and comes back.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::peer::Viewer;
use common::Gateway;

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

struct RtspCamera(Child);

impl RtspCamera {
    fn start(port: u16) -> RtspCamera {
        let mut child = Command::new("/usr/bin/python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/rtsp_server.py"))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the RTSP server (needs python3-gi and gir1.2-gst-rtsp-server-1.0)");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready");
        RtspCamera(child)
    }
}

impl Drop for RtspCamera {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_rtsp_camera_plays_fails_visibly_and_recovers() {
    let port = free_port();
    let camera = RtspCamera::start(port);
    let source = format!("cam=rtsp://127.0.0.1:{port}/cam");
    let gateway = Gateway::start(&["--stream", "live=test", "--stream", &source]);
    gateway.wait_for_state("cam", "playing", START).await;
    let viewer = Arc::new(Viewer::new());
    let _signalling = viewer.connect_ws(&gateway.ws_url("/ws/cam")).await;
    let seen = viewer.wait_for_frames(0, Duration::from_secs(1)).await;
    assert_eq!(seen.frames_with_strip, 0, "no --latency-strip: camera frames are untouched");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while viewer.seen().frames < 30 {
        assert!(std::time::Instant::now() < deadline, "camera frames did not arrive: {:?}", viewer.seen());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(camera);
    let failed = gateway.wait_for_state("cam", "error", START).await;
    eprintln!("camera gone: {failed}");
    assert_eq!(gateway.stream("live").await["state"], "playing", "other streams keep playing");

    let _camera = RtspCamera::start(port);
    gateway.wait_for_state("cam", "playing", START).await;
}
