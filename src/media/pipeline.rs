//! One stream's encoding part: raw frames (from the source or the slate) → encoder, or camera
//! H.264 forwarded as it is → tee → (HLS | RTP packets); and sound (the source's, or silence
//! while it has none) → (Opus RTP packets | AAC into the same HLS segments). It is rebuilt only
//! when what it carries changes (forwarding ↔ encoding, sound appearing) or when it fails.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::fmp4::AudioFormat;
use super::llhls::{AudioFrame, LowLatencyHls, VideoFrame};
use super::passthrough::H264Profile;
use super::{encoder, source, strip, MediaError};
use crate::config::{EncoderChoice, VideoSettings};

/// RTP payload type the payloader writes; each viewer's is rewritten to what it negotiated.
pub const RTP_PAYLOAD_TYPE: u32 = 96;
pub const OPUS_PAYLOAD_TYPE: u32 = 111;
const VIDEO_CLOCK_RATE: u64 = 90_000;
/// Opus over RTP always counts 48 kHz (RFC 7587).
const OPUS_CLOCK_RATE: u64 = 48_000;
const OPUS_BITRATE: i32 = 64_000;
/// What the Opus encoder's in-band FEC is tuned for.
const OPUS_EXPECTED_LOSS_PERCENT: i32 = 5;
const AAC_BITRATE: i32 = 128_000;
/// Audio buffers of silence while the source sends none: 10 ms.
const SILENCE_SAMPLES: i32 = 480;
/// Fits any path MTU a browser will meet, with room for SRTP and header extensions.
pub const RTP_MTU: u32 = 1200;
/// The playlist players read, written by `hls::Playlist`.
pub const HLS_PLAYLIST: &str = "index.m3u8";
/// hlssink2's own playlist, read after each segment; not `.m3u8`, so never served.
pub const HLSSINK2_PLAYLIST: &str = "hlssink2.playlist";
pub const HLS_SEGMENT_SECONDS: u32 = 1;
/// Segments listed in the playlist, and kept on disk (twice as many, for slow players).
pub const HLS_PLAYLIST_LENGTH: usize = 6;
pub const HLS_FILES_KEPT: usize = 12;
/// RTP packets an appsink holds if the fan-out falls behind (~1 s at 2 Mbit/s).
const RTP_SINK_BUFFERS: u32 = 256;
/// Frames Low-Latency HLS may fall behind by before the oldest are dropped (~2 s).
const LOW_LATENCY_BUFFERS: u32 = 64;

/// What an encoding part carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub video: VideoPlan,
    pub audio: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoPlan {
    /// Raw frames (the source's or the slate's) through our encoder.
    Encode,
    /// The camera's own H.264, parsed and forwarded.
    Forward(H264Profile),
}

/// Everything the encoding part needs.
pub struct PipelineSettings<'a> {
    pub video: &'a VideoSettings,
    pub encoder: EncoderChoice,
    pub hls_dir: &'a Path,
    pub plan: &'a Plan,
}

/// A built encoding pipeline; dropping it stops it.
pub struct StreamPipeline {
    pipeline: gst::Pipeline,
    /// Realtime-clock time (ns since the epoch) at running time 0.
    base_time: gst::ClockTime,
    video_in: gst_app::AppSrc,
    /// None when forwarding: a camera's stream cannot be asked for a keyframe.
    encoder: Option<gst::Element>,
    audio_in: Option<gst_app::AppSrc>,
    /// Forwarded H.264 is dropped until its first keyframe, which a decoder can start from.
    awaiting_keyframe: AtomicBool,
    pub plan: Plan,
}

pub fn make(factory: &'static str, name: &str) -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make(factory).name(name).build().map_err(|_| MediaError::MissingElement {
        factory,
        package: match factory {
            "x264enc" => "gstreamer1.0-plugins-ugly",
            "hlssink2" | "h264parse" => "gstreamer1.0-plugins-bad",
            "avenc_aac" => "gstreamer1.0-libav",
            "rtph264pay" | "rtpopuspay" => "gstreamer1.0-plugins-good",
            _ => "gstreamer1.0-plugins-base",
        },
    })
}

