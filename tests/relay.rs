//! livegate as a client of other servers: publishing over WHIP to an independent server
//! (`tests/support/whip_server.py`, webrtcbin), and relaying another livegate, or that server,
//! taken over WHEP.

mod common;

use std::time::Duration;

use common::peer::{Offer, Viewer};
use common::{free_port, wait_until, Gateway, ReadyChild};
use serde_json::Value;

const START: Duration = Duration::from_secs(20);

/// The independent WHIP (and WHEP) server, on `port`.
struct WhipServer {
    port: u16,
    _child: ReadyChild,
}

impl WhipServer {
    fn start(port: u16, options: &[&str]) -> WhipServer {
        WhipServer { port, _child: ReadyChild::python("whip_server.py", port, options) }
    }

    async fn stats(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/stats", self.port);
        common::client().get(url).send().await.unwrap().json().await.unwrap()
    }

    /// Waits until `field` of its stats reaches `at_least`.
    async fn wait_for(&self, field: &str, at_least: u64, within: Duration) -> Value {
        wait_until(within, &format!("the server's {field} to reach {at_least}"), || async {
            let stats = self.stats().await;
            if stats[field].as_u64().unwrap_or(0) >= at_least {
                Ok(stats)
            } else {
                Err(stats.to_string())
            }
        })
        .await
    }
}

