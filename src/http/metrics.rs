//! `/metrics` in the Prometheus text format (0.0.4), encoded by prometheus-client. Stream and
//! viewer figures are read at scrape time from the counters `media` and `webrtc` keep (neither
//! knows Prometheus); HTTP requests are counted here; the process's own figures come from
//! `/proc/self`. Names follow Prometheus conventions: `livegate_…_total` counters, base units.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::tls::CertificateStatus;
use super::AppState;
use crate::auth::{Access, Denied};
use crate::media::{Media, StreamState};
use crate::relay::publish::{Publication, PublicationState, Publications};
use crate::signalling::SIGNALLING_KINDS;
use crate::webrtc::stats::{Counters, Ended};
use crate::webrtc::viewer::TRANSPORTS;
use crate::webrtc::WebRtc;

/// What an HTTP request was for, by its path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    /// `certificate` is the TLS certificate's status, when livegate serves TLS itself.
    pub fn new(
        media: Arc<Media>,
        webrtc: Arc<WebRtc>,
        publications: Arc<Publications>,
        certificate: Option<Arc<CertificateStatus>>,
    ) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "livegate_http_requests",
            "HTTP requests answered, by endpoint (whep, ws, hls_playlist, hls_segment, api, player, metrics, health) and status",
            requests.clone(),
        );
        registry.register_collector(Box::new(GatewayCollector { webrtc: webrtc.clone(), certificate }));
        registry.register_collector(Box::new(StreamCollector { media, webrtc, publications }));
        registry.register_collector(Box::new(ProcessCollector));
        Metrics { registry, requests }
    }

    fn count(&self, path: &str, status: StatusCode) {
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint(path), status: status.as_u16() }).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

fn endpoint(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix('/') else { return "other" };
    let first = rest.split('/').next().unwrap_or_default();
    match first {
        "whep" => "whep",
        "ws" => "ws",
        "hls" if path.ends_with(".m3u8") => "hls_playlist",
        "hls" => "hls_segment",
        "api" => "api",
        "metrics" => "metrics",
        "healthz" | "readyz" => "health",
        _ => "player",
    }
}

/// Counts every answer by endpoint and status.
pub async fn count_requests(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    state.metrics.count(&path, response.status());
    response
}

/// `GET /metrics`: for admins (everyone when access control is off).
pub async fn serve(
    State(state): State<Arc<AppState>>,
    Extension(access): Extension<Access>,
) -> Result<Response, Denied> {
    access.admin()?;
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], state.metrics.render()).into_response())
}

/// A series' labels: name and value pairs.
type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: its descriptor, then each `(labels, value)`.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): (&str, &str, Option<&Unit>),
    metric_type: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    about: (&str, &str, Option<&Unit>),
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    family(encoder, about, MetricType::Counter, series.into_iter().map(|(l, v)| (l, ConstCounter::new(v))))
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    about: (&str, &str, Option<&Unit>),
    series: impl IntoIterator<Item = (Labels, i64)>,
) -> fmt::Result {
    family(encoder, about, MetricType::Gauge, series.into_iter().map(|(l, v)| (l, ConstGauge::new(v))))
}

/// Every stream's state and counters, read at scrape time.
struct StreamCollector {
    media: Arc<Media>,
    webrtc: Arc<WebRtc>,
    publications: Arc<Publications>,
}

impl fmt::Debug for StreamCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamCollector").finish_non_exhaustive()
    }
}

