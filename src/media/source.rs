//! Source bins: each configured source as a bin with one pad of raw video at the target size
//! and rate, I420.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::{camera, MediaError};
use crate::config::{Source, VideoSettings};

/// Where the capture time written into the latency strip comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureClock {
    /// The wall clock when the frame leaves the source (the live test source).
    Now,
    /// The buffer's capture timestamp, which a camera sets when the frame arrives.
    BufferTime,
}

/// Name of the last element of every source bin, whose output the bin exposes.
pub const SOURCE_OUTPUT: &str = "source-output";

/// A capsfilter for I420 at the target size and rate; a bin cannot end in bare caps.
fn target_caps(video: &VideoSettings) -> String {
    format!(
        "capsfilter name={SOURCE_OUTPUT} caps=\"video/x-raw,format=I420,width={},height={},framerate={}/1,pixel-aspect-ratio=1/1\"",
        video.width, video.height, video.fps
    )
}

/// Launch fragment turning any raw video into the target I420 size and rate.
fn normalise(video: &VideoSettings) -> String {
    format!("videoconvert ! videoscale ! videorate ! {}", target_caps(video))
}

/// Builds the launch description of a source and says how its frames are timed.
pub fn describe(source: &Source, video: &VideoSettings) -> Result<(String, CaptureClock), MediaError> {
    Ok(match source {
        // The test source renders straight at the target caps: nothing to convert.
        Source::Test => (
            format!("videotestsrc is-live=true pattern=smpte horizontal-speed=2 ! {}", target_caps(video)),
            CaptureClock::Now,
        ),
        Source::V4l2 { device } => {
            let device = device.display().to_string();
            let mode = probe_camera(&device, video)?;
            let decode = if mode.format.needs_jpeg_decoder() { "jpegdec ! " } else { "" };
            (
                format!(
                    "v4l2src device=\"{device}\" ! {} ! queue leaky=downstream max-size-buffers=2 max-size-time=0 max-size-bytes=0 ! {decode}{}",
                    mode.caps(),
                    normalise(video)
                ),
                CaptureClock::BufferTime,
            )
        }
        Source::Rtsp { url } => (
            format!("rtspsrc location=\"{url}\" latency=200 ! decodebin ! {}", normalise(video)),
            CaptureClock::BufferTime,
        ),
        // Files are not live: clocksync plays them at their own pace.
        Source::File { path } => (
            format!("filesrc location=\"{}\" ! decodebin ! clocksync ! {}", path.display(), normalise(video)),
            CaptureClock::BufferTime,
        ),
        Source::Gst { launch } => (format!("{launch} ! {}", normalise(video)), CaptureClock::BufferTime),
    })
}

/// Opens the camera far enough to read the modes it offers, and picks one.
fn probe_camera(device: &str, video: &VideoSettings) -> Result<camera::CameraMode, MediaError> {
    if !std::path::Path::new(device).exists() {
        return Err(MediaError::Camera { device: device.into(), reason: "no such device".into() });
    }
    let src = gst::ElementFactory::make("v4l2src")
        .property("device", device)
        .build()
        .map_err(|_| MediaError::MissingElement { factory: "v4l2src", package: "gstreamer1.0-plugins-good" })?;
    src.set_state(gst::State::Ready).map_err(|_| MediaError::Camera {
        device: device.into(),
        reason: "cannot open it (busy, or not a capture device?)".into(),
    })?;
    let caps = src.static_pad("src").map(|pad| pad.query_caps(None));
    let _ = src.set_state(gst::State::Null);
    let caps = caps.ok_or_else(|| MediaError::Camera { device: device.into(), reason: "no source pad".into() })?;
    camera::choose(&caps, video.width, video.height, video.fps).ok_or_else(|| MediaError::Camera {
        device: device.into(),
        reason: format!("offers no YUY2, NV12, I420 or MJPEG mode (it offers {caps})"),
    })
}
