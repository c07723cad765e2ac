//! H.264 encoder choice: constrained-baseline, no B-frames, a keyframe every second.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::MediaError;
use crate::config::{EncoderChoice, VideoSettings};

/// The profile every encoder must produce: what browsers decode in hardware and what we advertise.
pub const H264_PROFILE: &str = "constrained-baseline";
/// Caps every encoder must produce.
pub const H264_CAPS: &str = "video/x-h264,profile=constrained-baseline,stream-format=byte-stream,alignment=au";

/// Hardware encoders tried by `auto`, best first, then the software fallback.
const AUTO_ORDER: [EncoderChoice; 5] =
    [EncoderChoice::Nvh264, EncoderChoice::Va, EncoderChoice::Vaapi, EncoderChoice::V4l2, EncoderChoice::X264];

fn factory(choice: EncoderChoice) -> &'static str {
    match choice {
        EncoderChoice::X264 | EncoderChoice::Auto => "x264enc",
        EncoderChoice::V4l2 => "v4l2h264enc",
        EncoderChoice::Va => "vah264enc",
        EncoderChoice::Vaapi => "vaapih264enc",
        EncoderChoice::Nvh264 => "nvh264enc",
    }
}

/// Makes and configures the encoder element for `choice` (not `Auto`).
pub fn make(choice: EncoderChoice, video: &VideoSettings) -> Result<gst::Element, MediaError> {
    let name = factory(choice);
    let kbps = video.bitrate_kbps;
    let gop = video.fps;
    let builder = gst::ElementFactory::make(name).name("encoder");
    let builder = match choice {
        EncoderChoice::X264 | EncoderChoice::Auto => builder
            .property_from_str("tune", "zerolatency")
            .property_from_str("speed-preset", "superfast")
            .property("bitrate", kbps)
            .property("key-int-max", gop)
            // x264's scene-cut detection turns a moving picture into several IDR frames a
            // second (each several times the bits of a P frame): one keyframe per GOP, plus
            // those viewers ask for.
            .property("option-string", "scenecut=0")
            .property("bframes", 0u32)
            // Access unit delimiters mean nothing over RTP (RFC 6184) and cost a packet a frame.
            .property("aud", false)
            // A VBV of a few frames keeps frame sizes even, so no frame waits behind a big one.
            .property("vbv-buf-capacity", 300u32),
        EncoderChoice::V4l2 => builder.property(
            "extra-controls",
            gst::Structure::builder("controls")
                .field("video_bitrate", (kbps * 1000) as i32)
                .field("h264_i_frame_period", gop as i32)
                .build(),
        ),
        EncoderChoice::Va => builder
            .property("bitrate", kbps)
            .property("key-int-max", gop)
            .property("b-frames", 0u32)
            .property_from_str("rate-control", "cbr"),
        EncoderChoice::Vaapi => builder
            .property("bitrate", kbps)
            .property("keyframe-period", gop)
            .property("max-bframes", 0u32)
            .property_from_str("rate-control", "cbr"),
        EncoderChoice::Nvh264 => builder
            .property("bitrate", kbps)
            .property("gop-size", gop as i32)
            .property("bframes", 0u32)
            .property("zerolatency", true),
    };
    builder.build().map_err(|_| MediaError::EncoderUnavailable {
        encoder: name,
        reason: "its GStreamer element is not installed".into(),
    })
}

/// Resolves `auto` to the first encoder that is installed and encodes a frame; an explicit
/// choice is only checked.
pub fn resolve(choice: EncoderChoice, video: &VideoSettings) -> Result<EncoderChoice, MediaError> {
    if choice != EncoderChoice::Auto {
        probe(choice, video)?;
        return Ok(choice);
    }
    for candidate in AUTO_ORDER {
        match probe(candidate, video) {
            Ok(()) => return Ok(candidate),
            Err(err) => tracing::debug!(%err, "encoder not usable"),
        }
    }
    Err(MediaError::EncoderUnavailable { encoder: "x264enc", reason: "install gstreamer1.0-plugins-ugly".into() })
}

/// Encodes a few small frames to EOS: present is not enough, a hardware encoder without its
/// device or driver fails only once data flows.
fn probe(choice: EncoderChoice, video: &VideoSettings) -> Result<(), MediaError> {
    let name = factory(choice);
    if gst::ElementFactory::find(name).is_none() {
        return Err(MediaError::EncoderUnavailable {
            encoder: name,
            reason: "its GStreamer element is not installed".into(),
        });
    }
    let unusable = |reason: String| MediaError::EncoderUnavailable { encoder: name, reason };
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("videotestsrc").property("num-buffers", 3i32).build();
    let caps = gst::ElementFactory::make("capsfilter")
        .property(
            "caps",
            gst::Caps::builder("video/x-raw").field("format", "I420").field("width", 320).field("height", 240).build(),
        )
        .build();
    let encoder = make(choice, video)?;
    let out = gst::ElementFactory::make("capsfilter").property("caps", H264_CAPS.parse::<gst::Caps>().unwrap()).build();
    let sink = gst::ElementFactory::make("fakesink").build();
    let (Ok(src), Ok(caps), Ok(out), Ok(sink)) = (src, caps, out, sink) else {
        return Err(unusable("core elements missing".into()));
    };
    let elements = [&src, &caps, &encoder, &out, &sink];
    pipeline.add_many(elements).map_err(|e| unusable(e.to_string()))?;
    gst::Element::link_many(elements).map_err(|e| unusable(format!("cannot produce {H264_CAPS}: {e}")))?;
    let result = (|| {
        pipeline.set_state(gst::State::Playing).map_err(|e| unusable(e.to_string()))?;
        let bus = pipeline.bus().expect("a pipeline has a bus");
        match bus.timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Eos, gst::MessageType::Error])
        {
            Some(msg) => match msg.view() {
                gst::MessageView::Eos(_) => Ok(()),
                gst::MessageView::Error(err) => Err(unusable(err.error().to_string())),
                _ => unreachable!("filtered"),
            },
            None => Err(unusable("no output within 5 s".into())),
        }
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}
