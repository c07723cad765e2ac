//! Sources: each configured source described as a bin with raw video at the target size and
//! rate (I420) and, when it has sound, raw audio at 48 kHz; RTSP cameras and files are opened
//! by `uridecodebin`, whose streams the capture sorts out as they appear.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::{camera, MediaError};
use crate::config::{AudioDevice, Source, VideoSettings};

/// Where the capture time written into the latency strip comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureClock {
    /// The wall clock when the frame leaves the source (the live test source).
    Now,
    /// The buffer's capture timestamp, which a camera sets when the frame arrives.
    BufferTime,
}

/// Name of the last element of every launch-described source, whose output the bin exposes.
pub const SOURCE_OUTPUT: &str = "source-output";
/// Name of the last element of a launch-described source's audio, when it has some.
pub const AUDIO_OUTPUT: &str = "audio-output";
/// Raw audio as every source hands it over: what both audio encoders take.
pub const AUDIO_CAPS: &str = "audio/x-raw,format=S16LE,layout=interleaved,rate=48000,channels=2";
pub const AUDIO_RATE: u32 = 48_000;
pub const AUDIO_CHANNELS: usize = 2;
/// The element a `gst:` fragment names to offer its sound.
pub const GST_AUDIO_ELEMENT: &str = "audio";

/// How a source is built.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceBin {
    /// A launch description ending in `SOURCE_OUTPUT` (raw video at the target size and rate)
    /// and, when `audio`, in `AUDIO_OUTPUT` too.
    Launch { description: String, clock: CaptureClock, audio: bool },
    /// A URI opened by `uridecodebin`, whose streams are known only once it has found them;
    /// `live` unless it is a file, which plays at its own pace.
    Uri { uri: String, live: bool },
    /// RTP handed over by the stream's inlet (a WHEP origin's), sorted out like a URI's streams.
    Rtp,
}

/// What the source is asked for besides its video.
#[derive(Debug, Clone, Copy)]
pub struct SourceOptions<'a> {
    pub video: &'a VideoSettings,
    pub audio: bool,
    pub audio_device: Option<&'a AudioDevice>,
}

/// A capsfilter for I420 at the target size and rate; a bin cannot end in bare caps.
fn target_caps(video: &VideoSettings) -> String {
    format!(
        "capsfilter name={SOURCE_OUTPUT} caps=\"video/x-raw,format=I420,width={},height={},framerate={}/1,pixel-aspect-ratio=1/1\"",
        video.width, video.height, video.fps
    )
}

/// Launch fragment turning any raw video into the target I420 size and rate.
pub fn normalise(video: &VideoSettings) -> String {
    normalise_from(video, None)
}

/// Like [`normalise`], for video that already comes at `rate` (a camera mode). At the target
/// rate it needs no `videorate`, which holds every frame until the next one has arrived (a
/// whole frame period, 33 ms at 30 fps, measured) and would repeat frames when a camera slows
/// down in the dark.
fn normalise_from(video: &VideoSettings, rate: Option<gst::Fraction>) -> String {
    let target = gst::Fraction::new(video.fps as i32, 1);
    let rate_converter = if rate == Some(target) { "" } else { "videorate ! " };
    format!("videoconvert ! videoscale ! {rate_converter}{}", target_caps(video))
}

/// Launch fragment turning any raw audio into `AUDIO_CAPS`, never holding up the video.
pub fn normalise_audio() -> String {
    format!(
        "queue leaky=downstream max-size-time=200000000 max-size-buffers=0 max-size-bytes=0 ! audioconvert ! audioresample ! capsfilter name={AUDIO_OUTPUT} caps=\"{AUDIO_CAPS}\""
    )
}

/// Builds the description of a source and says how its frames are timed.
pub fn describe(source: &Source, options: SourceOptions<'_>) -> Result<SourceBin, MediaError> {
    let video = options.video;
    Ok(match source {
        // The test source renders straight at the target caps: nothing to convert. Its tone
        // gets a click on every full second from the capture (`clicks`).
        Source::Test => {
            let tone = format!(
                " audiotestsrc is-live=true wave=sine freq=440 volume=0.1 samplesperbuffer=480 ! capsfilter name={AUDIO_OUTPUT} caps=\"{AUDIO_CAPS}\""
            );
            let audio = declared_audio(source, options) == Some(true);
            SourceBin::Launch {
                description: format!(
                    "videotestsrc is-live=true pattern=smpte horizontal-speed=2 ! {}{}",
                    target_caps(video),
                    if audio { tone.as_str() } else { "" }
                ),
                clock: CaptureClock::Now,
                audio,
            }
        }
        Source::V4l2 { device } => {
            let microphone = match (options.audio, options.audio_device) {
                (true, Some(chosen)) => microphone(device, chosen),
                _ => None,
            };
            let device = device.display().to_string();
            let mode = probe_camera(&device, video)?;
            let decode = if mode.format.needs_jpeg_decoder() { "jpegdec ! " } else { "" };
            let audio = microphone.as_ref().map(|src| format!(" {src} ! {}", normalise_audio())).unwrap_or_default();
            SourceBin::Launch {
                description: format!(
                    "v4l2src device=\"{device}\" ! {} ! queue leaky=downstream max-size-buffers=2 max-size-time=0 max-size-bytes=0 ! {decode}{}{audio}",
                    mode.caps(),
                    normalise_from(video, Some(mode.fps))
                ),
                clock: CaptureClock::BufferTime,
                audio: microphone.is_some(),
            }
        }
        Source::Rtsp { url } => SourceBin::Uri { uri: url.clone(), live: true },
        Source::File { path } => {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let uri = gst::glib::filename_to_uri(&absolute, None).map_err(|err| MediaError::File {
                path: path.clone(),
                reason: format!("not a usable file name: {err}"),
            })?;
            SourceBin::Uri { uri: uri.to_string(), live: false }
        }
        Source::Gst { launch } => {
            let named = names_audio_element(launch);
            let audio = declared_audio(source, options) == Some(true);
            // Sound that is not wanted still needs somewhere to go, or its source fails.
            let audio_chain = match (named, audio) {
                (true, true) => format!(" {GST_AUDIO_ELEMENT}. ! {}", normalise_audio()),
                (true, false) => format!(" {GST_AUDIO_ELEMENT}. ! fakesink sync=false"),
                _ => String::new(),
            };
            SourceBin::Launch {
                description: format!("{launch} ! {}{audio_chain}", normalise(video)),
                clock: CaptureClock::BufferTime,
                audio,
            }
        }
        Source::Whep(_) => SourceBin::Rtp,
    })
}

