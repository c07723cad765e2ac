//! Light WebRTC viewers for load tests: each completes ICE and DTLS over WHEP and counts the RTP
//! packets and frames it receives, without decoding. Prints one JSON summary on stdout.
//!
//!     load_viewers URL STREAM COUNT SECONDS [BIND_IP]
//!     load_viewers https://127.0.0.1:8443 live 50 30 10.99.0.2

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::watch;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    packets: AtomicU64,
    frames: AtomicU64,
    /// Sequence numbers never seen: lost between the gateway's socket and ours.
    lost: AtomicU64,
    last_sequence: AtomicU64,
    connect_ms: AtomicU64,
}

struct Handler {
    counters: Arc<Counters>,
    gathered: watch::Sender<bool>,
    started: Instant,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.counters.connect_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            self.counters.connected.store(true, Ordering::Relaxed);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let counters = self.counters.clone();
        tokio::spawn(async move {
            const NONE: u64 = u64::MAX;
            counters.last_sequence.store(NONE, Ordering::Relaxed);
            while let Some(event) = track.poll().await {
                let TrackRemoteEvent::OnRtpPacket(packet) = event else { continue };
                counters.packets.fetch_add(1, Ordering::Relaxed);
                if packet.header.marker {
                    counters.frames.fetch_add(1, Ordering::Relaxed);
                }
                let sequence = u64::from(packet.header.sequence_number);
                let last = counters.last_sequence.swap(sequence, Ordering::Relaxed);
                if last != NONE {
                    let gap = (sequence + 65536 - last) % 65536;
                    // Reordering shows as a huge gap; only count plausible forward jumps.
                    if (2..1000).contains(&gap) {
                        counters.lost.fetch_add(gap - 1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
}

/// A connected light viewer: its peer, counters and WHEP session URL.
struct Viewer {
    peer: Arc<dyn PeerConnection>,
    counters: Arc<Counters>,
    session: String,
}

async fn viewer(http: reqwest::Client, base: String, url: String, bind: IpAddr) -> anyhow::Result<Viewer> {
    let counters = Arc::new(Counters::default());
    let (gathered_tx, mut gathered) = watch::channel(false);
    let handler = Arc::new(Handler { counters: counters.clone(), gathered: gathered_tx, started: Instant::now() });
    let mut engine = livegate::webrtc::media_engine()?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)?;
    let peer: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_include_loopback_candidate(bind.is_loopback())
                    .with_multicast_dns_mode(MulticastDnsMode::Disabled)
                    .build(),
            )
            .with_handler(handler)
            .with_udp_addrs(vec![SocketAddr::new(bind, 0)])
            .build()
            .await?,
    );
    peer.add_transceiver_from_kind(
        RtpCodecKind::Video,
        Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() }),
    )
    .await?;
    let offer = peer.create_offer(None).await?;
    peer.set_local_description(offer).await?;
    tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|done| *done)).await.context("ICE gathering")??;
    let offer = peer.local_description().await.context("no local description")?;
    let response = http.post(&url).header("content-type", "application/sdp").body(offer.sdp).send().await?;
    if response.status() != 201 {
        bail!("WHEP answered {}: {}", response.status(), response.text().await.unwrap_or_default());
    }
    let location = response.headers().get("location").and_then(|l| l.to_str().ok()).context("no Location")?;
    let session = format!("{base}{location}");
    peer.set_remote_description(RTCSessionDescription::answer(response.text().await?)?).await?;
    Ok(Viewer { peer, counters, session })
}

/// Viewers set up at once: enough to be quick, few enough not to starve a busy machine.
const CONNECTING_AT_ONCE: usize = 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, stream, count, seconds, rest @ ..] = args.as_slice() else {
        bail!("usage: load_viewers URL STREAM COUNT SECONDS [BIND_IP]");
    };
    let count: usize = count.parse()?;
    let seconds: u64 = seconds.parse()?;
    let bind: IpAddr = rest.first().map(|ip| ip.parse()).transpose()?.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build()?;
    let url = format!("{base}/whep/{stream}");

    let mut viewers = Vec::new();
    let mut failures = Vec::new();
    let mut connecting = tokio::task::JoinSet::new();
    for started in 0..count {
        if connecting.len() >= CONNECTING_AT_ONCE {
            collect(connecting.join_next().await, &mut viewers, &mut failures);
        }
        let (http, base, url) = (http.clone(), base.clone(), url.clone());
        connecting.spawn(async move {
            tokio::time::timeout(CONNECT_TIMEOUT, viewer(http, base, url, bind)).await.context("connect timeout")?
        });
        if (started + 1) % 50 == 0 {
            eprintln!("load_viewers: {} of {count} started", started + 1);
        }
    }
    while let Some(done) = connecting.join_next().await {
        collect(Some(done), &mut viewers, &mut failures);
    }
    let measuring = Instant::now();
    let before: Vec<(u64, u64, u64)> = viewers
        .iter()
        .map(|Viewer { counters: c, .. }| {
            (c.packets.load(Ordering::Relaxed), c.frames.load(Ordering::Relaxed), c.lost.load(Ordering::Relaxed))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = measuring.elapsed().as_secs_f64();
    let per_viewer: Vec<serde_json::Value> = viewers
        .iter()
        .zip(before)
        .map(|(Viewer { counters: c, .. }, (packets0, frames0, lost0))| {
            let packets = c.packets.load(Ordering::Relaxed) - packets0;
            let lost = c.lost.load(Ordering::Relaxed) - lost0;
            serde_json::json!({
                "connected": c.connected.load(Ordering::Relaxed),
                "connect_ms": c.connect_ms.load(Ordering::Relaxed),
                "packets": packets,
                "frames": c.frames.load(Ordering::Relaxed) - frames0,
                "lost": lost,
                "loss_ratio": if packets + lost > 0 { lost as f64 / (packets + lost) as f64 } else { 1.0 },
                "fps": (c.frames.load(Ordering::Relaxed) - frames0) as f64 / elapsed,
            })
        })
        .collect();
    println!("{}", serde_json::json!({ "seconds": elapsed, "viewers": per_viewer, "failures": failures }));
    // Leave as a WHEP client should, so the gateway frees the slots at once.
    for viewer in viewers {
        let _ = http.delete(&viewer.session).send().await;
        let _ = viewer.peer.close().await;
    }
    Ok(())
}

fn collect(
    done: Option<Result<anyhow::Result<Viewer>, tokio::task::JoinError>>,
    viewers: &mut Vec<Viewer>,
    failures: &mut Vec<String>,
) {
    match done {
        Some(Ok(Ok(viewer))) => viewers.push(viewer),
        Some(Ok(Err(err))) => failures.push(format!("{err:#}")),
        Some(Err(err)) => failures.push(err.to_string()),
        None => {}
    }
}
