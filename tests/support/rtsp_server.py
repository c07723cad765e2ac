#!/usr/bin/python3
"""A real RTSP camera for tests: gst-rtsp-server serving a live test pattern.

usage: rtsp_server.py PORT [--path /cam] [--video h264|h265]
                           [--profile constrained-baseline|baseline|main|high]
                           [--size WxH] [--fps N] [--bitrate KBPS] [--gop FRAMES]
                           [--bframes N] [--audio none|aac|opus] [--click] [--strip]
                           [--pattern NAME[,PROP=VALUE...]]

Serves rtsp://127.0.0.1:PORT/cam (or --path) until killed and prints "ready" once it
listens. With no flags it is the camera the tests have always used: 640x360 at 30 fps,
H.264 from x264enc tuned for zero latency, a keyframe every 30 frames, no audio.
--bframes without --profile implies main; x264 writes "baseline" as Constrained Baseline.

--pattern picks the picture (any videotestsrc pattern, with videotestsrc properties after it):
the ball compresses to ~0.3 Mbit/s at 1080p whatever --bitrate says, while a real camera spends
its whole budget. `smpte,horizontal-speed=4` (moving bars; their noise patch) makes x264 reach
--bitrate for ~0.45 core at 1080p30, with keyframes not much larger than the other frames.
`zone-plate,kx2=20,ky2=20,kt=1` (moving rings) reaches it with camera-like keyframes (~6x the
other frames) but costs ~1 core, more than one thread can do in real time on a small machine.

--strip draws the latency strip (docs/latency-strip.md) carrying each frame's capture
time; --click overwrites the first 5 ms of every wall-clock second of the audio with a
loud square wave, so audio/video sync can be measured against the same clock.

SIGUSR1 makes the camera stall, as real ones do: the RTSP session stays up but no more
video (or audio) is sent; a second SIGUSR1 resumes it.
"""
import argparse
import ctypes
import itertools
import signal
import struct
import sys
import traceback

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstRtspServer, GstVideo  # noqa: E402

import strip  # noqa: E402  (beside this script)

Gst.init(None)

AUDIO_RATE = 48000
AUDIO_CHANNELS = 2
CLICK_NS = 5_000_000
CLICK_HALF_PERIOD_NS = 250_000
CLICK_LEVEL = 26000

# --- Writable access to buffers in pad probes -----------------------------------------
#
# Without gst-python's overrides, PyGObject can neither map a buffer for writing nor make
# it writable (its wrapper holds an extra reference). So the drawing probes are plain C
# callbacks through ctypes: they see the probe's own reference, make the buffer writable
# the way C elements do, and write into the mapped memory.

_gst = ctypes.CDLL("libgstreamer-1.0.so.0")
_gst_video = ctypes.CDLL("libgstvideo-1.0.so.0")

GST_PAD_PROBE_TYPE_BUFFER = 1 << 4
GST_PAD_PROBE_OK = 1
GST_MAP_WRITE = 1 << 1


class _PadProbeInfo(ctypes.Structure):
    # Leading fields of GstPadProbeInfo.
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_ulong), ("data", ctypes.c_void_p)]


class _Buffer(ctypes.Structure):
    # GstMiniObject followed by the leading fields of GstBuffer.
    _fields_ = [
        ("type", ctypes.c_size_t),
        ("refcount", ctypes.c_int),
        ("lockstate", ctypes.c_int),
        ("flags", ctypes.c_uint),
        ("copy", ctypes.c_void_p),
        ("dispose", ctypes.c_void_p),
        ("free", ctypes.c_void_p),
        ("priv_uint", ctypes.c_uint),
        ("priv_pointer", ctypes.c_void_p),
        ("pool", ctypes.c_void_p),
        ("pts", ctypes.c_uint64),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("memory", ctypes.c_void_p),
        ("flags", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("size", ctypes.c_size_t),
        ("maxsize", ctypes.c_size_t),
        ("user_data", ctypes.c_void_p * 4),
        ("_gst_reserved", ctypes.c_void_p * 4),
    ]


class _VideoMeta(ctypes.Structure):
    # Leading fields of GstVideoMeta (GstMeta is a flags enum and a pointer).
    _fields_ = [
        ("meta_flags", ctypes.c_int),
        ("meta_info", ctypes.c_void_p),
        ("buffer", ctypes.c_void_p),
        ("flags", ctypes.c_int),
        ("format", ctypes.c_int),
        ("id", ctypes.c_uint),
        ("width", ctypes.c_uint),
        ("height", ctypes.c_uint),
        ("n_planes", ctypes.c_uint),
        ("offset", ctypes.c_size_t * 4),
        ("stride", ctypes.c_int * 4),
    ]


_PROBE_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_gst.gst_pad_add_probe.restype = ctypes.c_ulong
_gst.gst_pad_add_probe.argtypes = [
    ctypes.c_void_p, ctypes.c_int, _PROBE_CALLBACK, ctypes.c_void_p, ctypes.c_void_p,
]
_gst.gst_mini_object_is_writable.argtypes = [ctypes.c_void_p]
_gst.gst_mini_object_make_writable.restype = ctypes.c_void_p
_gst.gst_mini_object_make_writable.argtypes = [ctypes.c_void_p]
_gst.gst_buffer_map.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MapInfo), ctypes.c_int]
_gst.gst_buffer_unmap.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MapInfo)]
_gst.gst_buffer_get_meta.restype = ctypes.c_void_p
_gst.gst_buffer_get_meta.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_gst_video.gst_video_meta_api_get_type.restype = ctypes.c_size_t
ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

