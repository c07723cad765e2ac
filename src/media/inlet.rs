//! RTP handed to a stream from outside GStreamer (a WHEP origin's, received by `relay`): the
//! current capture's appsrcs take it, and keyframe requests go back the other way.

use std::sync::Mutex;

use gstreamer as gst;
use gstreamer_app as gst_app;

/// Which of the stream's inputs a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpMedia {
    Video,
    Audio,
}

/// What an RTP stream carries, as its caps need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpFormat {
    /// `H264`, `OPUS`.
    pub encoding_name: String,
    pub clock_rate: u32,
    pub payload_type: u8,
}

/// A stream's way in for RTP.
#[derive(Default)]
pub struct RtpInlet {
    current: Mutex<Option<Inputs>>,
    keyframes: tokio::sync::Notify,
}

impl std::fmt::Debug for RtpInlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpInlet").finish_non_exhaustive()
    }
}

/// The appsrcs of the running capture, and the caps each was last given.
struct Inputs {
    video: (gst_app::AppSrc, Option<RtpFormat>),
    audio: (gst_app::AppSrc, Option<RtpFormat>),
}

impl RtpInlet {
    /// Hands one packet to the running capture (dropped while none runs).
    pub fn push(&self, media: RtpMedia, format: &RtpFormat, packet: &[u8]) {
        let mut current = self.current.lock().expect("inlet lock");
        let Some(inputs) = current.as_mut() else { return };
        let (src, caps_of) = match media {
            RtpMedia::Video => (&inputs.video.0, &mut inputs.video.1),
            RtpMedia::Audio => (&inputs.audio.0, &mut inputs.audio.1),
        };
        if caps_of.as_ref() != Some(format) {
            let kind = if media == RtpMedia::Video { "video" } else { "audio" };
            let caps = gst::Caps::builder("application/x-rtp")
                .field("media", kind)
                .field("encoding-name", format.encoding_name.as_str())
                .field("clock-rate", format.clock_rate as i32)
                .field("payload", i32::from(format.payload_type))
                .build();
            src.set_caps(Some(&caps));
            *caps_of = Some(format.clone());
        }
        let _ = src.push_buffer(gst::Buffer::from_slice(packet.to_vec()));
    }

    /// Waits until the stream wants a keyframe from upstream.
    pub async fn keyframe_wanted(&self) {
        self.keyframes.notified().await;
    }

    pub(super) fn request_keyframe(&self) {
        self.keyframes.notify_one();
    }

    /// The capture that takes packets from now on.
    pub(super) fn attach(&self, video: gst_app::AppSrc, audio: gst_app::AppSrc) {
        *self.current.lock().expect("inlet lock") = Some(Inputs { video: (video, None), audio: (audio, None) });
    }

    /// A capture that stops takes no more (unless another took over already).
    pub(super) fn detach(&self, video: &gst_app::AppSrc) {
        let mut current = self.current.lock().expect("inlet lock");
        if current.as_ref().is_some_and(|inputs| &inputs.video.0 == video) {
            *current = None;
        }
    }
}