fn publish_config(dir: &tempfile::TempDir, port: u16, token: &str) -> String {
    let path = dir.path().join("livegate.toml");
    let toml =
        format!("[[publish]]\nstream = \"live\"\nurl = \"http://127.0.0.1:{port}/whip/live\"\ntoken = \"{token}\"\n");
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

/// The stream's first publication, as `/api/streams` shows it.
async fn publication(gateway: &Gateway) -> Value {
    gateway.stream("live").await["publish"][0].clone()
}

async fn wait_for_publication(gateway: &Gateway, state: &str, within: Duration) -> Value {
    wait_until(within, &format!("the publication to be {state}"), || async {
        let publication = publication(gateway).await;
        if publication["state"] == state {
            Ok(publication)
        } else {
            Err(publication.to_string())
        }
    })
    .await
}

/// A counter of `/metrics` for stream `live`.
async fn metric(gateway: &Gateway, name: &str) -> u64 {
    let text = common::client().get(gateway.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|line| line.starts_with(name) && line.contains("stream=\"live\""))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for stream live in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_is_published_over_whip_with_its_token_and_outlives_the_server() {
    let port = free_port();
    let server = WhipServer::start(port, &["--token", "whip-secret-1"]);
    let dir = tempfile::tempdir().unwrap();
    let config = publish_config(&dir, port, "whip-secret-1");
    let gateway = Gateway::start(&["--config", &config, "--width", "640", "--height", "360"]);

    // The server decodes the picture with its strip, and the sound.
    let stats = server.wait_for("frames_with_strip", 60, START).await;
    assert_eq!(stats["last_authorization"], "Bearer whip-secret-1", "{stats}");
    assert_eq!((stats["width"].as_u64(), stats["height"].as_u64()), (Some(640), Some(360)));
    server.wait_for("audio_samples", 48_000, Duration::from_secs(10)).await;
    let latency = server.stats().await["latency_ms_median"].as_f64().unwrap();
    eprintln!("WHIP server's glass-to-glass median: {latency} ms");
    assert!(latency < 1000.0, "{latency} ms");
    let published = wait_for_publication(&gateway, "publishing", Duration::from_secs(5)).await;
    assert!(published["bitrate_bps"].as_u64().unwrap() > 100_000, "{published}");
    assert_eq!(gateway.stream("live").await["viewers"], 1, "the publication is one viewer of the stream");

    // The server's PLI reaches the encoder (after the rate limit) and brings a keyframe.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (forced, keyframes) = (
        metric(&gateway, "livegate_keyframes_forced_total").await,
        server.stats().await["keyframes"].as_u64().unwrap(),
    );
    let pli = common::client().post(format!("http://127.0.0.1:{port}/pli")).send().await.unwrap();
    assert_eq!(pli.status(), 204);
    wait_until(Duration::from_secs(3), "the PLI to reach the encoder", || async {
        let now = metric(&gateway, "livegate_keyframes_forced_total").await;
        if now > forced {
            Ok(())
        } else {
            Err(format!("{now} keyframes forced"))
        }
    })
    .await;
    server.wait_for("keyframes", keyframes + 1, Duration::from_secs(2)).await;

    // The server goes away: the publication retries, and resumes when it is back.
    drop(server);
    let retrying = wait_for_publication(&gateway, "retrying", Duration::from_secs(15)).await;
    assert!(retrying["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{retrying}");
    let server = WhipServer::start(port, &["--token", "whip-secret-1"]);
    server.wait_for("frames_with_strip", 30, Duration::from_secs(30)).await;
    wait_for_publication(&gateway, "publishing", Duration::from_secs(5)).await;
    assert!(metric(&gateway, "livegate_publish_reconnects_total").await >= 1);
    assert!(!gateway.log_text().contains("whip-secret-1"), "the token never reaches the log");

    // At shutdown the session is ended with a DELETE.
    let deletes = server.stats().await["deletes"].as_u64().unwrap();
    let mut gateway = gateway;
    assert!(gateway.terminate().success());
    assert_eq!(server.stats().await["deletes"].as_u64().unwrap(), deletes + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_token_is_reported_as_such_and_never_shown() {
    let port = free_port();
    let server = WhipServer::start(port, &["--token", "the-right-one"]);
    let dir = tempfile::tempdir().unwrap();
    let config = publish_config(&dir, port, "a-wrong-token-9");
    let gateway = Gateway::start(&["--config", &config]);
    let failed = wait_for_publication(&gateway, "retrying", START).await;
    let error = failed["last_error"].as_str().unwrap();
    assert!(error.contains("refused the token") && error.contains("403"), "{failed}");
    assert!(server.stats().await["unauthorized"].as_u64().unwrap() >= 1);
    // Local viewers are not affected.
    gateway.wait_for_state("live", "playing", START).await;
    let api = common::client().get(gateway.url("/api/streams")).send().await.unwrap().text().await.unwrap();
    assert!(!gateway.log_text().contains("a-wrong-token-9") && !api.contains("a-wrong-token-9"));
    // Refused offers leave no peer behind: only the shared media socket stays bound.
    wait_until(START, "a second refused attempt", || async {
        let reconnects = publication(&gateway).await["reconnects"].as_u64().unwrap_or(0);
        if reconnects >= 2 {
            Ok(())
        } else {
            Err(format!("{reconnects} reconnects"))
        }
    })
    .await;
    wait_until(Duration::from_secs(2), "one UDP socket", || async {
        let ports = common::udp_ports(gateway.pid());
        if ports.len() == 1 {
            Ok(())
        } else {
            Err(format!("UDP ports {ports:?}"))
        }
    })
    .await;
}

#[test]
fn publishing_to_plain_http_elsewhere_or_an_unknown_stream_stops_livegate_at_start() {
    let (code, stderr) = common::run_to_exit(&["--publish", "live=http://whip.example.net/whip/live"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("https://") && stderr.contains("loopback"), "{stderr}");
    let (code, stderr) = common::run_to_exit(&["--publish", "nope=https://whip.example.net/whip/x"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nope") && stderr.contains("live"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_serves_its_origin_untouched_and_recovers_when_the_origin_restarts() {
    let origin_port = free_port();
    let origin_listen = format!("127.0.0.1:{origin_port}");
    let origin_args = ["--listen", origin_listen.as_str(), "--width", "640", "--height", "360"];
    let mut origin = Gateway::start(&origin_args);
    origin.wait_for_state("live", "playing", START).await;
    let source = format!("live=whep+insecure:https://{origin_listen}/whep/live");
    let relay = Gateway::start(&["--stream", &source]);
    relay.wait_for_state("live", "playing", START).await;

    let viewer = Viewer::offering(Offer { audio: true, ..Offer::default() });
    viewer.connect_whep(&relay.base, "live").await;
    let seen = viewer.wait_for_frames(60, START).await;
    assert_eq!((seen.width, seen.height), (640, 360), "the origin's picture, not re-encoded at the relay's size");
    viewer.wait_for_sound(48_000, Duration::from_secs(10)).await;
    let info = relay.stream("live").await;
    assert_eq!(info["video"]["transcoded"], false, "{info}");
    let capture = relay.last_log("source streams found");
    assert!(!capture["elements"].as_str().unwrap().contains("avdec_h264"), "never decoded: {capture}");
    assert_eq!(origin.stream("live").await["viewers"], 1, "the origin sees one viewer: the relay");
    let latencies = &viewer.seen().latencies_ms;
    let mut sorted = latencies.clone();
    sorted.sort_unstable();
    eprintln!("origin → relay → viewer glass-to-glass median: {} ms", sorted[sorted.len() / 2]);
    let (log, frames) = common::ffmpeg_frames(&relay.url("/hls/live/index.m3u8"), 2).await;
    assert!(frames >= 30 && log.contains("aac"), "ffmpeg decoded {frames} frames: {log}");

    // The origin restarts where it was: the relay takes it up again by itself.
    assert!(origin.terminate().success());
    let before = viewer.seen().frames_with_strip;
    let _origin = Gateway::start(&origin_args);
    viewer.wait_for_frames(before + 60, Duration::from_secs(40)).await;
    assert!(relay.log_text().contains("WHEP origin lost; reconnecting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_takes_a_stream_from_a_whep_server_that_is_not_livegate() {
    let port = free_port();
    let server = WhipServer::start(port, &["--serve-whep", "--audio", "--token", "whep-secret-2"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("livegate.toml");
    let toml = format!(
        "[[stream]]\nname = \"live\"\nsource = \"whep:http://127.0.0.1:{port}/whep/cam\"\ntoken = \"whep-secret-2\"\n"
    );
    std::fs::write(&config, toml).unwrap();
    let relay = Gateway::start(&["--config", &config.display().to_string()]);
    relay.wait_for_state("live", "playing", START).await;
    let viewer = Viewer::offering(Offer { audio: true, ..Offer::default() });
    viewer.connect_whep(&relay.base, "live").await;
    let seen = viewer.wait_for_frames(60, START).await;
    assert_eq!((seen.width, seen.height), (640, 360));
    viewer.wait_for_sound(48_000, Duration::from_secs(10)).await;
    assert_eq!(relay.stream("live").await["video"]["transcoded"], false);
    // A joining viewer's keyframe request goes upstream as a PLI.
    assert!(server.stats().await["plis_received"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_self_signed_origin_is_refused_unless_its_certificate_is_trusted() {
    let origin = Gateway::start(&["--width", "640", "--height", "360"]);
    origin.wait_for_state("live", "playing", START).await;
    let source = format!("live=whep:{}/whep/live", origin.base);
    let untrusting = Gateway::start(&["--stream", &source]);
    untrusting.wait_for_log("WHEP origin lost; reconnecting", START).await;
    let reason = untrusting.last_log("WHEP origin lost; reconnecting")["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("cannot reach the WHEP origin") && reason.to_lowercase().contains("certificate"),
        "{reason}"
    );
    drop(untrusting);

    let certificate = origin.last_log("TLS certificate loaded")["cert"].as_str().unwrap().to_owned();
    let trusting = Gateway::start(&["--stream", &source, "--source-ca", &certificate]);
    // Playing comes with the first frame; forwarding once the source's streams are all known.
    wait_until(START, "the origin's video forwarded", || async {
        let stream = trusting.stream("live").await;
        if stream["state"] == "playing" && stream["video"]["transcoded"] == false {
            Ok(())
        } else {
            Err(stream.to_string())
        }
    })
    .await;
}
