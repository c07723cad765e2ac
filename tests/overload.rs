//! Overload: a viewer whose link is too slow for the stream is held to its send budget, and
//! harms no one else. Its link is a token bucket on the namespace's loopback whose long queue
//! fills the gateway's socket buffer for that viewer, as a slow network path does.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::peer::Viewer;
use common::Gateway;

/// Traffic from one UDP port through a link of a tenth of the stream's 2 Mbit/s, with a queue
/// (10 000 packets) longer than a socket buffer, so that the gateway's sends to it block instead
/// of being dropped by the queue; everything else on loopback as before. (This kernel has HTB and
/// u32 filters, not prio or netem.)
struct SlowLink;

impl SlowLink {
    fn from_port(port: u16) -> SlowLink {
        let port = port.to_string();
        for command in [
            "qdisc add dev lo root handle 1: htb default 10",
            "class add dev lo parent 1: classid 1:10 htb rate 10gbit burst 1mb quantum 200000",
            "class add dev lo parent 1: classid 1:30 htb rate 200kbit ceil 200kbit burst 4kb quantum 1514",
            "qdisc add dev lo parent 1:30 handle 30: pfifo limit 10000",
            &format!("filter add dev lo parent 1: protocol ip prio 1 u32 match ip protocol 17 0xff match ip sport {port} 0xffff flowid 1:30"),
        ] {
            tc(&command.split(' ').collect::<Vec<_>>());
        }
        SlowLink
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        let _ = Command::new("tc").args(["qdisc", "del", "dev", "lo", "root"]).status();
    }
}

fn tc(args: &[&str]) {
    let status = Command::new("tc").args(args).status().expect("tc (iproute2) runs");
    assert!(status.success(), "tc {}", args.join(" "));
}

/// The gateway's UDP port in an answer's first candidate.
fn answer_port(answer: &str) -> u16 {
    let line = answer.lines().find(|l| l.starts_with("a=candidate:")).expect("the answer has a candidate");
    line.split(' ').nth(5).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {line}"))
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    kb / 1024.0
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_on_a_link_too_slow_for_the_stream_is_held_to_its_budget_and_harms_no_one() {
    // A port per viewer: the slow link is that port's, and the driver's sends to it block. On the
    // shared port a send never blocks (a full socket drops, as the network would), so the budget
    // is what bounds `--webrtc-ports` mode.
    let gateway = Gateway::start_in(&[], tempfile::tempdir().unwrap(), &common::port_range(4));
    gateway.wait_for_state("live", "playing", Duration::from_secs(20)).await;
    let healthy = Viewer::new();
    healthy.connect_whep(&gateway.base, "live").await;
    let before = healthy.wait_for_frames(60, Duration::from_secs(20)).await;

    let slow = Viewer::new();
    let (_, answer) = slow.post_whep_offer(&gateway.base, "live", None).await;
    let _link = SlowLink::from_port(answer_port(&answer));
    slow.accept_answer(&answer);
    gateway.wait_for_viewers("live", 2, Duration::from_secs(10)).await;

    let (seconds, started) = (15, Instant::now());
    let mut rss_max: f64 = 0.0;
    while started.elapsed() < Duration::from_secs(seconds) {
        rss_max = rss_max.max(rss_mb(gateway.pid()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = healthy.seen();
    let frames = after.frames - before.frames;
    let latency = median(after.latencies_ms[before.latencies_ms.len()..].to_vec());
    let slow_seen = slow.seen();
    let stream = gateway.stream("live").await;
    eprintln!(
        "over {seconds} s: healthy viewer {frames} frames, median latency {latency} ms (before: {} ms); \
         slow viewer {} frames; gateway RSS max {rss_max:.1} MB; stream {stream}",
        median(before.latencies_ms.clone()),
        slow_seen.frames
    );

    let logs = gateway.log_text();
    assert!(logs.contains("viewer over its send budget"), "the slow viewer never reached its budget");
    assert!(stream["packets_dropped"].as_u64().unwrap() > 0, "dropped packets are counted: {stream}");
    assert!(frames >= 30 * seconds * 9 / 10, "the healthy viewer got {frames} frames in {seconds} s");
    assert!(latency < 200, "the healthy viewer's median latency went to {latency} ms");
    assert!(rss_max < 150.0, "gateway RSS reached {rss_max:.1} MB");
}
