//! One stream's capture part: the source, the latency strip, and appsinks that hand its video
//! (raw frames, or H.264 to forward as it is) and its sound to the encoding part. It may fail,
//! stall and be rebuilt; the encoding part never notices.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::inlet::RtpInlet;
use super::passthrough::{self, H264Profile};
use super::pipeline::{appsink, live_appsrc, make, raw_caps, realtime_clock};
use super::source::{self, CaptureClock, SourceBin, SourceOptions};
use super::{strip, MediaError};
use crate::config::{AudioDevice, Source, TranscodeMode, VideoSettings};

/// Frames waiting for the encoder: more only add latency (the oldest are dropped).
const FRAMES_QUEUED: u32 = 2;
/// Encoded frames and audio buffers waiting: dropping one of these costs more than a frame.
const ENCODED_QUEUED: u32 = 30;
/// How long an RTSP camera's or a WHEP origin's packets wait for reordering and retransmission
/// (rtspsrc's default is 2 s). Packets in order pass at once.
const RTP_LATENCY_MS: u32 = 200;
/// RTP packets waiting in an inlet's appsrc: about a second of 4 Mbit/s video.
const RTP_QUEUED: u64 = 512;
/// The click on every full second of the test source's tone: long enough to find, short enough
/// to place within a millisecond.
const CLICK_NS: u64 = 5_000_000;

/// What a capture hands over.
#[derive(Debug)]
pub enum Captured {
    /// An I420 frame at the stream's size and rate.
    Raw(gst::Buffer),
    /// An H.264 access unit (byte-stream) to forward as it is.
    H264(gst::Buffer),
    /// Raw sound, `source::AUDIO_CAPS`, and when (wall clock, ns since the epoch) it arrived: on
    /// the source's streaming thread, before any queue can delay it.
    Audio { samples: gst::Buffer, arrived_unix_ns: u64 },
    /// The streams the source turned out to have; `complete` once it has found them all.
    Layout(Layout),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    pub video: Option<VideoIn>,
    pub audio: bool,
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoIn {
    Raw,
    H264(H264Profile),
}

/// What the capture is asked for.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub video: VideoSettings,
    pub latency_strip: bool,
    pub audio: bool,
    pub audio_device: Option<AudioDevice>,
    pub transcode: TranscodeMode,
    /// Where RTP sources (WHEP) hand their packets in.
    pub inlet: Arc<RtpInlet>,
}

type Handler = Arc<dyn Fn(Captured) + Send + Sync>;

/// A running capture; dropping it stops the source (set it to NULL off the async runtime).
pub struct Capture {
    pipeline: gst::Pipeline,
    /// The inlet and its video appsrc, for an RTP source.
    inlet: Option<(Arc<RtpInlet>, gst_app::AppSrc)>,
}

impl Capture {
    /// Builds and starts the source; `on_captured` gets what it delivers on streaming threads.
    pub fn start(
        stream: &str,
        source: &Source,
        options: &CaptureOptions,
        on_captured: impl Fn(Captured) + Send + Sync + 'static,
    ) -> Result<Capture, MediaError> {
        let on_captured: Handler = Arc::new(on_captured);
        let source_options =
            SourceOptions { video: &options.video, audio: options.audio, audio_device: options.audio_device.as_ref() };
        let pipeline = gst::Pipeline::with_name(&format!("{stream}-capture"));
        pipeline.use_clock(Some(&realtime_clock()));
        let strip = options.latency_strip || *source == Source::Test;
        let mut inlet = None;
        match source::describe(source, source_options)? {
            SourceBin::Launch { description, clock, audio } => {
                let audio_sink =
                    add_launch(stream, &pipeline, &description, clock, audio, strip, options, &on_captured)?;
                if let (Some(sink), Source::Test) = (audio_sink, source) {
                    add_clicks(&sink.static_pad("sink").expect("appsinks have a sink pad"));
                }
                on_captured(Captured::Layout(Layout { video: Some(VideoIn::Raw), audio, complete: true }));
            }
            SourceBin::Uri { uri, live } => {
                let decode = make("uridecodebin", "source")?;
                decode.set_property("uri", uri);
                decode.connect("source-setup", false, |args| {
                    let source = args[1].get::<gst::Element>().expect("source-setup passes the source");
                    if source.factory().is_some_and(|f| f.name() == "rtspsrc") {
                        source.set_property("latency", RTP_LATENCY_MS);
                    }
                    None
                });
                pipeline.add(&decode).map_err(link_error(stream))?;
                sort_out_streams(&pipeline, &[decode], live, strip, options, on_captured);
            }
            SourceBin::Rtp => {
                let video = add_rtp_input(stream, &pipeline, "rtp-video")?;
                let audio = add_rtp_input(stream, &pipeline, "rtp-audio")?;
                sort_out_streams(&pipeline, &[video.1, audio.1], true, strip, options, on_captured);
                options.inlet.attach(video.0.clone(), audio.0);
                inlet = Some((options.inlet.clone(), video.0));
            }
        }
        pipeline.set_state(gst::State::Playing).map_err(|_| MediaError::StateChange { stream: stream.into() })?;
        Ok(Capture { pipeline, inlet })
    }