/// Whether the source has sound, when its configuration alone says; `None` when only the source
/// can tell, once opened (an RTSP camera, a file).
pub fn declared_audio(source: &Source, options: SourceOptions<'_>) -> Option<bool> {
    if !options.audio {
        return Some(false);
    }
    match source {
        Source::Test => Some(true),
        Source::Gst { launch } => Some(names_audio_element(launch)),
        Source::V4l2 { device } => {
            Some(options.audio_device.is_some_and(|chosen| microphone(device, chosen).is_some()))
        }
        Source::Rtsp { .. } | Source::File { .. } | Source::Whep(_) => None,
    }
}

/// Whether a launch fragment has an element named `audio` (`… name=audio …`).
fn names_audio_element(launch: &str) -> bool {
    launch.split_whitespace().any(|token| token == format!("name={GST_AUDIO_ELEMENT}"))
}

/// The source element of a camera's microphone, if it has one.
fn microphone(device: &std::path::Path, chosen: &AudioDevice) -> Option<String> {
    match chosen {
        AudioDevice::Auto => {
            let sysfs = (std::path::Path::new(camera::SYSFS_VIDEO4LINUX), std::path::Path::new(camera::SYSFS_SOUND));
            match camera::sound_card_of(sysfs.0, sysfs.1, device) {
                Some(card) => Some(format!("alsasrc device=plughw:{card}")),
                None => {
                    tracing::info!(camera = %device.display(), "no sound card on the camera's USB device: video only");
                    None
                }
            }
        }
        AudioDevice::Alsa(name) => Some(format!("alsasrc device=\"{name}\"")),
        AudioDevice::Pulse(name) => Some(format!("pulsesrc device=\"{name}\"")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const VIDEO: VideoSettings = VideoSettings { width: 640, height: 360, fps: 30, bitrate_kbps: 1000 };

    #[test]
    fn a_gst_fragment_offers_sound_by_naming_an_element_audio() {
        let options = SourceOptions { video: &VIDEO, audio: true, audio_device: None };
        let with = Source::Gst { launch: "audiotestsrc is-live=true name=audio videotestsrc is-live=true".into() };
        let SourceBin::Launch { description, audio, .. } = describe(&with, options).unwrap() else { panic!() };
        assert!(audio);
        assert!(description.contains(" audio. ! queue"), "{description}");
        let without = Source::Gst { launch: "videotestsrc name=audiovisual".into() };
        assert!(matches!(describe(&without, options).unwrap(), SourceBin::Launch { audio: false, .. }));
        let off = SourceOptions { audio: false, ..options };
        assert!(matches!(describe(&with, off).unwrap(), SourceBin::Launch { audio: false, .. }));
    }

    #[test]
    fn a_camera_at_the_target_rate_skips_videorate() {
        assert!(!normalise_from(&VIDEO, Some(gst::Fraction::new(30, 1))).contains("videorate"));
        assert!(normalise_from(&VIDEO, Some(gst::Fraction::new(60, 1))).contains("videorate ! capsfilter"));
        assert!(normalise(&VIDEO).contains("videorate"), "a source of unknown rate is converted");
    }

    #[test]
    fn cameras_and_files_are_opened_by_uri() {
        let options = SourceOptions { video: &VIDEO, audio: true, audio_device: None };
        let rtsp = Source::Rtsp { url: "rtsp://cam.local/h264".into() };
        assert_eq!(
            describe(&rtsp, options).unwrap(),
            SourceBin::Uri { uri: "rtsp://cam.local/h264".into(), live: true }
        );
        let file = Source::File { path: "/srv/clips/a b.mp4".into() };
        assert_eq!(
            describe(&file, options).unwrap(),
            SourceBin::Uri { uri: "file:///srv/clips/a%20b.mp4".into(), live: false }
        );
    }
}
