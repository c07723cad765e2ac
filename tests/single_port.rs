//! Every viewer of every stream on one UDP port (`--webrtc-port`, the default), also behind a
//! 1:1 NAT (`--public-ip`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::peer::Viewer;
use common::Gateway;

const START: Duration = Duration::from_secs(20);

fn start(args: &[&str], port: &str) -> Gateway {
    Gateway::start_in(args, tempfile::tempdir().unwrap(), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_two_viewers_of_two_streams_share_one_udp_socket() {
    let port = common::media_port();
    let small = ["--width", "320", "--height", "240", "--fps", "15"];
    let gateway = start(&[&["--stream", "a=test", "--stream", "b=test"][..], &small].concat(), &port);
    gateway.wait_for_state("a", "playing", START).await;
    gateway.wait_for_state("b", "playing", START).await;

    let viewers: Vec<(Viewer, &str)> = (0..22).map(|i| (Viewer::new(), if i < 20 { "a" } else { "b" })).collect();
    for (viewer, stream) in &viewers {
        viewer.connect_whep(&gateway.base, stream).await;
    }
    gateway.wait_for_viewers("a", 20, START).await;
    gateway.wait_for_viewers("b", 2, START).await;
    for (i, (viewer, stream)) in viewers.iter().enumerate() {
        let seen = viewer.wait_for_frames(15, START).await;
        assert!(seen.frames_with_strip >= 15, "viewer {i} of {stream}: {seen:?}");
    }

    let sockets = common::udp_ports(gateway.pid());
    assert_eq!(sockets, vec![port.parse::<u16>().unwrap()], "one UDP socket for all media");
    let ss = Command::new("ss").args(["-uanp"]).output().expect("ss (iproute2) runs");
    let ss = String::from_utf8_lossy(&ss.stdout);
    let held = ss.lines().filter(|l| l.contains(&format!("pid={},", gateway.pid()))).count();
    assert_eq!(held, 1, "ss shows one UDP socket for livegate:\n{ss}");
}

/// An address no interface has, reachable only through DNAT to the gateway's: a 1:1 NAT.
const PUBLIC_IP: &str = "203.0.113.7";

/// Routes `PUBLIC_IP` to the gateway's media address, as a cloud's 1:1 NAT would, until dropped.
struct OneToOneNat {
    rule: Vec<String>,
}

impl OneToOneNat {
    fn to(private_ip: &str) -> OneToOneNat {
        run("ip", &["route", "replace", &format!("{PUBLIC_IP}/32"), "dev", "lg-peer"]);
        let rule: Vec<String> = ["OUTPUT", "-d", PUBLIC_IP, "-p", "udp", "-j", "DNAT", "--to-destination", private_ip]
            .map(String::from)
            .to_vec();
        run("iptables", &[&["-t", "nat", "-A"][..], &rule.iter().map(String::as_str).collect::<Vec<_>>()].concat());
        OneToOneNat { rule }
    }

    /// Packets the rule translated: flows that went to the public address.
    fn translated(&self) -> u64 {
        let out = Command::new("iptables").args(["-t", "nat", "-L", "OUTPUT", "-v", "-x", "-n"]).output().unwrap();
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = table.lines().find(|l| l.contains(PUBLIC_IP)).unwrap_or_else(|| panic!("no DNAT rule in {table}"));
        line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no count in {line}"))
    }
}

impl Drop for OneToOneNat {
    fn drop(&mut self) {
        let rule: Vec<&str> = self.rule.iter().map(String::as_str).collect();
        let _ = Command::new("iptables").args([&["-t", "nat", "-D"][..], &rule].concat()).status();
        let _ = Command::new("ip").args(["route", "del", &format!("{PUBLIC_IP}/32")]).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(status.success(), "{program} {}", args.join(" "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reaches_the_shared_port_through_a_one_to_one_nat() {
    let nat = OneToOneNat::to(&common::media_ip());
    let port = common::media_port();
    let gateway = start(&["--public-ip", PUBLIC_IP], &port);
    gateway.wait_for_state("live", "playing", START).await;

    let viewer = Viewer::new();
    let (_, answer) = viewer.post_whep_offer(&gateway.base, "live", None).await;
    let candidates: Vec<&str> = answer.lines().filter(|l| l.starts_with("a=candidate:")).collect();
    assert!(!candidates.is_empty(), "{answer}");
    for candidate in candidates.iter().filter(|c| !c.ends_with("tcptype active")) {
        assert!(candidate.contains(&format!(" {PUBLIC_IP} {port} typ host")), "advertised as public: {candidate}");
    }
    viewer.accept_answer(&answer);
    viewer.wait_for_frames(30, START).await;
    // Else the viewer could have answered the gateway's own checks (a peer-reflexive pair).
    assert!(nat.translated() > 0, "the viewer reached the gateway through its public address");
}
