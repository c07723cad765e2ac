//! One stream's capture part: the source bin, the latency strip, and an appsink that hands each
//! raw frame to the encoding part. It may fail, stall and be rebuilt; the encoder never notices.

use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::pipeline::{appsink, make, raw_caps, realtime_clock};
use super::source::{self, CaptureClock};
use super::{strip, MediaError};
use crate::config::{Source, VideoSettings};

/// Frames waiting for the encoder: more only add latency (the oldest are dropped).
const FRAMES_QUEUED: u32 = 2;

/// A running capture; dropping it stops the source (set it to NULL off the async runtime).
pub struct Capture {
    pipeline: gst::Pipeline,
}

impl Capture {
    /// Builds and starts the source; `on_frame` gets each frame (I420 at the stream's size and
    /// rate) on a streaming thread.
    pub fn start(
        stream: &str,
        source: &Source,
        video: &VideoSettings,
        latency_strip: bool,
        on_frame: impl Fn(gst::Buffer) + Send + Sync + 'static,
    ) -> Result<Capture, MediaError> {
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

        let pipeline = gst::Pipeline::with_name(&format!("{stream}-capture"));
        pipeline.use_clock(Some(&realtime_clock()));
        let strip_tap = make("identity", "strip")?;
        let sink = appsink("frames", FRAMES_QUEUED, on_frame);
        sink.set_caps(Some(&raw_caps(video)));
        let chain = [source_bin.upcast_ref(), &strip_tap, sink.upcast_ref()];
        let link_error =
            |err: gst::glib::BoolError| MediaError::Link { stream: stream.into(), reason: err.to_string() };
        pipeline.add_many(chain).map_err(link_error)?;
        gst::Element::link_many(chain).map_err(link_error)?;
        if latency_strip || *source == Source::Test {
            draw_strip_on(&strip_tap, video, capture_clock)?;
        }
        pipeline.set_state(gst::State::Playing).map_err(|_| MediaError::StateChange { stream: stream.into() })?;
        Ok(Capture { pipeline })
    }

    pub fn bus(&self) -> gst::Bus {
        self.pipeline.bus().expect("a pipeline has a bus")
    }
}

impl Drop for Capture {
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