fn queue(name: &str) -> Result<gst::Element, MediaError> {
    let queue = make("queue", name)?;
    // Leaky and short: a stalled branch loses its oldest data instead of stalling the tee.
    queue.set_property_from_str("leaky", "downstream");
    queue.set_property("max-size-buffers", 0u32);
    queue.set_property("max-size-bytes", 0u32);
    queue.set_property("max-size-time", gst::ClockTime::from_mseconds(500));
    Ok(queue)
}

/// An appsink that hands each buffer to `on_buffer` on its streaming thread, without syncing
/// to the clock, keeping at most `max_buffers` (the oldest dropped) if `on_buffer` falls behind.
pub fn appsink(
    name: &str,
    max_buffers: u32,
    on_buffer: impl Fn(gst::Buffer) + Send + Sync + 'static,
) -> gst_app::AppSink {
    sample_sink(name, max_buffers, move |sample| {
        if let Some(buffer) = sample.buffer_owned() {
            on_buffer(buffer);
        }
    })
}

/// `appsink`, handing over whole samples: each buffer with its caps.
fn sample_sink(
    name: &str,
    max_buffers: u32,
    on_sample: impl Fn(gst::Sample) + Send + Sync + 'static,
) -> gst_app::AppSink {
    gst_app::AppSink::builder()
        .name(name)
        .sync(false)
        .max_buffers(max_buffers)
        .drop(true)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    on_sample(sink.pull_sample().map_err(|_| gst::FlowError::Eos)?);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        )
        .build()
}

/// The realtime clock: the latency strip carries wall-clock capture times, so a pipeline's
/// base time plus running time must be wall time.
pub fn realtime_clock() -> gst::Clock {
    gst::glib::Object::builder::<gst::SystemClock>().property("clock-type", gst::ClockType::Realtime).build().upcast()
}

/// Raw video at the stream's size and rate: what sources and the slate hand the encoder.
pub fn raw_caps(video: &VideoSettings) -> gst::Caps {
    gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, video.width, video.height)
        .fps(gst::Fraction::new(video.fps as i32, 1))
        .par(gst::Fraction::new(1, 1))
        .build()
        .expect("validated sizes make valid caps")
        .to_caps()
        .expect("video info makes caps")
}

