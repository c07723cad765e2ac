//! One stream's pipeline: source → strip → encoder → tee → (HLS | RTP packets).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::source::{self, CaptureClock};
use super::{encoder, strip, MediaError};
use crate::config::{EncoderChoice, Source, VideoSettings};

/// RTP payload type the payloader writes; each viewer's is rewritten to what it negotiated.
pub const RTP_PAYLOAD_TYPE: u32 = 96;
/// Fits any path MTU a browser will meet, with room for SRTP and header extensions.
pub const RTP_MTU: u32 = 1200;
pub const HLS_PLAYLIST: &str = "index.m3u8";
pub const HLS_SEGMENT_SECONDS: u32 = 1;

/// Everything a pipeline needs besides its source.
pub struct PipelineSettings<'a> {
    pub video: &'a VideoSettings,
    pub encoder: EncoderChoice,
    pub latency_strip: bool,
    pub hls_dir: &'a Path,
}

/// A built pipeline; dropping it stops it.
pub struct StreamPipeline {
    pipeline: gst::Pipeline,
    encoder: gst::Element,
}

fn make(factory: &'static str, name: &str) -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make(factory).name(name).build().map_err(|_| MediaError::MissingElement {
        factory,
        package: match factory {
            "x264enc" => "gstreamer1.0-plugins-ugly",
            "hlssink2" | "h264parse" => "gstreamer1.0-plugins-bad",
            "rtph264pay" => "gstreamer1.0-plugins-good",
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

impl StreamPipeline {
    /// Builds the pipeline; `on_packet` receives every RTP packet on a streaming thread.
    pub fn build(
        stream: &str,
        source: &Source,
        settings: &PipelineSettings<'_>,
        on_packet: impl Fn(Bytes) + Send + Sync + 'static,
    ) -> Result<StreamPipeline, MediaError> {
        let video = settings.video;
        let (description, capture_clock) = source::describe(source, video)?;
        let source_error = |reason: String| MediaError::Source { stream: stream.into(), reason };
        // Ghosting only our own output: ghosting "unlinked" pads would also grab the input of an
        // element waiting for a dynamic pad (decodebin, rtspsrc) and break that delayed link.
        let source_bin = gst::parse::bin_from_description(&description, false)
            .map_err(|err| source_error(format!("{err} (in `{description}`)")))?;
        let output = source_bin
            .by_name(source::SOURCE_OUTPUT)
            .and_then(|element| element.static_pad("src"))
            .ok_or_else(|| source_error(format!("no output in `{description}`")))?;
        let ghost = gst::GhostPad::with_target(&output).map_err(|err| source_error(err.to_string()))?;
        source_bin.add_pad(&ghost).map_err(|err| source_error(err.to_string()))?;
        source_bin.set_property("name", "source");

        let pipeline = gst::Pipeline::with_name(stream);
        // The strip carries wall-clock capture times, so running time must map to wall time.
        let realtime: gst::SystemClock =
            gst::glib::Object::builder().property("clock-type", gst::ClockType::Realtime).build();
        pipeline.use_clock(Some(&realtime));

        let strip_tap = make("identity", "strip")?;
        let encoder = encoder::make(settings.encoder, video)?;
        let h264_caps = make("capsfilter", "h264caps")?;
        h264_caps.set_property("caps", encoder::H264_CAPS.parse::<gst::Caps>().expect("valid caps"));
        let parse = make("h264parse", "parse")?;
        parse.set_property("config-interval", -1i32);
        let tee = make("tee", "tee")?;

        let hls_queue = queue("hls-queue")?;
        let hls = make("hlssink2", "hls")?;
        let started = strip::unix_now_ms();
        hls.set_property("location", settings.hls_dir.join(format!("segment-{started}-%05d.ts")).to_str());
        hls.set_property("playlist-location", settings.hls_dir.join(HLS_PLAYLIST).to_str());
        hls.set_property("target-duration", HLS_SEGMENT_SECONDS);
        hls.set_property("playlist-length", 6u32);
        hls.set_property("max-files", 12u32);
        // The GOP is one segment long, so every segment already starts at a keyframe. hlssink2's
        // own requests would add keyframes, and each makes rtph264pay send SPS/PPS as a separate
        // packet with the marker bit set, which browsers fail to decode and answer with a PLI.
        hls.set_property("send-keyframe-requests", false);

        let rtp_queue = queue("rtp-queue")?;
        let pay = make("rtph264pay", "pay")?;
        pay.set_property("config-interval", -1i32);
        pay.set_property("pt", RTP_PAYLOAD_TYPE);
        pay.set_property("mtu", RTP_MTU);
        // Send each NAL as soon as it is out of the encoder instead of waiting to aggregate.
        pay.set_property_from_str("aggregate-mode", "zero-latency");
        let appsink = gst_app::AppSink::builder()
            .name("rtp")
            .sync(false)
            .max_buffers(256)
            .drop(true)
            .callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        if let Some(buffer) = sample.buffer() {
                            let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                            on_packet(Bytes::copy_from_slice(&map));
                        }
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            )
            .build();

        let chain = [source_bin.upcast_ref(), &strip_tap, &encoder, &h264_caps, &parse, &tee];
        pipeline
            .add_many(chain)
            .and_then(|_| pipeline.add_many([&hls_queue, &hls, &rtp_queue, &pay, appsink.upcast_ref()]))
            .map_err(|err| MediaError::Link { stream: stream.into(), reason: err.to_string() })?;
        let link = |elements: &[&gst::Element]| {
            gst::Element::link_many(elements)
                .map_err(|err| MediaError::Link { stream: stream.into(), reason: err.to_string() })
        };
        link(&chain)?;
        link(&[&tee, &hls_queue, &hls])?;
        link(&[&tee, &rtp_queue, &pay, appsink.upcast_ref()])?;

        if settings.latency_strip || *source == Source::Test {
            draw_strip_on(&strip_tap, video, capture_clock)?;
        }
        Ok(StreamPipeline { pipeline, encoder })
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

    /// Asks the encoder for a keyframe as soon as it can. h264parse already puts SPS/PPS in
    /// front of every IDR; asking for "all headers" too would make rtph264pay send them again as
    /// a separate marked packet, which browsers cannot decode (and answer with another PLI).
    pub fn request_keyframe(&self) {
        let event = gst_video::UpstreamForceKeyUnitEvent::builder().all_headers(false).build();
        self.encoder.send_event(event);
    }
}

impl Drop for StreamPipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn draw_strip_on(element: &gst::Element, video: &VideoSettings, clock: CaptureClock) -> Result<(), MediaError> {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, video.width, video.height)
        .build()
        .map_err(|err| MediaError::Link { stream: "strip".into(), reason: err.to_string() })?;
    let info = Arc::new(info);
    let pad = element.static_pad("src").expect("identity has a src pad");
    let _ = pad.add_probe(gst::PadProbeType::BUFFER, move |pad, probe| {
        let unix_ms = match clock {
            CaptureClock::Now => Some(strip::unix_now_ms()),
            CaptureClock::BufferTime => probe.buffer().and_then(|buffer| capture_time_ms(pad, buffer)),
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

/// Wall-clock capture time of a buffer: the pipeline runs on the realtime clock, so base time
/// plus the buffer's running time is the moment it was captured.
fn capture_time_ms(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<u64> {
    let pts = buffer.pts()?;
    let segment = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = segment.segment().downcast_ref::<gst::ClockTime>()?;
    let running = segment.to_running_time(pts)?;
    let base = pad.parent_element()?.base_time()?;
    Some((base + running).mseconds())
}
