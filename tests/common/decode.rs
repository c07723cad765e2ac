//! Decoding HLS media with GStreamer, as an independent reader of what livegate wrote.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use livegate::media::strip;

/// What a decoded file showed.
#[derive(Debug)]
pub struct Decoded {
    pub frames: u64,
    /// Frames whose latency strip reads as a recent capture time.
    pub with_strip: u64,
    pub size: (u32, u32),
}

/// Decodes the video of a whole file in `demuxer`'s container (`tsdemux`, `qtdemux`).
pub fn decode_video(demuxer: &str, file: &[u8]) -> Decoded {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=in ! {demuxer} name=demux demux. ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=I420 ! appsink name=out sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let appsrc = pipeline.by_name("in").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    let appsink = pipeline.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    appsrc.push_buffer(gst::Buffer::from_slice(file.to_vec())).unwrap();
    appsrc.end_of_stream().unwrap();
    let mut decoded = Decoded { frames: 0, with_strip: 0, size: (0, 0) };
    while let Some(sample) = appsink.try_pull_sample(gst::ClockTime::from_seconds(5)) {
        let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(sample.buffer().unwrap(), &info).unwrap();
        decoded.frames += 1;
        decoded.size = (info.width(), info.height());
        let value = strip::decode_luma(frame.plane_data(0).unwrap(), info.stride()[0] as usize, info.width());
        if value.and_then(|v| strip::latency_ms(v, strip::unix_now_ms())).is_some() {
            decoded.with_strip += 1;
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    decoded
}