impl StreamPipeline {
    /// Builds the encoding part; `on_video` and `on_audio` receive every RTP packet on streaming
    /// threads.
    pub fn build(
        stream: &str,
        settings: &PipelineSettings<'_>,
        on_video: impl Fn(Bytes) + Send + Sync + 'static,
        on_audio: impl Fn(Bytes) + Send + Sync + 'static,
        low_latency: Arc<LowLatencyHls>,
    ) -> Result<StreamPipeline, MediaError> {
        let video = settings.video;
        let pipeline = gst::Pipeline::with_name(stream);
        let clock = realtime_clock();
        pipeline.use_clock(Some(&clock));
        // Running time starts at a known wall-clock moment, so RTP timestamps can count wall
        // time: a rebuilt pipeline's packets continue the timeline viewers already follow.
        let base_time = clock.time();
        pipeline.set_start_time(gst::ClockTime::NONE);
        pipeline.set_base_time(base_time);
        let link_error =
            |err: gst::glib::BoolError| MediaError::Link { stream: stream.into(), reason: err.to_string() };
        let link = |elements: &[&gst::Element]| gst::Element::link_many(elements).map_err(link_error);

        // Live, stamped on arrival: frames from the camera and from the slate share one
        // continuous timeline, so HLS never sees a jump.
        let (video_in, encoder) = match &settings.plan.video {
            VideoPlan::Encode => {
                // Two frames of slack, oldest dropped.
                let frames = live_appsrc("frames", raw_caps(video), 2, true);
                let encoder = encoder::make(settings.encoder, video)?;
                let h264_caps = make("capsfilter", "h264caps")?;
                h264_caps.set_property("caps", encoder::H264_CAPS.parse::<gst::Caps>().expect("valid caps"));
                pipeline.add_many([frames.upcast_ref(), &encoder, &h264_caps]).map_err(link_error)?;
                link(&[frames.upcast_ref(), &encoder, &h264_caps])?;
                (frames, Some((encoder, h264_caps)))
            }
            // A second of frames: dropping one would break decoding until the next keyframe.
            VideoPlan::Forward(_) => {
                let caps =
                    "video/x-h264,stream-format=byte-stream,alignment=au".parse::<gst::Caps>().expect("valid caps");
                let units = live_appsrc("h264", caps, 30, true);
                pipeline.add(&units).map_err(link_error)?;
                (units, None)
            }
        };
        let parse = make("h264parse", "parse")?;
        parse.set_property("config-interval", -1i32);
        let tee = make("tee", "tee")?;

        let hls_queue = queue("hls-queue")?;
        let hls = make("hlssink2", "hls")?;
        let started = strip::unix_now_ms();
        hls.set_property("location", settings.hls_dir.join(format!("segment-{started}-%05d.ts")).to_str());
        hls.set_property("playlist-location", settings.hls_dir.join(HLSSINK2_PLAYLIST).to_str());
        // A camera's segments end at its own keyframes: at least this long, as long as its GOP.
        hls.set_property("target-duration", HLS_SEGMENT_SECONDS);
        hls.set_property("playlist-length", HLS_PLAYLIST_LENGTH as u32);
        // Files are deleted as they leave the public playlist, which outlives this pipeline.
        hls.set_property("max-files", 0u32);
        // The GOP is one segment long, so every segment already starts at a keyframe. hlssink2's
        // own requests would add keyframes, and each makes rtph264pay send SPS/PPS as a separate
        // packet with the marker bit set, which browsers fail to decode and answer with a PLI.
        hls.set_property("send-keyframe-requests", false);

        let pay = make("rtph264pay", "pay")?;
        pay.set_property("config-interval", -1i32);
        pay.set_property("pt", RTP_PAYLOAD_TYPE);
        pay.set_property("mtu", RTP_MTU);
        pay.set_property("timestamp-offset", wall_clock_rtp_time(base_time, VIDEO_CLOCK_RATE));
        // Send each NAL as soon as it is out of the encoder instead of waiting to aggregate.
        pay.set_property_from_str("aggregate-mode", "zero-latency");
        let rtp_sink = packet_sink("rtp", on_video);
        let parts_queue = queue("ll-hls-queue")?;
        let parts_sink = low_latency_video_sink(base_time, low_latency.clone());

        pipeline
            .add_many([&parse, &tee, &hls_queue, &hls, &pay, &rtp_sink, &parts_queue, &parts_sink])
            .map_err(link_error)?;
        let last = encoder.as_ref().map_or(video_in.upcast_ref(), |(_, caps)| caps);
        link(&[last, &parse, &tee])?;
        link(&[&tee, &hls_queue, &hls])?;
        // No queue before the payloader: it and the appsink never block (the appsink drops its
        // oldest), so packets leave on the encoder's own thread instead of waiting for the
        // queue's to wake (that wait: 0.07 ms median, 1.7 ms p95 on a busy machine, measured
        // with LIVEGATE_HOP_TRACE).
        link(&[&tee, &pay, &rtp_sink])?;
        link(&[&tee, &parts_queue, &parts_sink])?;
        if crate::hops::enabled() {
            trace_hops(encoder.as_ref().map(|(encoder, _)| encoder), &pay, video, base_time);
        }

        let audio_in = if settings.plan.audio {
            Some(add_audio(stream, &pipeline, &hls, base_time, on_audio, low_latency)?)
        } else {
            None
        };
        Ok(StreamPipeline {
            pipeline,
            base_time,
            video_in,
            encoder: encoder.map(|(encoder, _)| encoder),
            audio_in,
            awaiting_keyframe: AtomicBool::new(true),
            plan: settings.plan.clone(),
        })
    }

    pub fn play(&self) -> Result<(), MediaError> {
        self.pipeline
            .set_state(gst::State::Playing)
            .map(|_| ())
            .map_err(|_| MediaError::StateChange { stream: self.pipeline.name().to_string() })
    }

    pub fn bus(&self) -> gst::Bus {
        self.pipeline.bus().expect("a pipeline has a bus")
    }