/// A state as `/api/streams` names it (its serde form), so the two never differ.
fn state_name(state: &StreamState) -> String {
    serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

impl Collector for StreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let streams = &self.media.streams;
        let label = |name: &str| vec![("stream", name.to_owned())];
        let e = &mut encoder;
        gauge(
            e,
            (
                "livegate_stream_state",
                "1 for the state each stream is in (starting, playing, no-signal, error), 0 for the others",
                None,
            ),
            streams.iter().flat_map(|s| {
                let now = s.status().state;
                StreamState::ALL.map(|state| {
                    (vec![("stream", s.name.clone()), ("state", state_name(&state))], i64::from(state == now))
                })
            }),
        )?;
        let media = |e: &mut DescriptorEncoder, about, pick: fn(&crate::media::StreamCounters) -> &AtomicU64| {
            counter(e, about, streams.iter().map(|s| (label(&s.name), Counters::get(pick(&s.counters)))))
        };
        media(
            e,
            ("livegate_source_reconnects", "Times the source was tried again after failing, stalling or ending", None),
            |c| &c.source_reconnects,
        )?;
        media(
            e,
            ("livegate_signal_losses", "Times the source's signal was lost and the slate took over", None),
            |c| &c.signal_losses,
        )?;
        media(e, ("livegate_encoder_restarts", "Times the encoding pipeline failed and was rebuilt", None), |c| {
            &c.encoder_restarts
        })?;
        media(
            e,
            ("livegate_keyframes_forced", "Keyframes asked of the encoder, after the per-stream rate limit", None),
            |c| &c.keyframes_forced,
        )?;
        media(e, ("livegate_hls_segments", "HLS segments written", None), |c| &c.hls_segments)?;
        counter(
            e,
            ("livegate_encoder_frames", "Raw frames handed to the encoder, from the source or the slate", None),
            streams.iter().flat_map(|s| {
                [("source", &s.counters.frames_from_source), ("slate", &s.counters.frames_from_slate)]
                    .map(|(from, n)| (vec![("stream", s.name.clone()), ("from", from.to_owned())], Counters::get(n)))
            }),
        )?;

        media(e, ("livegate_encoded_frames", "Frames out of the encoder", None), |c| &c.frames_encoded)?;

        let totals: Vec<_> = streams.iter().map(|s| (s.name.clone(), self.webrtc.stream_totals(&s.name))).collect();
        gauge(
            e,
            (
                "livegate_webrtc_viewers",
                "WebRTC viewers by signalling (websocket, whep, or whip: our publications) and transport (udp, tcp, or connecting)",
                None,
            ),
            streams.iter().flat_map(|s| {
                let counts = self.webrtc.viewer_counts(&s.name);
                let kinds = SIGNALLING_KINDS.iter().flat_map(|kind| TRANSPORTS.iter().map(move |t| (*kind, *t)));
                kinds
                    .map(|(signalling, transport)| {
                        let labels = vec![
                            ("stream", s.name.clone()),
                            ("signalling", signalling.to_owned()),
                            ("transport", transport.to_owned()),
                        ];
                        (labels, counts.get(&(signalling, transport)).copied().unwrap_or(0) as i64)
                    })
                    .collect::<Vec<_>>()
            }),
        )?;
        counter(
            e,
            ("livegate_webrtc_sessions_started", "WebRTC sessions answered", None),
            totals.iter().map(|(name, t)| (label(name), Counters::get(&t.sessions_started))),
        )?;
        counter(
            e,
            (
                "livegate_webrtc_sessions_ended",
                "WebRTC sessions ended, by reason (never_connected, failed, closed)",
                None,
            ),
            totals.iter().flat_map(|(name, t)| {
                Ended::ALL.map(|reason| {
                    (vec![("stream", name.clone()), ("reason", reason.as_str().to_owned())], t.sessions_ended(reason))
                })
            }),
        )?;
        let webrtc = |e: &mut DescriptorEncoder, about, pick: fn(&Counters) -> &AtomicU64| {
            counter(e, about, totals.iter().map(|(name, t)| (label(name), Counters::get(pick(&t.counters)))))
        };
        webrtc(
            e,
            ("livegate_rtp_packets_sent", "RTP packets sent to WebRTC viewers (retransmissions not included)", None),
            |c| &c.packets_sent,
        )?;
        webrtc(e, ("livegate_rtp_sent", "RTP bytes sent to WebRTC viewers, before SRTP", Some(&Unit::Bytes)), |c| {
            &c.bytes_sent
        })?;
        webrtc(
            e,
            (
                "livegate_rtp_packets_dropped",
                "RTP packets viewers never got: lagging, over their send budget, or waiting for a keyframe",
                None,
            ),
            |c| &c.packets_dropped,
        )?;
        webrtc(e, ("livegate_rtp_packets_nacked", "RTP packets viewers reported lost (NACK)", None), |c| {
            &c.packets_nacked
        })?;
        webrtc(e, ("livegate_rtp_packets_retransmitted", "RTP packets sent again, answering NACKs", None), |c| {
            &c.packets_retransmitted
        })?;
        webrtc(e, ("livegate_keyframe_requests", "PLI and FIR received from viewers", None), |c| &c.keyframe_requests)?;
        let publications = &self.publications.all;
        let publication = |p: &Publication| vec![("stream", p.stream.clone()), ("url", p.url.clone())];
        gauge(
            e,
            ("livegate_publish_up", "1 while a WHIP publication's server takes the stream, else 0", None),
            publications.iter().map(|p| (publication(p), i64::from(p.view().state == PublicationState::Publishing))),
        )?;
        counter(
            e,
            ("livegate_publish_reconnects", "Times a WHIP publication was tried again after failing", None),
            publications.iter().map(|p| (publication(p), p.reconnects())),
        )?;
        Ok(())
    }
}