    pub fn bus(&self) -> gst::Bus {
        self.pipeline.bus().expect("a pipeline has a bus")
    }

    /// Every element of the capture, for tests and diagnostics ("was anything decoded?").
    pub fn element_factories(&self) -> Vec<String> {
        element_factories(self.pipeline.upcast_ref())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some((inlet, video)) = &self.inlet {
            inlet.detach(video);
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The factory names of every element in `bin`, recursively.
pub fn element_factories(bin: &gst::Bin) -> Vec<String> {
    let mut names = Vec::new();
    for element in bin.iterate_recurse().into_iter().flatten() {
        if let Some(factory) = element.factory() {
            names.push(factory.name().to_string());
        }
    }
    names.sort();
    names
}

fn link_error(stream: &str) -> impl Fn(gst::glib::BoolError) -> MediaError + '_ {
    move |err| MediaError::Link { stream: stream.into(), reason: err.to_string() }
}

/// A source described for gst-launch: its raw video (and audio) outputs end in appsinks; returns
/// the audio one.
#[allow(clippy::too_many_arguments)]
fn add_launch(
    stream: &str,
    pipeline: &gst::Pipeline,
    description: &str,
    clock: CaptureClock,
    audio: bool,
    strip: bool,
    options: &CaptureOptions,
    on_captured: &Handler,
) -> Result<Option<gst::Element>, MediaError> {
    let source_error = |reason: String| MediaError::Source { stream: stream.into(), reason };
    // Ghosting only our own outputs: ghosting "unlinked" pads would also grab the input of an
    // element waiting for a dynamic pad (decodebin) and break that delayed link.
    let source_bin = gst::parse::bin_from_description(description, false)
        .map_err(|err| source_error(format!("{err} (in `{description}`)")))?;
    source_bin.set_property("name", "source");
    let ghost = |output: &str| {
        let pad = source_bin
            .by_name(output)
            .and_then(|element| element.static_pad("src"))
            .ok_or_else(|| source_error(format!("no {output} in `{description}`")))?;
        let ghost =
            gst::GhostPad::builder_with_target(&pad).map_err(|err| source_error(err.to_string()))?.name(output).build();
        source_bin.add_pad(&ghost).map_err(|err| source_error(err.to_string()))?;
        Ok::<_, MediaError>(ghost)
    };
    let video_out = ghost(source::SOURCE_OUTPUT)?;
    let audio_out = if audio { Some(ghost(source::AUDIO_OUTPUT)?) } else { None };
    pipeline.add(&source_bin).map_err(link_error(stream))?;

    let frames = raw_sink(&options.video, on_captured.clone());
    pipeline.add(&frames).map_err(link_error(stream))?;
    video_out
        .link(&frames.static_pad("sink").expect("appsinks have a sink pad"))
        .map_err(|err| MediaError::Link { stream: stream.into(), reason: err.to_string() })?;
    if strip {
        draw_strip_on(&frames.static_pad("sink").expect("appsinks have a sink pad"), &options.video, clock)?;
    }
    let Some(audio_out) = audio_out else { return Ok(None) };
    let sink = audio_sink(on_captured.clone());
    pipeline.add(&sink).map_err(link_error(stream))?;
    audio_out
        .link(&sink.static_pad("sink").expect("appsinks have a sink pad"))
        .map_err(|err| MediaError::Link { stream: stream.into(), reason: err.to_string() })?;
    Ok(Some(sink))
}

fn raw_sink(video: &VideoSettings, on_captured: Handler) -> gst::Element {
    let sink = appsink("frames", FRAMES_QUEUED, move |buffer| on_captured(Captured::Raw(buffer)));
    sink.set_caps(Some(&raw_caps(video)));
    sink.upcast()
}

fn audio_sink(on_captured: Handler) -> gst::Element {
    let sink = appsink("audio", ENCODED_QUEUED, move |samples| {
        let arrived_unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        on_captured(Captured::Audio { samples, arrived_unix_ns })
    });
    sink.set_caps(Some(&source::AUDIO_CAPS.parse::<gst::Caps>().expect("valid caps")));
    sink.upcast()
}

fn h264_sink(on_captured: Handler) -> gst::Element {
    appsink("h264", ENCODED_QUEUED, move |buffer| on_captured(Captured::H264(buffer))).upcast()
}

/// An RTP input of a WHEP source: an appsrc the inlet feeds, reordered and then sorted out by a
/// `decodebin` like a camera's streams. Returns both.
fn add_rtp_input(
    stream: &str,
    pipeline: &gst::Pipeline,
    name: &str,
) -> Result<(gst_app::AppSrc, gst::Element), MediaError> {
    // Its caps come with the first packet (the inlet knows the payload type by then).
    let src = live_appsrc(name, None, RTP_QUEUED, true);
    let jitter = make("rtpjitterbuffer", &format!("{name}-jitter"))?;
    jitter.set_property("latency", RTP_LATENCY_MS);
    let decode = make("decodebin", &format!("{name}-decode"))?;
    pipeline.add_many([src.upcast_ref(), &jitter, &decode]).map_err(link_error(stream))?;
    gst::Element::link_many([src.upcast_ref(), &jitter, &decode]).map_err(link_error(stream))?;
    Ok((src, decode))
}

/// An RTSP camera, a file or a WHEP source: each decodebin in `decoders` finds its streams,
/// linked as they appear. H.264 that browsers decode stops at its parser and is forwarded
/// (unless `--transcode always`); anything else is decoded. The layout is complete once every
/// decodebin has found all of its streams.
fn sort_out_streams(
    pipeline: &gst::Pipeline,
    decoders: &[gst::Element],
    live: bool,
    strip: bool,
    options: &CaptureOptions,
    on_captured: Handler,
) {
    let layout = Arc::new(Mutex::new(Layout::default()));
    let unfinished = Arc::new(AtomicUsize::new(decoders.len()));
    for decode in decoders {
        let shared = (on_captured.clone(), layout.clone(), unfinished.clone());
        sort_out(pipeline, decode, live, strip, options, shared);
    }
}

fn sort_out(
    pipeline: &gst::Pipeline,
    decode: &gst::Element,
    live: bool,
    strip: bool,
    options: &CaptureOptions,
    (on_captured, layout, unfinished): (Handler, Arc<Mutex<Layout>>, Arc<AtomicUsize>),
) {
    let transcode = options.transcode;
    decode.connect("autoplug-continue", false, move |args| {
        let decode = args[0].get::<gst::Element>().expect("autoplug-continue passes its bin");
        let caps = args[2].get::<gst::Caps>().expect("autoplug-continue passes caps");
        Some(keep_decoding(&decode, &caps, transcode).to_value())
    });
    let (weak_pipeline, video, audio, found) = (pipeline.downgrade(), options.video, options.audio, layout.clone());
    let (report, on_found) = (on_captured.clone(), on_captured.clone());
    decode.connect_pad_added(move |decode, pad| {
        let Some(pipeline) = weak_pipeline.upgrade() else { return };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let Some(structure) = caps.structure(0) else { return };
        let pace = if live { "" } else { "clocksync ! " };
        let mut layout = found.lock().expect("layout lock");
        let linked = match structure.name().as_str() {
            "video/x-raw" if layout.video.is_none() => {
                layout.video = Some(VideoIn::Raw);
                let sink = raw_sink(&video, on_captured.clone());
                if strip {
                    let pad = sink.static_pad("sink").expect("appsinks have a sink pad");
                    let _ = draw_strip_on(&pad, &video, CaptureClock::BufferTime);
                }
                attach(&pipeline, pad, &format!("{pace}{}", source::normalise(&video)), sink)
            }
            // Only what `keep_decoding` let through: H.264 to forward.
            "video/x-h264" if layout.video.is_none() => match passthrough::forwardable(structure) {
                Ok(profile) => {
                    layout.video = Some(VideoIn::H264(profile));
                    let description = format!(
                        "{pace}h264parse config-interval=-1 ! capsfilter caps=\"video/x-h264,stream-format=byte-stream,alignment=au\""
                    );
                    attach(&pipeline, pad, &description, h264_sink(on_captured.clone()))
                }
                Err(reason) => Err(reason),
            },
            "audio/x-raw" if audio && !layout.audio => {
                layout.audio = true;
                attach(&pipeline, pad, &format!("{pace}{}", source::normalise_audio()), audio_sink(on_captured.clone()))
            }
            other => {
                tracing::debug!(caps = other, "source stream not used");
                attach(&pipeline, pad, "identity", make("fakesink", "").expect("fakesink is in core"))
            }
        };
        if let Err(reason) = linked {
            gst::element_error!(decode, gst::StreamError::Failed, ("{reason}"));
            return;
        }
        report(Captured::Layout(layout.clone()));
    });
    decode.connect_no_more_pads(move |_| {
        if unfinished.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let mut layout = layout.lock().expect("layout lock");
        layout.complete = true;
        on_found(Captured::Layout(layout.clone()));
    });
}

/// Whether `uridecodebin` should go on decoding a stream with these caps: not H.264 it may
/// forward. With `--transcode never`, video it cannot forward stops the source with the reason.
fn keep_decoding(decode: &gst::Element, caps: &gst::Caps, transcode: TranscodeMode) -> bool {
    let Some(structure) = caps.structure(0) else { return true };
    let name = structure.name();
    if transcode == TranscodeMode::Always || !name.starts_with("video/") || name == "video/x-raw" {
        return true;
    }
    // Unparsed H.264 gets its parser first, which tells the profile.
    if name == "video/x-h264" && !structure.get::<bool>("parsed").unwrap_or(false) {
        return true;
    }
    match passthrough::forwardable(structure) {
        Ok(_) => false,
        Err(reason) => {
            if transcode == TranscodeMode::Never {
                gst::element_error!(
                    decode,
                    gst::StreamError::Format,
                    ("{reason}; --transcode never forwards video only as it is (use --transcode auto to re-encode it)")
                );
            }
            true
        }
    }
}

/// Links `pad` through a new bin made from `description` to `sink`, all started at once.
fn attach(pipeline: &gst::Pipeline, pad: &gst::Pad, description: &str, sink: gst::Element) -> Result<(), String> {
    let bin = gst::parse::bin_from_description(description, true).map_err(|err| err.to_string())?;
    pipeline.add_many([bin.upcast_ref(), &sink]).map_err(|err| err.to_string())?;
    bin.link(&sink).map_err(|err| err.to_string())?;
    sink.sync_state_with_parent().map_err(|err| err.to_string())?;
    bin.sync_state_with_parent().map_err(|err| err.to_string())?;
    let input = bin.static_pad("sink").ok_or("the branch has no input")?;
    pad.link(&input).map(|_| ()).map_err(|err| err.to_string())
}

fn draw_strip_on(pad: &gst::Pad, video: &VideoSettings, clock: CaptureClock) -> Result<(), MediaError> {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, video.width, video.height)
        .build()
        .map_err(|err| MediaError::Link { stream: "strip".into(), reason: err.to_string() })?;
    let info = Arc::new(info);
    let _ = pad.add_probe(gst::PadProbeType::BUFFER, move |pad, probe| {
        let unix_ms = match clock {
            CaptureClock::Now => Some(strip::unix_now_ms()),
            CaptureClock::BufferTime => {
                probe.buffer().and_then(|buffer| capture_time_ns(pad, buffer)).map(|ns| ns / 1_000_000)
            }
        };
        if let (Some(unix_ms), Some(buffer)) = (unix_ms, probe.buffer_mut()) {
            let buffer = buffer.make_mut();
            if let Ok(mut frame) = gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, &info) {
                let strides = frame.plane_stride().iter().map(|s| *s as usize).collect::<Vec<_>>();
                let [y, u, v, _] = frame.planes_data_mut();
                strip::draw_i420(
                    strip::Plane { data: y, stride: strides[0] },
                    strip::Plane { data: u, stride: strides[1] },
                    strip::Plane { data: v, stride: strides[2] },
                    info.width(),
                    unix_ms,
                );
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// Writes a click into the test tone at every full second of wall-clock time, where the strip of
/// the frame captured at that moment reads `…000`: A/V sync can be measured at the viewer.
fn add_clicks(pad: &gst::Pad) {
    let _ = pad.add_probe(gst::PadProbeType::BUFFER, |pad, probe| {
        let Some(start_ns) = probe.buffer().and_then(|buffer| capture_time_ns(pad, buffer)) else {
            return gst::PadProbeReturn::Ok;
        };
        if let Some(buffer) = probe.buffer_mut() {
            if let Ok(mut map) = buffer.make_mut().map_writable() {
                click_at_full_seconds(map.as_mut_slice(), start_ns);
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Overwrites the samples (S16LE, interleaved) that fall within `CLICK_NS` after a full second
/// with a loud 2 kHz square wave; `start_ns` is the wall-clock time of the first sample.
pub fn click_at_full_seconds(samples: &mut [u8], start_ns: u64) {
    let frame_bytes = 2 * source::AUDIO_CHANNELS;
    for (i, frame) in samples.chunks_exact_mut(frame_bytes).enumerate() {
        let at = start_ns + i as u64 * 1_000_000_000 / u64::from(source::AUDIO_RATE);
        let into_second = at % 1_000_000_000;
        if into_second < CLICK_NS {
            let level: i16 = if (into_second / 250_000) % 2 == 0 { 26_000 } else { -26_000 };
            for sample in frame.chunks_exact_mut(2) {
                sample.copy_from_slice(&level.to_le_bytes());
            }
        }
    }
}

/// Wall-clock capture time of a buffer: the pipeline runs on the realtime clock, so base time
/// plus the buffer's running time is the moment it was captured.
fn capture_time_ns(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<u64> {
    let pts = buffer.pts()?;
    let segment = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = segment.segment().downcast_ref::<gst::ClockTime>()?;
    let running = segment.to_running_time(pts)?;
    let base = pad.parent_element()?.base_time()?;
    Some((base + running).nseconds())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_click_starts_on_the_full_second() {
        // 10 ms of stereo starting 2 ms before a full second.
        let mut samples = vec![0u8; 480 * 4];
        click_at_full_seconds(&mut samples, 1_795_000_000_998_000_000);
        let level = |frame: usize| i16::from_le_bytes([samples[frame * 4], samples[frame * 4 + 1]]);
        assert_eq!(level(95), 0, "2 ms before the second: untouched");
        assert_eq!(level(96), 26_000, "the second itself");
        assert_eq!(level(96 + 12), -26_000, "a square wave: 250 µs later it swings");
        assert_ne!(level(96 + 239), 0, "still clicking 4.98 ms in");
        assert_eq!(level(96 + 240), 0, "5 ms long");
    }
}