    /// Hands the encoder one raw frame, or forwards one H.264 access unit (from its first
    /// keyframe on); its timestamp is set on arrival. Never blocks: if the pipeline falls behind,
    /// the oldest waiting frame is dropped.
    pub fn push_video(&self, frame: gst::Buffer) {
        if self.encoder.is_none() {
            let keyframe = !frame.flags().contains(gst::BufferFlags::DELTA_UNIT);
            if keyframe {
                self.awaiting_keyframe.store(false, Ordering::Relaxed);
            } else if self.awaiting_keyframe.load(Ordering::Relaxed) {
                return;
            }
        }
        let _ = self.video_in.push_buffer(restamped(frame));
    }

    /// Forwarded H.264 lost a frame on its way here: wait for the camera's next keyframe.
    pub fn resume_at_keyframe(&self) {
        self.awaiting_keyframe.store(true, Ordering::Relaxed);
    }

    /// Raw sound (`source::AUDIO_CAPS`) that arrived from the source at `arrived_unix_ns`,
    /// stamped by when its first sample was captured: its duration before that. (The mixer takes
    /// the first stamp for good and counts samples from it, so it must not carry the delay of
    /// the hand-over to this thread.)
    pub fn push_audio(&self, mut samples: gst::Buffer, arrived_unix_ns: u64) {
        let Some(audio_in) = &self.audio_in else { return };
        let duration = gst::ClockTime::from_nseconds(
            samples.size() as u64 * 1_000_000_000 / (2 * source::AUDIO_CHANNELS as u64 * u64::from(source::AUDIO_RATE)),
        );
        // The pipeline's clock is the realtime one: its running time is wall time less base time.
        let arrived = gst::ClockTime::from_nseconds(arrived_unix_ns).saturating_sub(self.base_time);
        let writable = samples.make_mut();
        writable.set_pts(arrived.saturating_sub(duration));
        writable.set_dts(gst::ClockTime::NONE);
        writable.set_duration(duration);
        let _ = audio_in.push_buffer(samples);
    }

    /// Asks the encoder for a keyframe as soon as it can. h264parse already puts SPS/PPS in
    /// front of every IDR; asking for "all headers" too would make rtph264pay send them again as
    /// a separate marked packet, which browsers cannot decode (and answer with another PLI).
    /// Forwarded video has no encoder to ask: viewers wait for the camera's next keyframe.
    pub fn request_keyframe(&self) -> bool {
        let Some(encoder) = &self.encoder else { return false };
        let event = gst_video::UpstreamForceKeyUnitEvent::builder().all_headers(false).build();
        encoder.send_event(event)
    }

    /// Every element of the pipeline, for tests and diagnostics ("is there an encoder?").
    pub fn element_factories(&self) -> Vec<String> {
        super::capture::element_factories(self.pipeline.upcast_ref())
    }
}

/// Timestamps are set on arrival in the encoding part (`do-timestamp`).
fn restamped(mut buffer: gst::Buffer) -> gst::Buffer {
    let writable = buffer.make_mut();
    writable.set_pts(gst::ClockTime::NONE);
    writable.set_dts(gst::ClockTime::NONE);
    buffer
}

/// A live appsrc keeping at most `max_buffers` (the oldest dropped); it stamps buffers on
/// arrival when `stamp`.
pub(super) fn live_appsrc(
    name: &str,
    caps: impl Into<Option<gst::Caps>>,
    max_buffers: u64,
    stamp: bool,
) -> gst_app::AppSrc {
    let src = gst_app::AppSrc::builder()
        .name(name)
        .is_live(true)
        .format(gst::Format::Time)
        .do_timestamp(stamp)
        .max_buffers(max_buffers)
        .leaky_type(gst_app::AppLeakyType::Downstream)
        .build();
    src.set_caps(caps.into().as_ref());
    src
}