_probes = {}  # user_data of a C probe -> (pad, handler)
_probe_keys = itertools.count(1)


@_PROBE_CALLBACK
def _on_buffer(_pad, info_pointer, key):
    # An exception escaping a ctypes callback would return 0, GST_PAD_PROBE_DROP.
    try:
        pad, handler = _probes[key]
        info = _PadProbeInfo.from_address(info_pointer)
        buffer = info.data
        if not _gst.gst_mini_object_is_writable(buffer):
            buffer = info.data = _gst.gst_mini_object_make_writable(buffer)
        pts = _Buffer.from_address(buffer).pts
        if pts == Gst.CLOCK_TIME_NONE:
            return GST_PAD_PROBE_OK
        mapped = _MapInfo()
        if not _gst.gst_buffer_map(buffer, ctypes.byref(mapped), GST_MAP_WRITE):
            return GST_PAD_PROBE_OK
        try:
            handler(buffer, capture_time_ns(pad, pts), mapped.data, mapped.size)
        finally:
            _gst.gst_buffer_unmap(buffer, ctypes.byref(mapped))
    except Exception:  # keep the stream flowing, but say why
        traceback.print_exc()
    return GST_PAD_PROBE_OK


def add_writable_probe(pad, handler):
    """Calls handler(buffer, capture_ns, data_address, size) on each buffer leaving pad.

    Returns a key for _probes, to forget the handler once the pipeline is gone.
    """
    key = next(_probe_keys)
    _probes[key] = (pad, handler)
    pad_pointer = ctypes.pythonapi.PyCapsule_GetPointer(pad.__gpointer__, None)
    _gst.gst_pad_add_probe(pad_pointer, GST_PAD_PROBE_TYPE_BUFFER, _on_buffer, key, None)
    return key


def capture_time_ns(pad, pts):
    """Base time + running time: the wall-clock time a live source let the buffer go.

    It is Unix time only because the media pipeline runs on the realtime clock.
    """
    segment = pad.get_sticky_event(Gst.EventType.SEGMENT, 0).parse_segment()
    running_time = segment.to_running_time(Gst.Format.TIME, pts)
    return pad.get_parent_element().get_base_time() + running_time


