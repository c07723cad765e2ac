//! `/metrics`: valid for promtool, admin-only under access control, and its figures follow what
//! happens: a viewer joining and leaving, packets sent, HLS and signalling requests.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::peer::Viewer;
use common::{client, Gateway};

const ADMIN: &str = "metrics-admin-token";

async fn scrape(gateway: &Gateway) -> String {
    let response = client().get(gateway.url("/metrics")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    response.text().await.unwrap()
}

/// The value of the series `name{labels}` (labels exactly as exposed), or panics.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// `promtool check metrics` on `metrics`: its complaints, empty when there are none.
fn promtool(metrics: &str) -> String {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/install-deps test)");
    check.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool rejected /metrics: {said}\n{metrics}");
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_pass_promtool_and_follow_a_viewer_joining_and_leaving() {
    let gateway = Gateway::start(&["--admin-token", ADMIN]).with_admin_token(ADMIN);
    gateway.wait_for_state("live", "playing", Duration::from_secs(20)).await;
    assert_eq!(client().get(gateway.url("/metrics")).send().await.unwrap().status(), 401, "admins only");

    let before = scrape(&gateway).await;
    let complaints = promtool(&before);
    assert!(complaints.trim().is_empty(), "promtool: {complaints}");
    assert_eq!(value(&before, r#"livegate_stream_state{stream="live",state="playing"}"#), 1.0);
    assert_eq!(value(&before, r#"livegate_stream_state{stream="live",state="no-signal"}"#), 0.0);
    assert_eq!(value(&before, r#"livegate_webrtc_viewers{stream="live",signalling="whep",transport="udp"}"#), 0.0);
    assert!(value(&before, r#"livegate_encoder_frames_total{stream="live",from="source"}"#) > 0.0);
    assert!(value(&before, r#"livegate_encoded_frames_total{stream="live"}"#) > 0.0);
    assert!(value(&before, "process_resident_memory_bytes") > 1e6);
    assert!(value(&before, "process_open_fds") > 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(value(&before, "livegate_tls_certificate_expiry_seconds") > now, "the self-signed certificate is valid");
    assert_eq!(value(&before, "livegate_tls_certificate_reloads_total"), 0.0);
    assert_eq!(value(&before, r#"livegate_webrtc_shared_port_discarded_total{reason="inbox_full"}"#), 0.0);

    let viewer = Viewer::new();
    let location = viewer.connect_whep_with(&gateway.base, "live", Some(ADMIN)).await;
    viewer.wait_for_frames(30, Duration::from_secs(20)).await;
    let watching = scrape(&gateway).await;
    promtool(&watching);
    assert_eq!(value(&watching, r#"livegate_webrtc_viewers{stream="live",signalling="whep",transport="udp"}"#), 1.0);
    assert_eq!(value(&watching, r#"livegate_webrtc_sessions_started_total{stream="live"}"#), 1.0);
    assert!(value(&watching, r#"livegate_rtp_packets_sent_total{stream="live"}"#) > 100.0);
    assert!(value(&watching, r#"livegate_rtp_sent_bytes_total{stream="live"}"#) > 100_000.0);
    assert!(value(&watching, r#"livegate_keyframes_forced_total{stream="live"}"#) >= 1.0, "the new viewer's keyframe");
    assert_eq!(value(&watching, r#"livegate_http_requests_total{endpoint="whep",status="201"}"#), 1.0);

    let deleted = client().delete(gateway.url(&location)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    gateway.wait_for_viewers("live", 0, Duration::from_secs(5)).await;
    // The first segment may still be on its way: until then the playlist is 404.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let playlist = client().get(gateway.url("/hls/live/index.m3u8")).bearer_auth(ADMIN).send().await.unwrap();
        if playlist.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no HLS playlist: {}", playlist.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = scrape(&gateway).await;
    promtool(&after);
    assert_eq!(value(&after, r#"livegate_webrtc_viewers{stream="live",signalling="whep",transport="udp"}"#), 0.0);
    assert_eq!(value(&after, r#"livegate_webrtc_sessions_ended_total{stream="live",reason="closed"}"#), 1.0);
    assert_eq!(value(&after, r#"livegate_webrtc_sessions_ended_total{stream="live",reason="failed"}"#), 0.0);
    assert_eq!(value(&after, r#"livegate_http_requests_total{endpoint="hls_playlist",status="200"}"#), 1.0);
    assert_eq!(value(&after, r#"livegate_http_requests_total{endpoint="metrics",status="401"}"#), 1.0);
    assert!(value(&after, r#"livegate_hls_segments_total{stream="live"}"#) >= 1.0);
}