/// An appsink handing each RTP packet over as bytes. It never waits for the pipeline to
/// preroll: with no queue in front, that wait would hold the tee, and HLS could never preroll.
fn packet_sink(name: &str, on_packet: impl Fn(Bytes) + Send + Sync + 'static) -> gst::Element {
    let sink = appsink(name, RTP_SINK_BUFFERS, move |buffer| {
        if let Ok(map) = buffer.map_readable() {
            on_packet(Bytes::copy_from_slice(&map));
        }
    });
    sink.set_property("async", false);
    sink.upcast()
}

/// The RTP timestamp of wall-clock time `at` (nanoseconds since the epoch) at `rate`, modulo
/// 2^32: a payloader given this offset stamps running time `t` as wall time `at + t`.
fn wall_clock_rtp_time(at: gst::ClockTime, rate: u64) -> u32 {
    (u128::from(at.nseconds()) * u128::from(rate) / 1_000_000_000) as u32
}

/// `LIVEGATE_HOP_TRACE` (`crate::hops`): stamps each frame into the encoder (with the capture
/// time of its strip), out of it, and into the payloader, by the RTP time the payloader gives it.
fn trace_hops(encoder: Option<&gst::Element>, pay: &gst::Element, video: &VideoSettings, base_time: gst::ClockTime) {
    use crate::hops::{self, Hop};
    use gst_video::VideoFrameExt;
    let rtp_offset = wall_clock_rtp_time(base_time, VIDEO_CLOCK_RATE);
    /// Called with a frame's RTP time and its buffer.
    type OnFrame = Box<dyn Fn(u32, &gst::BufferRef) + Send + Sync>;
    let on_frames = move |pad: gst::Pad, on_frame: OnFrame| {
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, probe| {
            let segment = pad.sticky_event::<gst::event::Segment>(0);
            let running = segment.as_ref().and_then(|event| event.segment().downcast_ref::<gst::ClockTime>());
            if let (Some(buffer), Some(segment)) = (probe.buffer(), running) {
                if let Some(running) = segment.to_running_time(buffer.pts()) {
                    on_frame(rtp_offset.wrapping_add(wall_clock_rtp_time(running, VIDEO_CLOCK_RATE)), buffer);
                }
            }
            gst::PadProbeReturn::Ok
        });
    };
    if let Some(encoder) = encoder {
        let info = gst_video::VideoInfo::from_caps(&raw_caps(video)).expect("raw caps describe video");
        on_frames(
            encoder.static_pad("sink").expect("encoders have a sink pad"),
            Box::new(move |rtp_time, buffer| {
                let Ok(frame) = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info) else { return };
                let Ok(luma) = frame.plane_data(0) else { return };
                let now_ms = strip::unix_now_ms();
                let strip = strip::decode_luma(luma, frame.plane_stride()[0] as usize, info.width());
                if let Some(latency) = strip.and_then(|value| strip::latency_ms(value, now_ms)) {
                    hops::captured(rtp_time, now_ms - latency);
                }
            }),
        );
        let out = encoder.static_pad("src").expect("encoders have a src pad");
        on_frames(out, Box::new(|rtp_time, _| hops::stamp(rtp_time, Hop::EncoderOut)));
    }
    let into_payloader = pay.static_pad("sink").expect("payloaders have a sink pad");
    on_frames(into_payloader, Box::new(|rtp_time, _| hops::stamp(rtp_time, Hop::PayloaderIn)));
}