class StripPainter:
    """Draws the latency strip into I420 frames, as src/media/strip.rs draw_i420 does."""

    def __init__(self, pad):
        self.pad = pad
        self.caps = None
        self.meta_api = _gst_video.gst_video_meta_api_get_type()

    def _update(self):
        caps = self.pad.get_current_caps()
        if self.caps is not None and caps.is_equal(self.caps):
            return
        info = GstVideo.VideoInfo.new_from_caps(caps)
        self.caps = caps
        self.offsets = list(info.offset[:3])
        self.strides = list(info.stride[:3])
        self.cell = info.width // strip.CELLS
        self.chroma_row = strip.chroma_row(self.cell)
        # Chroma is subsampled by two both ways; round up so odd cell sizes stay covered.
        self.chroma_rows = -(-self.cell // 2)

    def __call__(self, buffer, capture_ns, data, size):
        self._update()
        offsets, strides = self.offsets, self.strides
        meta = _gst.gst_buffer_get_meta(buffer, self.meta_api)
        if meta:  # the upstream pool may lay the planes out its own way
            meta = _VideoMeta.from_address(meta)
            offsets, strides = list(meta.offset[:3]), list(meta.stride[:3])
        # Whole rows at once: pixel by pixel, Python would not keep up with 1080p.
        row = strip.luma_row(capture_ns // 1_000_000, self.cell)
        writes = [(offsets[0], strides[0], self.cell, row)]
        writes += [(offsets[p], strides[p], self.chroma_rows, self.chroma_row) for p in (1, 2)]
        if any(o + (n - 1) * s + len(r) > size for o, s, n, r in writes if n):
            return  # never write past the buffer, whatever the caps said
        for offset, stride, rows, data_row in writes:
            for y in range(rows):
                ctypes.memmove(data + offset + y * stride, data_row, len(data_row))


def click(_buffer, capture_ns, data, size):
    """Overwrites the samples in the first 5 ms of each wall-clock second with a square wave.

    Sample i of the buffer was captured at capture_ns + i / rate (S16LE, interleaved).
    """
    frame_bytes = 2 * AUDIO_CHANNELS
    frames = size // frame_bytes
    end_ns = capture_ns + frames * Gst.SECOND // AUDIO_RATE
    second = capture_ns // Gst.SECOND * Gst.SECOND
    while second < end_ns:
        # First and one-past-last sample whose time falls in [second, second + 5 ms).
        first = max(0, -(-(second - capture_ns) * AUDIO_RATE // Gst.SECOND))
        last = min(frames, -(-(second + CLICK_NS - capture_ns) * AUDIO_RATE // Gst.SECOND))
        if first < last:
            samples = []
            for i in range(first, last):
                into_second = capture_ns + i * Gst.SECOND // AUDIO_RATE - second
                high = (into_second // CLICK_HALF_PERIOD_NS) % 2 == 0
                samples += [CLICK_LEVEL if high else -CLICK_LEVEL] * AUDIO_CHANNELS
            packed = struct.pack(f"<{len(samples)}h", *samples)
            ctypes.memmove(data + first * frame_bytes, packed, len(packed))
        second += Gst.SECOND


# --- The camera -------------------------------------------------------------------------


def frame_size(text):
    try:
        width, height = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, got {text!r}") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"{text}: width and height must be even and at least 16")
    return width, height


def positive(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def pattern(text):
    """`NAME[,PROP=VALUE...]` -> the videotestsrc properties, checked against the element."""
    name, *settings = text.split(",")
    if not has_enum_value("videotestsrc", "pattern", name):
        raise argparse.ArgumentTypeError(f"{name!r} is not a videotestsrc pattern")
    source = Gst.ElementFactory.make("videotestsrc", None)
    for setting in settings:
        prop, _, value = setting.partition("=")
        if prop in ("pattern", "is-live") or not source.find_property(prop):
            raise argparse.ArgumentTypeError(f"{prop!r} is not a videotestsrc property to set here")
        if not value or not all(c.isalnum() or c in "-.+" for c in value):
            raise argparse.ArgumentTypeError(f"{setting!r}: expected PROP=VALUE")
    return " ".join([f"pattern={name}", *settings])


def parse_args(argv):
    parser = argparse.ArgumentParser(description="A live RTSP test camera.")
    parser.add_argument("port", help="TCP port to listen on, on 127.0.0.1")
    parser.add_argument("--path", default="/cam", help="mount path (default /cam)")
    parser.add_argument("--video", choices=["h264", "h265"], default="h264")
    parser.add_argument(
        "--profile", choices=["constrained-baseline", "baseline", "main", "high"],
        help="H.264 profile (default: whatever x264enc negotiates; main with --bframes)",
    )
    parser.add_argument("--size", type=frame_size, default=(640, 360), metavar="WxH",
                        help="default 640x360")
    parser.add_argument("--fps", type=positive, default=30)
    parser.add_argument("--bitrate", type=positive, metavar="KBPS",
                        help="default: the encoder's own")
    parser.add_argument("--gop", type=positive, default=30, metavar="FRAMES",
                        help="keyframe interval (default 30)")
    parser.add_argument("--bframes", type=int, choices=range(0, 17), default=0, metavar="N",
                        help="B-frames between references, 0 to 16 (default 0)")
    parser.add_argument("--audio", choices=["none", "aac", "opus"], default="none")
    parser.add_argument("--click", action="store_true",
                        help="a 5 ms click at the start of each wall-clock second")
    parser.add_argument("--strip", action="store_true", help="draw the latency strip")
    parser.add_argument("--pattern", type=pattern, default="ball", metavar="NAME[,PROP=VALUE...]",
                        help="videotestsrc pattern and properties, e.g. smpte,horizontal-speed=4"
                        " (default ball)")
    args = parser.parse_args(argv)
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    if args.profile and args.video != "h264":
        parser.error("--profile applies to H.264 only")
    if args.bframes and args.profile in ("baseline", "constrained-baseline"):
        parser.error(f"the {args.profile} profile has no B-frames")
    if args.click and args.audio == "none":
        parser.error("--click needs --audio aac or opus")
    if args.strip and args.size[0] // strip.CELLS < 2:
        parser.error(f"--strip needs a frame at least {2 * strip.CELLS} pixels wide")
    return args


def has_enum_value(factory, prop, nick):
    element = Gst.ElementFactory.make(factory, None)
    spec = element.find_property(prop) if element else None
    values = spec.enum_class.__enum_values__.values() if spec else ()
    return any(v.value_nick == nick for v in values)


def video_branch(args):
    width, height = args.size
    # The strip is drawn into I420 planes, and x265enc would pick 4:4:4 12-bit (Rext), which
    # no camera sends; otherwise the format is left to negotiation, as it always was.
    raw = "video/x-raw,format=I420" if args.strip or args.video == "h265" else "video/x-raw"
    raw += f",width={width},height={height},framerate={args.fps}/1"
    source = f"videotestsrc is-live=true {args.pattern} ! capsfilter name=vraw caps={raw}"
    bitrate = f" bitrate={args.bitrate}" if args.bitrate else ""
    # tune=zerolatency forces B-frames off, so cameras with B-frames do without it.
    zerolatency = "" if args.bframes else " tune=zerolatency"
    if args.video == "h265":
        if zerolatency and not has_enum_value("x265enc", "tune", "zerolatency"):
            zerolatency = ""
        return (
            f"{source} ! x265enc{zerolatency} speed-preset=ultrafast key-int-max={args.gop}"
            f"{bitrate} option-string=bframes={args.bframes} ! h265parse ! valve name=valve"
            " ! rtph265pay name=pay0 pt=96 config-interval=-1"
        )
    encoder = f"x264enc{zerolatency} speed-preset=ultrafast"
    profile = args.profile
    if args.bframes and not profile:
        # Left to itself x264enc negotiates constrained-baseline here, which has no B-frames.
        profile = "main"
    if profile in ("main", "high"):
        # ultrafast turns CABAC and 8x8 transforms off, which makes any stream Constrained
        # Baseline; turn them back on and let the profile caps drop what it does not allow.
        encoder += " cabac=true dct8x8=true"
    encoder += f" key-int-max={args.gop} bframes={args.bframes}{bitrate}"
    if profile:
        encoder += f" ! video/x-h264,profile={profile}"
    return f"{source} ! {encoder} ! valve name=valve ! rtph264pay name=pay0 pt=96"


def audio_branch(args):
    encoder = {
        "aac": "voaacenc ! aacparse ! valve name=valve1 ! rtpmp4gpay name=pay1 pt=97",
        "opus": "opusenc ! valve name=valve1 ! rtpopuspay name=pay1 pt=98",
    }[args.audio]
    raw = "audio/x-raw,format=S16LE,layout=interleaved"
    raw += f",rate={AUDIO_RATE},channels={AUDIO_CHANNELS}"
    return (
        "audiotestsrc is-live=true wave=sine freq=440 volume=0.1 ! audioconvert ! audioresample"
        f" ! capsfilter name=araw caps={raw} ! {encoder}"
    )


def main(argv):
    args = parse_args(argv)
    launch = video_branch(args)
    if args.audio != "none":
        launch += " " + audio_branch(args)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(args.port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {launch} )")
    factory.set_shared(True)
    if args.strip or args.click:
        # Base time + running time is wall-clock time only on the realtime clock.
        factory.set_clock(Gst.SystemClock(clock_type=Gst.ClockType.REALTIME))

    stalled = False
    valves = set()

    def configure(_factory, media):
        bin_ = media.get_element()
        mine = {v for v in (bin_.get_by_name("valve"), bin_.get_by_name("valve1")) if v}
        for valve in mine:
            valve.set_property("drop", stalled)
        valves.update(mine)
        probes = []
        if args.strip:
            pad = bin_.get_by_name("vraw").get_static_pad("src")
            probes.append(add_writable_probe(pad, StripPainter(pad)))
        if args.click:
            pad = bin_.get_by_name("araw").get_static_pad("src")
            probes.append(add_writable_probe(pad, click))

        def unprepared(_media):
            valves.difference_update(mine)
            for key in probes:
                del _probes[key]

        media.connect("unprepared", unprepared)

    def toggle_stall():
        nonlocal stalled
        stalled = not stalled
        for valve in valves:
            valve.set_property("drop", stalled)
        return GLib.SOURCE_CONTINUE

    factory.connect("media-configure", configure)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, toggle_stall)
    server.get_mount_points().add_factory(args.path, factory)
    if not server.attach(None):
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main(sys.argv[1:])
