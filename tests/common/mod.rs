//! A real gateway process on 127.0.0.1 and clients to talk to it.
#![allow(dead_code)] // each test binary uses its own share of these helpers

pub mod decode;
pub mod peer;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Each gateway in a test run gets its own slice of UDP ports, so tests can run in parallel.
static NEXT_PORT_BLOCK: AtomicU16 = AtomicU16::new(0);

pub fn port_range(size: u16) -> String {
    let low = next_ports(size);
    format!("{low}-{}", low + size - 1)
}

/// A UDP port of its own for a gateway's shared media socket (`--webrtc-port`).
pub fn media_port() -> String {
    next_ports(1).to_string()
}

fn next_ports(size: u16) -> u16 {
    let base = 40000 + (std::process::id() % 50) as u16 * 400;
    base + NEXT_PORT_BLOCK.fetch_add(size, Ordering::SeqCst)
}

/// The local ports of every UDP socket process `pid` holds.
pub fn udp_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if inodes.contains(fields[9]) {
                ports.push(u16::from_str_radix(fields[1].rsplit(':').next().unwrap(), 16).unwrap());
            }
        }
    }
    ports
}

/// The address WebRTC media binds to: `scripts/netns-run` (which `make test` uses) provides
/// one in a private network namespace, where webrtcbin and Chromium find a candidate to pair.
pub fn media_ip() -> String {
    std::env::var("LIVEGATE_TEST_MEDIA_IP").unwrap_or_else(|_| {
        panic!(
            "WebRTC tests run inside a private network namespace: scripts/netns-run cargo test (make test does this)"
        )
    })
}

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub state_dir: tempfile::TempDir,
    admin_token: Option<String>,
}

impl Gateway {
    /// Starts the gateway with the test source(s) unless `args` name streams.
    pub fn start(args: &[&str]) -> Gateway {
        let state_dir = tempfile::tempdir().unwrap();
        Self::start_in(args, state_dir, &media_port())
    }

    /// Starts the gateway with `RUST_LOG` set to `log` (the default keeps webrtc-rs quiet).
    pub fn start_logging(args: &[&str], log: &str) -> Gateway {
        Self::start_with(args, tempfile::tempdir().unwrap(), &media_port(), log)
    }

    /// `ports` is one port (shared by every viewer) or a range LOW-HIGH (one port per viewer).
    pub fn start_in(args: &[&str], state_dir: tempfile::TempDir, ports: &str) -> Gateway {
        Self::start_with(args, state_dir, ports, "info,rtc=warn,rtc_ice=warn,rtc_dtls=error,webrtc=warn")
    }

    fn start_with(args: &[&str], state_dir: tempfile::TempDir, ports: &str, log: &str) -> Gateway {
        let mut command = Command::new(env!("CARGO_BIN_EXE_livegate"));
        // A test may name its own address (to restart a gateway where it was).
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--log-format", "json", "--webrtc-bind", &media_ip()])
            .args([if ports.contains('-') { "--webrtc-ports" } else { "--webrtc-port" }, ports])
            .args(["--encoder", "x264"])
            .arg("--state-dir")
            .arg(state_dir.path())
            .args(args)
            .env("RUST_LOG", log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start livegate");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str::<Value>(&line) {
                    if let Some(addr) = json.get("local_addr").and_then(Value::as_str) {
                        let _ = addr_tx.send(addr.parse::<SocketAddr>().unwrap());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => panic!("gateway did not start; log:\n{}", logs.lock().unwrap().join("\n")),
        };
        let scheme = if args.contains(&"--no-tls") { "http" } else { "https" };
        Gateway { child, addr, base: format!("{scheme}://{addr}"), logs, state_dir, admin_token: None }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http", "ws", 1))
    }

    pub async fn streams(&self) -> Vec<Value> {
        let mut request = client().get(self.url("/api/streams"));
        if let Some(token) = &self.admin_token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// Reads `/api/streams` (the waits below use it) with this admin token from now on.
    pub fn with_admin_token(mut self, token: &str) -> Gateway {
        self.admin_token = Some(token.to_owned());
        self
    }

    pub async fn stream(&self, name: &str) -> Value {
        self.streams().await.into_iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no stream {name}"))
    }

    /// Waits until `name` reports `state`, or panics with what it reports.
    pub async fn wait_for_state(&self, name: &str, state: &str, within: Duration) -> Value {
        wait_until(within, &format!("stream {name} to be {state}"), || async {
            let stream = self.stream(name).await;
            if stream["state"] == state {
                Ok(stream)
            } else {
                Err(stream.to_string())
            }
        })
        .await
    }

    pub async fn wait_for_viewers(&self, name: &str, viewers: u64, within: Duration) {
        wait_until(within, &format!("stream {name} to have {viewers} viewers"), || async {
            let stream = self.stream(name).await;
            if stream["viewers"].as_u64() == Some(viewers) {
                Ok(())
            } else {
                Err(stream.to_string())
            }
        })
        .await
    }

    /// Waits until the gateway has logged a line containing `text`.
    pub async fn wait_for_log(&self, text: &str, within: Duration) {
        wait_until(within, &format!("the gateway to log {text:?}"), || async {
            if self.log_text().contains(text) {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        })
        .await
    }

    /// The last log line whose message is `message`, as JSON.
    pub fn last_log(&self, message: &str) -> Value {
        self.log_text()
            .lines()
            .rev()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no log line {message:?}"))
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as Kubernetes does; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gateway ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            unsafe_kill(self.child.id(), "KILL");
            let _ = self.child.wait();
        }
    }
}

/// An HTTPS client that accepts the gateway's self-signed certificate.
pub fn client() -> reqwest::Client {
    client_builder().build().unwrap()
}

pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto();
    reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_secs(20))
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs a livegate binary to completion (for start-up failures).
pub fn run_to_exit(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_livegate")).args(args).output().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Plays `url` with ffmpeg for `seconds`; returns ffmpeg's log and the frames it decoded.
pub async fn ffmpeg_frames(url: &str, seconds: u32) -> (String, usize) {
    let output = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostats", "-tls_verify", "0", "-i", url, "-t", &seconds.to_string()])
        .args(["-f", "framemd5", "-"])
        .output()
        .await
        .expect("ffmpeg is installed (scripts/install-deps test)");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "ffmpeg failed: {stderr}");
    let frames = String::from_utf8_lossy(&output.stdout).lines().filter(|l| !l.starts_with('#')).count();
    (stderr, frames)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A helper process from `tests/support` (an RTSP camera, a WHIP server) that prints "ready"
/// once it serves on `port`; killed when dropped.
pub struct ReadyChild(pub Child);

impl ReadyChild {
    pub fn python(script: &str, port: u16, options: &[&str]) -> ReadyChild {
        let mut child = Command::new("/usr/bin/python3")
            .arg(format!("{}/tests/support/{script}", env!("CARGO_MANIFEST_DIR")))
            .arg(port.to_string())
            .args(options)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("start {script} (needs python3-gi and GStreamer's typelibs): {err}"));
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "{script} did not start");
        ReadyChild(child)
    }
}

impl Drop for ReadyChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `probe` every 50 ms until it gives `Ok`, or panics after `within` naming what was
/// awaited and the last thing `probe` saw (its `Err`).
pub async fn wait_until<T, F, Fut>(within: Duration, awaited: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => panic!("waited {within:?} for {awaited}; last seen: {seen}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