/// The sound: the source's (from the returned appsrc) mixed over live silence, so there is
/// always sound to send, whether the source has some, none yet, or lost it; encoded once to Opus
/// for WebRTC and once to AAC-LC for HLS. The AAC encoder is FFmpeg's (`avenc_aac`): better
/// than `voaacenc` at the same bitrate (FFmpeg dropped vo-aacenc for its quality), with the
/// standard 1024-sample delay where `voaacenc` adds 1600, for 0.9 % of a core more (2.7 % against
/// 1.9 % at 128 kbit/s stereo, measured on this machine).
fn add_audio(
    stream: &str,
    pipeline: &gst::Pipeline,
    hls: &gst::Element,
    base_time: gst::ClockTime,
    on_audio: impl Fn(Bytes) + Send + Sync + 'static,
    low_latency: Arc<LowLatencyHls>,
) -> Result<gst_app::AppSrc, MediaError> {
    let link_error = |err: gst::glib::BoolError| MediaError::Link { stream: stream.into(), reason: err.to_string() };
    let caps = source::AUDIO_CAPS.parse::<gst::Caps>().expect("valid caps");
    // Half a second of sound may wait; the oldest goes first.
    let samples = live_appsrc("audio", caps.clone(), 50, false);
    let silence = make("audiotestsrc", "silence")?;
    silence.set_property("is-live", true);
    silence.set_property_from_str("wave", "silence");
    silence.set_property("samplesperbuffer", SILENCE_SAMPLES);
    let silence_caps = make("capsfilter", "silence-caps")?;
    silence_caps.set_property("caps", &caps);
    let mix = make("audiomixer", "mix")?;
    let tee = make("tee", "audio-tee")?;
    let opus_queue = queue("opus-queue")?;
    let opus = make("opusenc", "opus")?;
    opus.set_property("bitrate", OPUS_BITRATE);
    opus.set_property("inband-fec", true);
    opus.set_property("packet-loss-percentage", OPUS_EXPECTED_LOSS_PERCENT);
    opus.set_property("dtx", false);
    opus.set_property_from_str("frame-size", "20");
    let opus_pay = make("rtpopuspay", "opus-pay")?;
    opus_pay.set_property("pt", OPUS_PAYLOAD_TYPE);
    opus_pay.set_property("mtu", RTP_MTU);
    opus_pay.set_property("timestamp-offset", wall_clock_rtp_time(base_time, OPUS_CLOCK_RATE));
    let opus_sink = packet_sink("opus-rtp", on_audio);
    let aac_queue = queue("aac-queue")?;
    // FFmpeg's encoder takes planar float.
    let aac_convert = make("audioconvert", "aac-convert")?;
    let aac = make("avenc_aac", "aac")?;
    aac.set_property("bitrate", AAC_BITRATE);
    starts_when_heard(&aac, AAC_ENCODER_DELAY);
    let aac_parse = make("aacparse", "aac-parse")?;
    let aac_tee = make("tee", "aac-tee")?;
    let parts_queue = queue("ll-hls-audio-queue")?;
    let parts_sink = low_latency_audio_sink(base_time, low_latency);
    pipeline
        .add_many([
            samples.upcast_ref(),
            &silence,
            &silence_caps,
            &mix,
            &tee,
            &opus_queue,
            &opus,
            &opus_pay,
            &opus_sink,
            &aac_queue,
            &aac_convert,
            &aac,
            &aac_parse,
            &aac_tee,
            &parts_queue,
            parts_sink.upcast_ref(),
        ])
        .map_err(link_error)?;
    for chain in [
        &[&silence, &silence_caps, &mix][..],
        &[samples.upcast_ref(), &mix, &tee],
        &[&tee, &opus_queue, &opus, &opus_pay, &opus_sink],
        &[&tee, &aac_queue, &aac_convert, &aac, &aac_parse, &aac_tee],
        &[&aac_tee, &parts_queue, parts_sink.upcast_ref()],
    ] {
        gst::Element::link_many(chain).map_err(link_error)?;
    }
    let unlinked = |reason: String| MediaError::Link { stream: stream.into(), reason };
    let hls_audio = hls.request_pad_simple("audio").ok_or_else(|| unlinked("hlssink2 has no audio pad".into()))?;
    aac_tee
        .request_pad_simple("src_%u")
        .ok_or_else(|| unlinked("a tee always gives a src pad".into()))?
        .link(&hls_audio)
        .map_err(|err| unlinked(format!("AAC into hlssink2: {err}")))?;
    Ok(samples)
}

/// An AAC encoder's output starts with this much priming (1024 samples at 48 kHz for
/// `avenc_aac`, measured by decoding a click), which MPEG-TS cannot signal: players would play
/// the sound that much after the picture.
const AAC_ENCODER_DELAY: gst::ClockTime = gst::ClockTime::from_nseconds(1024 * 1_000_000_000 / 48_000);