/// What belongs to no stream: the shared WebRTC port, the TLS certificate.
struct GatewayCollector {
    webrtc: Arc<WebRtc>,
    certificate: Option<Arc<CertificateStatus>>,
}

impl fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayCollector").finish_non_exhaustive()
    }
}

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        if let Some(port) = self.webrtc.shared_port() {
            let c = &port.counters;
            counter(
                e,
                (
                    "livegate_webrtc_shared_port_discarded",
                    "Datagrams and connections the shared WebRTC port could not deliver, by reason",
                    None,
                ),
                [
                    ("unroutable", &c.unroutable),
                    ("inbox_full", &c.inbox_full),
                    ("send_buffer_full", &c.send_buffer_full),
                    ("tcp_refused", &c.tcp_refused),
                ]
                .map(|(reason, n)| (vec![("reason", reason.to_owned())], Counters::get(n))),
            )?;
        }
        if let Some(certificate) = &self.certificate {
            counter(
                e,
                (
                    "livegate_tls_certificate_reloads",
                    "Times a changed TLS certificate was loaded without a restart",
                    None,
                ),
                [(Vec::new(), Counters::get(&certificate.reloads))],
            )?;
            gauge(
                e,
                (
                    "livegate_tls_certificate_expiry",
                    "When the TLS certificate in use expires, since the Unix epoch",
                    Some(&Unit::Seconds),
                ),
                [(Vec::<(&str, String)>::new(), certificate.not_after.load(std::sync::atomic::Ordering::Relaxed))],
            )?;
        }
        Ok(())
    }
}

/// The process's CPU time, memory and file descriptors, from `/proc/self` (Linux).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(process) = ProcessFigures::read() else { return Ok(()) };
        let none = Vec::new;
        let e = &mut encoder;
        family(
            e,
            ("process_cpu", "Total user and system CPU time spent", Some(&Unit::Seconds)),
            MetricType::Counter,
            [(none(), ConstCounter::new(process.cpu_seconds))],
        )?;
        gauge(
            e,
            ("process_resident_memory", "Resident memory size", Some(&Unit::Bytes)),
            [(none(), process.rss_bytes)],
        )?;
        gauge(e, ("process_open_fds", "Open file descriptors", None), [(none(), process.open_fds)])?;
        gauge(e, ("process_max_fds", "Maximum number of open file descriptors", None), [(none(), process.max_fds)])?;
        gauge(
            e,
            ("process_start_time", "Start time of the process since the Unix epoch", Some(&Unit::Seconds)),
            [(none(), process.start_time_seconds)],
        )
    }
}

struct ProcessFigures {
    cpu_seconds: f64,
    rss_bytes: i64,
    open_fds: i64,
    max_fds: i64,
    start_time_seconds: i64,
}

impl ProcessFigures {
    fn read() -> Option<ProcessFigures> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<u64>()
            .ok()?;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse()
            .ok()?;
        Some(ProcessFigures {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            rss_bytes: (field(24)? * rustix::param::page_size() as u64) as i64,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as i64,
            max_fds,
            start_time_seconds: (boot_time as f64 + field(22)? as f64 / ticks) as i64,
        })
    }
}
