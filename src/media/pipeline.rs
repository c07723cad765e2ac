//! One stream's encoding part, which runs for the life of the stream: raw frames (from the
//! source or the slate) → encoder → tee → (HLS | RTP packets).

use std::path::Path;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::{encoder, strip, MediaError};
use crate::config::{EncoderChoice, VideoSettings};

/// RTP payload type the payloader writes; each viewer's is rewritten to what it negotiated.
pub const RTP_PAYLOAD_TYPE: u32 = 96;
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
/// RTP packets the appsink holds if the fan-out falls behind (~1 s at 2 Mbit/s).
const RTP_SINK_BUFFERS: u32 = 256;

/// Everything the encoding part needs.
pub struct PipelineSettings<'a> {
    pub video: &'a VideoSettings,
    pub encoder: EncoderChoice,
    pub hls_dir: &'a Path,
}

/// A built encoding pipeline; dropping it stops it.
pub struct StreamPipeline {
    pipeline: gst::Pipeline,
    frames: gst_app::AppSrc,
    encoder: gst::Element,
}

pub fn make(factory: &'static str, name: &str) -> Result<gst::Element, MediaError> {
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

/// An appsink that hands each buffer to `on_buffer` on its streaming thread, without syncing
/// to the clock, keeping at most `max_buffers` (the oldest dropped) if `on_buffer` falls behind.
pub fn appsink(
    name: &str,
    max_buffers: u32,
    on_buffer: impl Fn(gst::Buffer) + Send + Sync + 'static,
) -> gst_app::AppSink {
    gst_app::AppSink::builder()
        .name(name)
        .sync(false)
        .max_buffers(max_buffers)
        .drop(true)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(buffer) = sample.buffer_owned() {
                        on_buffer(buffer);
                    }
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
    /// Builds the encoding part; `on_packet` receives every RTP packet on a streaming thread.
    pub fn build(
        stream: &str,
        settings: &PipelineSettings<'_>,
        on_packet: impl Fn(Bytes) + Send + Sync + 'static,
    ) -> Result<StreamPipeline, MediaError> {
        let video = settings.video;
        let pipeline = gst::Pipeline::with_name(stream);
        pipeline.use_clock(Some(&realtime_clock()));

        // Live, stamped on arrival: frames from the camera and from the slate share one
        // continuous timeline, so HLS never sees a jump. Two frames of slack, oldest dropped.
        let frames = gst_app::AppSrc::builder()
            .name("frames")
            .caps(&raw_caps(video))
            .is_live(true)
            .format(gst::Format::Time)
            .do_timestamp(true)
            .max_buffers(2)
            .leaky_type(gst_app::AppLeakyType::Downstream)
            .build();
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
        hls.set_property("playlist-location", settings.hls_dir.join(HLSSINK2_PLAYLIST).to_str());
        hls.set_property("target-duration", HLS_SEGMENT_SECONDS);
        hls.set_property("playlist-length", HLS_PLAYLIST_LENGTH as u32);
        // Files are deleted as they leave the public playlist, which outlives this pipeline.
        hls.set_property("max-files", 0u32);
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
        let appsink = appsink("rtp", RTP_SINK_BUFFERS, move |buffer| {
            if let Ok(map) = buffer.map_readable() {
                on_packet(Bytes::copy_from_slice(&map));
            }
        });

        let chain = [frames.upcast_ref(), &encoder, &h264_caps, &parse, &tee];
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
        Ok(StreamPipeline { pipeline, frames, encoder })
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

    /// Hands the encoder one raw frame; its timestamp is set on arrival. Never blocks: if the
    /// encoder falls behind, the oldest waiting frame is dropped.
    pub fn push(&self, mut frame: gst::Buffer) {
        let buffer = frame.make_mut();
        buffer.set_pts(gst::ClockTime::NONE);
        buffer.set_dts(gst::ClockTime::NONE);
        let _ = self.frames.push_buffer(frame);
    }

    /// Asks the encoder for a keyframe as soon as it can. h264parse already puts SPS/PPS in
    /// front of every IDR; asking for "all headers" too would make rtph264pay send them again as
    /// a separate marked packet, which browsers cannot decode (and answer with another PLI).
    pub fn request_keyframe(&self) {
        let event = gst_video::UpstreamForceKeyUnitEvent::builder().all_headers(false).build();
        self.encoder.send_event(event);
    }
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