/// Stamps what `encoder` outputs `delay` earlier, so its decoded sound lines up with the
/// picture again.
fn starts_when_heard(encoder: &gst::Element, delay: gst::ClockTime) {
    let pad = encoder.static_pad("src").expect("encoders have a src pad");
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, probe| {
        if let Some(buffer) = probe.buffer_mut() {
            let buffer = buffer.make_mut();
            if let Some(pts) = buffer.pts() {
                buffer.set_pts(pts.saturating_sub(delay));
            }
            if let Some(dts) = buffer.dts() {
                buffer.set_dts(dts.saturating_sub(delay));
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// The AAC the encoder writes, as an MP4 sample entry describes it: AAC-LC at the mixer's rate.
pub fn aac_format() -> AudioFormat {
    const AAC_LC: u8 = 2;
    const FREQUENCY_INDEX_48000: u8 = 3;
    debug_assert_eq!(source::AUDIO_RATE, 48_000);
    let channels = source::AUDIO_CHANNELS as u8;
    let config = [(AAC_LC << 3) | (FREQUENCY_INDEX_48000 >> 1), (FREQUENCY_INDEX_48000 << 7) | (channels << 3)];
    AudioFormat::from_config(&config, source::AUDIO_RATE, channels.into()).expect("two bytes of config")
}

/// Wall-clock time of a buffer time in `sample`'s segment, in a pipeline started at
/// `base_time`. (Encoders shift their output's timestamps by 1000 hours, and their segment
/// with them, so that decode times never go below zero: only the running time is wall time.)
fn wall_clock_ns(base_time: gst::ClockTime, sample: &gst::Sample, at: Option<gst::ClockTime>) -> Option<u64> {
    let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
    Some((base_time + segment.to_running_time(at?)?).nseconds())
}

/// Hands the encoded H.264 (Annex B access units) to Low-Latency HLS.
fn low_latency_video_sink(base_time: gst::ClockTime, low_latency: Arc<LowLatencyHls>) -> gst::Element {
    let sink = sample_sink("ll-hls", LOW_LATENCY_BUFFERS, move |sample| {
        let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps().and_then(|c| c.structure(0))) else { return };
        let Some(presentation_ns) = wall_clock_ns(base_time, &sample, buffer.pts()) else { return };
        let Ok(map) = buffer.map_readable() else { return };
        let dimension = |name| caps.get::<i32>(name).ok().and_then(|v| u16::try_from(v).ok()).unwrap_or(0);
        low_latency.push_video(VideoFrame {
            decode_ns: wall_clock_ns(base_time, &sample, buffer.dts()).unwrap_or(presentation_ns),
            presentation_ns,
            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
            annex_b: Bytes::copy_from_slice(&map),
            width: dimension("width"),
            height: dimension("height"),
        });
    });
    sink.set_caps(Some(&"video/x-h264,stream-format=byte-stream,alignment=au".parse().expect("valid caps")));
    sink.upcast()
}

/// Hands raw AAC frames to Low-Latency HLS; asking for raw makes aacparse send MPEG-TS the same.
fn low_latency_audio_sink(base_time: gst::ClockTime, low_latency: Arc<LowLatencyHls>) -> gst_app::AppSink {
    let sink = sample_sink("ll-hls-audio", LOW_LATENCY_BUFFERS, move |sample| {
        let Some(buffer) = sample.buffer() else { return };
        let (Some(presentation_ns), Some(duration)) =
            (wall_clock_ns(base_time, &sample, buffer.pts()), buffer.duration())
        else {
            return;
        };
        let Ok(map) = buffer.map_readable() else { return };
        low_latency.push_audio(AudioFrame {
            presentation_ns,
            duration_ns: duration.nseconds(),
            data: Bytes::copy_from_slice(&map),
        });
    });
    sink.set_caps(Some(&"audio/mpeg,mpegversion=4,stream-format=raw".parse().expect("valid caps")));
    sink
}

/// Whether `message` says hlssink2 finished a segment (and listed it in its playlist).
pub fn closes_hls_segment(message: &gst::Message) -> bool {
    matches!(message.view(), gst::MessageView::Element(element)
        if element.structure().is_some_and(|s| s.has_name("splitmuxsink-fragment-closed")))
}

impl Drop for StreamPipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
