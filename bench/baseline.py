#!/usr/bin/python3
"""The original design, the baseline livegate replaces:

    gst-launch-1.0 videotestsrc is-live=true ! <latency strip> ! x264enc tune=zerolatency ! hlssink2

gst-launch cannot draw the latency strip (docs/latency-strip.md), so this script builds exactly
that pipeline with a pad probe that stamps the strip into every I420 frame as it leaves the
source, the way src/media/strip.rs does for livegate's test source. Everything else is the
elements' defaults: x264enc's bitrate, speed-preset and keyframe interval, hlssink2's
target-duration (15 s), playlist-length (5) and max-files (10).

    /usr/bin/python3 bench/baseline.py OUT_DIR [WIDTH HEIGHT FPS]

Writes OUT_DIR/index.m3u8 and OUT_DIR/segmentNNNNN.ts; runs until SIGINT/SIGTERM.
Needs python3-gi, gir1.2-gstreamer-1.0 and gir1.2-gst-plugins-base-1.0 (Debian).
"""
import ctypes
import ctypes.util
import os
import signal
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstVideo  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "support"))
import strip  # noqa: E402

# The Python bindings (without gst-python's overrides) map buffers as read-only copies and the
# probe's buffer is shared with the binding's own reference, so the strip is written through
# libgstreamer with ctypes: gst_buffer_map(READ) gives the frame's memory, written in place
# (the buffer is the source's own pool buffer; nothing else holds its memory).
class GstMapInfo(ctypes.Structure):
    _fields_ = [
        ("memory", ctypes.c_void_p),
        ("flags", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("size", ctypes.c_size_t),
        ("maxsize", ctypes.c_size_t),
        ("user_data", ctypes.c_void_p * 4),
        ("_gst_reserved", ctypes.c_void_p * 4),
    ]


libgst = ctypes.CDLL(ctypes.util.find_library("gstreamer-1.0") or "libgstreamer-1.0.so.0")
libgst.gst_buffer_map.argtypes = [ctypes.c_void_p, ctypes.POINTER(GstMapInfo), ctypes.c_int]
libgst.gst_buffer_map.restype = ctypes.c_int
libgst.gst_buffer_unmap.argtypes = [ctypes.c_void_p, ctypes.POINTER(GstMapInfo)]
GST_MAP_READ = 1


def c_pointer(boxed):
    """The C pointer inside a PyGObject boxed wrapper (PyObject_HEAD, then the pointer)."""
    return ctypes.c_void_p.from_address(id(boxed) + 2 * ctypes.sizeof(ctypes.c_void_p)).value


def main():
    out_dir = os.path.abspath(sys.argv[1])
    width, height, fps = (int(x) for x in (sys.argv[2:5] if len(sys.argv) >= 5 else (1280, 720, 30)))
    os.makedirs(out_dir, exist_ok=True)
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"videotestsrc is-live=true pattern=smpte horizontal-speed=2 "
        f"! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1,pixel-aspect-ratio=1/1 "
        f"! identity name=strip ! x264enc tune=zerolatency ! hlssink2 name=hls"
    )
    hls = pipeline.get_by_name("hls")
    hls.set_property("location", os.path.join(out_dir, "segment%05d.ts"))
    hls.set_property("playlist-location", os.path.join(out_dir, "index.m3u8"))

    caps = Gst.Caps.from_string(f"video/x-raw,format=I420,width={width},height={height},framerate={fps}/1")
    info = GstVideo.VideoInfo.new_from_caps(caps)
    offsets, strides = list(info.offset), list(info.stride)
    c = width // strip.CELLS
    chroma_rows = (c + 1) // 2
    chroma = strip.chroma_row(c)
    checked = []

    def draw(pad, probe_info):
        buf = probe_info.get_buffer()
        unix_ms = time.time_ns() // 1_000_000  # CLOCK_REALTIME as the frame leaves the source
        ptr = c_pointer(buf)
        if not checked:  # the pointer really is a GstBuffer: its GstMiniObject's GType matches
            gtype = ctypes.c_size_t.from_address(ptr).value
            if gtype != hash(Gst.Buffer.__gtype__):
                print("baseline: cannot reach the GstBuffer through ctypes", file=sys.stderr)
                os._exit(2)
            checked.append(True)
        m = GstMapInfo()
        if not libgst.gst_buffer_map(ptr, ctypes.byref(m), GST_MAP_READ):
            return Gst.PadProbeReturn.OK
        try:
            if m.size >= offsets[2] + strides[2] * chroma_rows:
                row = strip.luma_row(unix_ms, c)
                for y in range(c):
                    ctypes.memmove(m.data + offsets[0] + y * strides[0], row, len(row))
                for plane in (1, 2):
                    for y in range(chroma_rows):
                        ctypes.memmove(m.data + offsets[plane] + y * strides[plane], chroma, len(chroma))
        finally:
            libgst.gst_buffer_unmap(ptr, ctypes.byref(m))
        return Gst.PadProbeReturn.OK

    pipeline.get_by_name("strip").get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, draw)

    loop = GLib.MainLoop()
    bus = pipeline.get_bus()
    bus.add_signal_watch()

    def on_message(_bus, msg):
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            print(f"baseline: {err.message} ({dbg})", file=sys.stderr)
            loop.quit()
        elif msg.type == Gst.MessageType.EOS:
            loop.quit()

    bus.connect("message", on_message)
    for sig in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, lambda: (loop.quit(), False)[1])
    pipeline.set_state(Gst.State.PLAYING)
    print(f"baseline: playing {width}x{height}@{fps} into {out_dir}", file=sys.stderr, flush=True)
    try:
        loop.run()
    finally:
        pipeline.set_state(Gst.State.NULL)


if __name__ == "__main__":
    main()
