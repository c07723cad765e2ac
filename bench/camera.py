#!/usr/bin/python3
"""Benchmark: an IP camera forwarded by livegate without re-encoding.

    scripts/netns-run /usr/bin/python3 bench/camera.py [--rounds 3] [--seconds 20] [--json FILE]

The camera is tests/support/rtsp_server.py: 1920x1080 at 30 fps, H.264 main, 4 Mbit/s, a
keyframe every second, AAC (--audio), and the latency strip (docs/latency-strip.md) carrying
each frame's capture time. Everything runs on this machine, on 127.0.0.1, so the strip of a
decoded frame gives its latency directly (wall clock now - capture time).

  (a) direct:  the camera read by rtspsrc latency=0, decoded here;
  (b) gateway: the same camera through livegate --transcode auto (forwarded as it is), read over
               WHEP by webrtcbin and decoded by the same chain, while one HLS reader (ffmpeg,
               never decoding) fetches the same stream.

(a) and (b) alternate, round after round, so drifts in machine load hit both; (b) - (a) is what
the hop through livegate adds. Then livegate --transcode always (decode, scale, x264) serves
the same two viewers, for its CPU cost. CPU is measured from /proc/PID/stat over each window.

Where the hop's milliseconds go: the kernel's receive time of every RTP packet on lo (an
AF_PACKET socket, which needs root: scripts/netns-run gives it) tells when each frame's last
packet reached livegate and when livegate's last packet of it left; --no-packets skips this.

Prints progress on stderr, then a JSON summary and Markdown tables on stdout.
Environment: LIVEGATE_BIN (default target/release/livegate).
"""
import argparse
import bisect
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAMERA_SCRIPT = ROOT / "tests/support/rtsp_server.py"
sys.path.insert(0, str(CAMERA_SCRIPT.parent))
import strip  # noqa: E402
STREAM = "cam"
WIDTH, HEIGHT, FPS = 1920, 1080, 30
# Moving bars whose noise patch makes x264 spend the whole bitrate (the ball would use 0.3 of
# 4 Mbit/s). Cheap enough for the camera to keep real time; zone-plate,kx2=20,ky2=20,kt=1 has
# camera-like keyframes (6x the other frames) but takes the camera's one streaming thread more
# than a frame time at 1080p30 on a small machine, and its latency then grows without bound.
PATTERN = "smpte,horizontal-speed=4"
CAMERA_VIDEO_PT = 96  # rtsp_server.py's
# Cores other processes may use before a run is called disturbed (the kernel's own work,
# softirqs for loopback traffic included, shows up here too).
OTHERS_TOLERATED = 0.15

# A strip older than this is a misread, not a latency.
MAX_PLAUSIBLE_MS = 600_000

# Everything after the depayloader is shared by both readers, so decoding costs them the same.
DECODE = (
    "rtph264depay name=depay ! h264parse ! avdec_h264 ! videoconvert"
    " ! video/x-raw,format=I420 ! appsink name=out sync=false emit-signals=true"
)
# One transceiver offering every profile a camera may send: livegate answers the camera's own
# and refuses (406) an offer that has none like it.
H264_PROFILES = ("42e01f", "4d001f", "64001f", "f4001f")
OPUS_PT = 111
ELEMENTS = (
    "rtspsrc", "rtph264depay", "h264parse", "avdec_h264", "videoconvert", "appsink", "webrtcbin",
    "nicesrc", "dtlssrtpdec", "x264enc", "voaacenc", "videotestsrc",
)


def fail(message):
    sys.exit(f"bench/camera.py: {message}")


def log(message):
    elapsed = time.monotonic() - STARTED
    print(f"[camera-bench {elapsed:6.1f} s] {message}", file=sys.stderr, flush=True)


STARTED = time.monotonic()

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstSdp", "1.0")
    gi.require_version("GstVideo", "1.0")
    gi.require_version("GstWebRTC", "1.0")
    from gi.repository import Gst, GstSdp, GstWebRTC  # noqa: E402
except (ImportError, ValueError) as err:
    fail(f"{err}: run with /usr/bin/python3 and install python3-gi, gir1.2-gstreamer-1.0, "
         "gir1.2-gst-plugins-base-1.0 and gir1.2-gst-plugins-bad-1.0")


# --- Statistics -----------------------------------------------------------------------------


def percentile(values, p):
    """Nearest rank, as bench/lib/stats.mjs does."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, -(-p * len(ordered) // 100))
    return ordered[min(len(ordered), rank) - 1]


def summary(values):
    if not values:
        return {"n": 0, "p50": None, "p95": None, "min": None, "max": None}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 2),
        "p95": round(percentile(values, 95), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def difference(b, a, key):
    return None if b[key] is None or a[key] is None else round(b[key] - a[key], 2)


# --- CPU ------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_ticks(pid):
    """utime + stime of every thread of pid (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks():
    """(busy, total) ticks of every CPU: busy is all but idle and iowait."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    total = sum(values[:8])  # guest time is already counted in user
    return total - values[3] - values[4], total


class CpuWindow:
    """Cores each process used between start() and stop(), summed over several windows."""

    def __init__(self):
        self.ticks = {}
        self.seconds = 0.0
        self.machine = [0, 0]
        self._start = None

    def start(self, pids):
        self._start = (time.monotonic(), machine_ticks(), pids,
                       {name: process_ticks(pid) for name, pid in pids.items()})

    def stop(self):
        began, (busy, total), pids, ticks = self._start
        self.seconds += time.monotonic() - began
        for name, pid in pids.items():
            self.ticks[name] = self.ticks.get(name, 0) + process_ticks(pid) - ticks[name]
        now_busy, now_total = machine_ticks()
        self.machine[0] += now_busy - busy
        self.machine[1] += now_total - total

    def cores(self):
        """Cores of each process, of the whole machine, and of everything else on it: a busy
        `others` means someone else's work disturbed the figures."""
        result = {name: round(t / CLK_TCK / self.seconds, 3) for name, t in self.ticks.items()}
        machine = os.cpu_count() * self.machine[0] / self.machine[1]
        result["others"] = round(max(0.0, machine - sum(result.values())), 3)
        result["machine"] = round(machine, 3)
        return result


# --- Readers ----------------------------------------------------------------------------------

_gobject = ctypes.CDLL("libgobject-2.0.so.0")
_gobject.g_object_ref.restype = ctypes.c_void_p
_gobject.g_object_ref.argtypes = [ctypes.c_void_p]
ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


class Reader:
    """Decodes H.264 RTP with DECODE and turns each frame's strip into a latency sample.

    Also notes when each access unit left the depayloader (its last packet had arrived), so a
    latency splits into capture -> arrival and arrival -> decoded.
    """

    def __init__(self, name, source_width):
        self.name = name
        self.strip = strip.StripDecoder(source_width)
        self.pipeline = Gst.Pipeline.new(name)
        self.lock = threading.Lock()
        self.recording = False
        self.first_frame = threading.Event()
        self.samples = []  # (capture -> decoded, capture -> arrival), ms
        self.arrivals = {}  # PTS -> wall-clock ms when the access unit left the depayloader
        self.access_units = []  # wall-clock ms of each, while recording
        self.frames = self.unreadable = self.h264_bytes = self.audio_packets = 0

    def _decode_bin(self):
        decode = Gst.parse_bin_from_description(DECODE, True)
        decode.get_by_name("out").connect("new-sample", self._on_sample)
        depay = decode.get_by_name("depay").get_static_pad("src")
        depay.add_probe(Gst.PadProbeType.BUFFER, self._on_access_unit)
        return decode

    def _on_access_unit(self, _pad, info):
        now = time.time_ns() / 1e6
        buffer = info.get_buffer()
        with self.lock:
            if len(self.arrivals) > 300:  # frames the decoder never output
                self.arrivals.clear()
            self.arrivals[buffer.pts] = now
            if self.recording:
                self.access_units.append(now)
                self.h264_bytes += buffer.get_size()
        return Gst.PadProbeReturn.OK

    def _on_sample(self, sink):
        now_ns = time.time_ns()
        sample = sink.emit("pull-sample")
        value = self.strip.read(sample)
        with self.lock:
            arrived = self.arrivals.pop(sample.get_buffer().pts, None)
            latency = None
            if value is not None:
                latency = (now_ns // 1_000_000 - value) % strip.VALUE_MOD + now_ns % 1_000_000 / 1e6
            if latency is None or latency > MAX_PLAUSIBLE_MS:
                self.unreadable += self.recording
                return Gst.FlowReturn.OK
            self.first_frame.set()
            if self.recording:
                self.frames += 1
                transit = None if arrived is None else latency - (now_ns / 1e6 - arrived)
                self.samples.append((latency, transit))
        return Gst.FlowReturn.OK

    def _on_audio(self, _pad, _info):
        self.audio_packets += self.recording
        return Gst.PadProbeReturn.OK

    def _link(self, pad):
        if pad.get_current_caps().get_structure(0).get_string("media") == "video":
            sink = self._decode_bin()
        else:  # sound is received (and counted), not decoded
            sink = Gst.ElementFactory.make("fakesink")
            sink.set_property("sync", False)
            sink.set_property("async", False)
            pad.add_probe(Gst.PadProbeType.BUFFER, self._on_audio)
        self.pipeline.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def check(self):
        message = self.pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
        if message:
            err, debug = message.parse_error()
            raise RuntimeError(f"{self.name}: {err.message} ({debug})")

    def wait_first_frame(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.first_frame.wait(0.1):
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no frame with a readable strip in {timeout} s")

    def record(self, on):
        with self.lock:
            self.recording = on

    def stop(self):
        self.pipeline.set_state(Gst.State.NULL)


class DirectReader(Reader):
    """(a) The camera itself: rtspsrc latency=0, as close to the camera as a viewer gets."""

    def __init__(self, url):
        super().__init__("direct", WIDTH)
        source = Gst.ElementFactory.make("rtspsrc")
        source.set_property("location", url)
        source.set_property("latency", 0)
        source.connect("pad-added", lambda _source, pad: self._link(pad))
        self.pipeline.add(source)

    def start(self):
        self.pipeline.set_state(Gst.State.PLAYING)


class WhepReader(Reader):
    """(b) A WHEP viewer on webrtcbin: recvonly H.264 (every profile) and Opus."""

    def __init__(self, gateway, source_width):
        super().__init__("whep", source_width)
        self.gateway = gateway
        self.location = None
        self.webrtc = Gst.ElementFactory.make("webrtcbin")
        self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        # How long its jitterbuffer may wait for a missing packet: as rtspsrc's in (a).
        self.webrtc.set_property("latency", 0)
        # libnice never gathers on loopback by itself; told an address, it gathers on that only.
        ice = self.webrtc.get_property("ice-agent")
        # PyGObject takes webrtcbin's own reference to its agent and drops it with the wrapper
        # (webrtcbin then crashes on a freed agent): give it a reference of its own first.
        _gobject.g_object_ref(ctypes.pythonapi.PyCapsule_GetPointer(ice.__gpointer__, None))
        ice.emit("add-local-ip-address", "127.0.0.1")
        self.pipeline.add(self.webrtc)
        video = ";".join(
            "application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,"
            f"payload={102 + i},packetization-mode=(string)1,profile-level-id=(string){plid}"
            for i, plid in enumerate(H264_PROFILES)
        )
        audio = ("application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,"
                 f"encoding-params=(string)2,payload={OPUS_PT}")
        recvonly = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
        for caps in (video, audio):
            self.webrtc.emit("add-transceiver", recvonly, Gst.Caps.from_string(caps))
        self.webrtc.connect("pad-added", self._on_pad)

    def _on_pad(self, _webrtc, pad):
        if pad.get_direction() == Gst.PadDirection.SRC:
            self._link(pad)

    def start(self):
        self.pipeline.set_state(Gst.State.PLAYING)
        promise = Gst.Promise.new()
        self.webrtc.emit("create-offer", None, promise)
        promise.wait()
        reply = promise.get_reply()  # owns the offer: keep it referenced while the offer is used
        self.webrtc.emit("set-local-description", reply.get_value("offer"), None)
        # No trickle: the offer goes out with every candidate in it.
        deadline = time.monotonic() + 10
        complete = GstWebRTC.WebRTCICEGatheringState.COMPLETE
        while self.webrtc.get_property("ice-gathering-state") != complete:
            if time.monotonic() > deadline:
                raise RuntimeError("webrtcbin never finished gathering candidates")
            time.sleep(0.02)
        sdp = self.webrtc.get_property("local-description").sdp.as_text()
        status, headers, body = self.gateway.request("POST", f"/whep/{STREAM}", sdp.encode(),
                                                     {"Content-Type": "application/sdp"})
        if status != 201:
            raise RuntimeError(f"WHEP POST answered {status}: {body.decode(errors='replace')}")
        self.location = headers.get("Location")
        result, message = GstSdp.SDPMessage.new_from_text(body.decode())
        if result != GstSdp.SDPResult.OK:
            raise RuntimeError("the WHEP answer is not SDP")
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.webrtc.emit("set-remote-description", answer, None)

    def stop(self):
        if self.location:
            try:
                self.gateway.request("DELETE", self.location)
            except OSError:
                pass  # the session times out by itself
        super().stop()


class HlsReader:
    """One HLS viewer: ffmpeg fetching playlist and segments and remuxing them to /dev/null
    (which lets it count the bytes); never decoding: the gateway only serves them, and decoding
    would load this machine."""

    def __init__(self, url, folder):
        self.progress = Path(folder) / "hls-progress.txt"
        self.log_path = Path(folder) / "hls-ffmpeg.log"
        with open(self.log_path, "ab") as errors:
            self.process = spawn(
                ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-tls_verify", "0",
                 "-i", url, "-map", "0", "-c", "copy", "-f", "mpegts", "-y", "/dev/null",
                 "-progress", str(self.progress)],
                stdout=subprocess.DEVNULL, stderr=errors,
            )

    def read_progress(self):
        """(frames, bytes) fetched so far, from ffmpeg's last -progress block."""
        try:
            text = self.progress.read_text()
        except FileNotFoundError:
            return 0, 0
        frames = re.findall(r"^frame=(\d+)", text, re.M)
        size = re.findall(r"^total_size=(\d+)", text, re.M)
        return int(frames[-1]) if frames else 0, int(size[-1]) if size else 0

    def stop(self):
        """Stops ffmpeg; False if it had already given up."""
        alive = self.process.poll() is None
        stop_process(self.process)
        return alive


# --- Packets on the wire ------------------------------------------------------------------------

SO_TIMESTAMPNS = 35  # not in Python's socket module
ETH_P_ALL = 3


def parse_rtp(frame):
    """(source port, destination port, payload type, RTP timestamp) of an RTP packet in an
    IPv4/UDP frame from lo, or None. SRTP leaves the RTP header in the clear; RTCP, STUN and DTLS
    are told apart by their first two bytes (RFC 7983)."""
    ip = frame[14:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
        return None
    udp = (ip[0] & 0x0F) * 4
    rtp = ip[udp + 8:udp + 16]
    if len(rtp) < 8 or rtp[0] >> 6 != 2 or not 96 <= rtp[1] & 0x7F <= 127:
        return None
    sport, dport = struct.unpack_from("!HH", ip, udp)
    return sport, dport, rtp[1] & 0x7F, struct.unpack_from("!I", rtp, 4)[0]


class PacketClock(threading.Thread):
    """The kernel's receive time of every RTP packet on lo, while recording."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.lock = threading.Lock()
        self.packets = None  # a list while recording

    def run(self):
        while True:
            # Headers are enough; a GSO send on lo arrives as one frame of up to 64 KiB.
            frame, ancillary, _, address = self.sock.recvmsg(64, 64)
            if address[2] == socket.PACKET_OUTGOING or self.packets is None:
                continue
            packet = parse_rtp(frame)
            stamps = [data for level, kind, data in ancillary if kind == SO_TIMESTAMPNS]
            if packet and stamps:
                seconds, nanoseconds = struct.unpack_from("qq", stamps[0])
                with self.lock:
                    if self.packets is not None:
                        self.packets.append((seconds * 1e3 + nanoseconds / 1e6, *packet))

    def record(self):
        with self.lock:
            self.packets = []

    def take(self):
        with self.lock:
            packets, self.packets = self.packets, None
        return packets


def frame_ends(packets, keep):
    """{RTP timestamp: arrival of its last packet} of the packets keep(sport, dport, pt) likes."""
    ends = {}
    for at, sport, dport, pt, rtp_time in packets:
        if keep(sport, dport, pt):
            ends[rtp_time] = at
    return ends


def delays(later, earlier, limit_ms=100):
    """For each time in `later`, how long after the latest time of `earlier` before it."""
    earlier = sorted(earlier)
    result = []
    for at in later:
        i = bisect.bisect_right(earlier, at)
        if i and at - earlier[i - 1] < limit_ms:
            result.append(at - earlier[i - 1])
    return result


def hop_breakdown(direct, forwarded):
    """Where (b) - (a) goes: livegate itself (camera's last packet of a frame in -> its last
    packet out, split where the frame entered livegate's encoding part) and the reader (last
    packet -> access unit out of the depayloader), webrtcbin's against rtspsrc's.

    A frame out is paired with the latest frame in before it, which holds while livegate takes
    less than a frame interval (true of passthrough, not of transcoding).
    """
    def camera_pt(pt):
        return pt == CAMERA_VIDEO_PT

    gateway_in, entered, gateway_out, whep_reader = [], [], [], []
    gateway_ports = set()
    for window in forwarded:
        packets, port = window["packets"], window["gateway_port"]
        # The camera sends video to livegate alone in (b).
        into = frame_ends(packets, lambda s, d, pt: camera_pt(pt) and s != port)
        gateway_ports |= {d for _, s, d, pt, _ in packets if camera_pt(pt) and s != port}
        video_pts = {pt for _, s, _, pt, _ in packets if s == port and pt != OPUS_PT}
        out = frame_ends(packets, lambda s, d, pt: s == port and pt in video_pts)
        gateway_in += delays(out.values(), into.values())
        # livegate's RTP timestamps count wall-clock time from when the frame was pushed into
        # its encoding part (appsrc do-timestamp, realtime clock): the 90 kHz clock says when.
        pushed = {ts: at - ((round(at * 90) - ts) % (1 << 32)) / 90 for ts, at in out.items()}
        entered += delays(pushed.values(), into.values())
        gateway_out += [out[ts] - at for ts, at in pushed.items() if 0 <= out[ts] - at < 100]
        whep_reader += delays(window["access_units"], out.values())
    rtsp_reader = []
    for window in direct:
        into = frame_ends(window["packets"],
                          lambda s, d, pt: camera_pt(pt) and d not in gateway_ports)
        rtsp_reader += delays(window["access_units"], into.values())
    result = {
        "livegate_in_to_out_ms": summary(gateway_in),
        "livegate_in_to_encoding_part_ms": summary(entered),
        "livegate_encoding_part_to_out_ms": summary(gateway_out),
        "reader_last_packet_to_access_unit_ms": {
            "whep": summary(whep_reader), "rtsp": summary(rtsp_reader)},
    }
    result["reader_difference_p50_ms"] = difference(
        result["reader_last_packet_to_access_unit_ms"]["whep"],
        result["reader_last_packet_to_access_unit_ms"]["rtsp"], "p50")
    return result


# --- Processes --------------------------------------------------------------------------------


def spawn(command, **kwargs):
    """Popen, with the child told to end if this script dies without cleaning up (a crash in
    GStreamer would otherwise leave a camera burning a core)."""
    guard = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []
    return subprocess.Popen(guard + command, **kwargs)


def stop_process(process, timeout=5):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port():
    """A port free for both TCP and UDP on 127.0.0.1 (free now; nobody else runs here)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    fail("no free port on 127.0.0.1")


def tail(path, lines=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Camera:
    def __init__(self, args, folder):
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.log_path = Path(folder) / "camera.log"
        self.command = [
            "/usr/bin/python3", str(CAMERA_SCRIPT), str(self.port), "--size", f"{WIDTH}x{HEIGHT}",
            "--fps", str(FPS), "--profile", args.profile, "--bitrate", str(args.bitrate),
            "--gop", str(FPS), "--audio", args.audio, "--strip", "--pattern", args.pattern,
        ]
        with open(self.log_path, "ab") as errors:
            self.process = spawn(self.command, stdout=subprocess.PIPE, stderr=errors)
        if self.process.stdout.readline().strip() != b"ready":
            stop_process(self.process)
            fail(f"the camera did not start:\n{tail(self.log_path)}")
        self.pid = self.process.pid

    def stop(self):
        stop_process(self.process)


class Gateway:
    """livegate serving the camera as stream `cam`; its address is found in its JSON log."""

    def __init__(self, binary, transcode, camera_url, folder):
        self.transcode = transcode
        state = Path(folder) / f"livegate-{transcode}"
        state.mkdir()
        self.log_path = state / "log.json"
        self.webrtc_port = free_port()
        self.command = [
            str(binary), "--stream", f"{STREAM}={camera_url}", "--transcode", transcode,
            "--listen", "127.0.0.1:0", "--webrtc-bind", "127.0.0.1",
            "--webrtc-port", str(self.webrtc_port), "--webrtc-tcp-port", "0",
            "--state-dir", str(state / "state"), "--hls-dir", str(state / "hls"),
            "--encoder", "x264", "--log-format", "json",
        ]
        with open(self.log_path, "ab") as log_file:
            self.process = spawn(self.command, stdout=log_file, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        self.address = None
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE  # its own self-signed certificate

    def _find_address(self):
        match = re.search(r'"local_addr":"([^"]+)"', self.log_path.read_text(errors="replace"))
        return match and match.group(1)

    def request(self, method, path, body=None, headers=None):
        url = urllib.parse.urljoin(f"https://{self.address}/", path)
        request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def wait_playing(self, transcoded, timeout=30):
        """Waits until the stream plays, forwarded (transcoded False) or re-encoded (True), and
        its HLS playlist is up."""
        deadline = time.monotonic() + timeout
        stream = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                fail(f"livegate exited with {self.process.returncode}:\n{tail(self.log_path)}")
            self.address = self.address or self._find_address()
            try:
                status, _, body = self.request("GET", "/api/streams") if self.address else (0, 0, 0)
            except OSError:
                status = None
            if status == 200:
                stream = next(s for s in json.loads(body) if s["name"] == STREAM)
                video = stream.get("video") or {}
                playing = stream["state"] == "playing" and video.get("transcoded") is transcoded
                # ffmpeg gives up on a playlist that is not there yet (first segment).
                if playing and self.request("GET", f"/hls/{STREAM}/index.m3u8")[0] == 200:
                    return stream
            time.sleep(0.3)
        fail(f"livegate --transcode {self.transcode}: stream not playing with transcoded="
             f"{str(transcoded).lower()} within {timeout} s; last /api/streams entry: {stream}\n"
             f"{tail(self.log_path)}")

    @property
    def hls_url(self):
        return f"https://{self.address}/hls/{STREAM}/index.m3u8"

    def stop(self):
        stop_process(self.process)


# --- Measurement ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, folder, packet_clock):
        self.args = args
        self.folder = folder
        self.packet_clock = packet_clock
        self.pids = {}
        self.cpu = {"direct": CpuWindow(), "passthrough": CpuWindow(), "transcode": CpuWindow()}

    def window(self, reader, cpu, hls=None):
        """Starts reader, waits for its first frame and the warm-up, then records for
        --seconds while `cpu` counts; returns this window's figures."""
        try:
            reader.start()
            reader.wait_first_frame(20)
            time.sleep(self.args.warmup)
            reader.check()
            hls_before = hls.read_progress() if hls else None
            if self.packet_clock:
                self.packet_clock.record()
            reader.record(True)
            cpu.start(dict(self.pids, hls_reader=hls.process.pid) if hls else self.pids)
            began = time.monotonic()
            while time.monotonic() - began < self.args.seconds:
                time.sleep(0.5)
                reader.check()
            cpu.stop()
            reader.record(False)
            elapsed = time.monotonic() - began
            window = {
                "latency_ms": [s[0] for s in reader.samples],
                "transit_ms": [s[1] for s in reader.samples if s[1] is not None],
                "fps": round(reader.frames / elapsed, 1),
                "unreadable": reader.unreadable,
                "video_kbps": round(reader.h264_bytes * 8 / elapsed / 1000),
                "audio_packets": reader.audio_packets,
                "access_units": reader.access_units,
                "packets": self.packet_clock.take() if self.packet_clock else [],
            }
            if hls:
                frames, size = hls.read_progress()
                window["hls_fps"] = round((frames - hls_before[0]) / elapsed, 1)
                window["hls_kbps"] = round((size - hls_before[1]) * 8 / elapsed / 1000)
            return window
        finally:
            reader.stop()

    def direct(self, camera):
        return self.window(DirectReader(camera.url), self.cpu["direct"])

    def through(self, gateway, cpu):
        """One WHEP window, with an HLS reader fetching meanwhile."""
        hls = HlsReader(gateway.hls_url, self.folder)
        try:
            window = self.window(WhepReader(gateway, WIDTH), cpu, hls)
        finally:
            alive = hls.stop()
        if not alive:
            fail(f"the HLS reader (ffmpeg) gave up:\n{tail(hls.log_path)}")
        window["gateway_port"] = gateway.webrtc_port
        return window


def describe(windows):
    latency = [x for w in windows for x in w["latency_ms"]]
    transit = [x for w in windows for x in w["transit_ms"]]
    result = {
        "latency_ms": summary(latency),
        "capture_to_arrival_ms": summary(transit),
        "per_window_p50_ms": [summary(w["latency_ms"])["p50"] for w in windows],
        "fps": [w["fps"] for w in windows],
        "video_kbps": [w["video_kbps"] for w in windows],
        "unreadable_frames": sum(w["unreadable"] for w in windows),
        "audio_packets": sum(w["audio_packets"] for w in windows),
    }
    if windows and "hls_fps" in windows[0]:
        result["hls_fps"] = [w["hls_fps"] for w in windows]
        result["hls_kbps"] = [w["hls_kbps"] for w in windows]
    return result


def run(args, folder, packet_clock):
    bench = Bench(args, folder, packet_clock)
    camera = Camera(args, folder)
    log(f"camera up: {' '.join(camera.command[1:])}")
    running = [camera]
    try:
        gateway = Gateway(args.livegate, "auto", camera.url, folder)
        running.append(gateway)
        forwarded_stream = gateway.wait_playing(transcoded=False)
        log(f"livegate --transcode auto playing: {json.dumps(forwarded_stream.get('video'))}")
        bench.pids = {"livegate": gateway.pid, "camera": camera.pid, "reader": os.getpid()}
        direct, forwarded = [], []
        for i in range(args.rounds):
            log(f"round {i + 1}/{args.rounds}: (a) the camera, direct")
            direct.append(bench.direct(camera))
            log(f"round {i + 1}/{args.rounds}: (b) through livegate, WHEP + HLS")
            forwarded.append(bench.through(gateway, bench.cpu["passthrough"]))
        gateway.stop()
        running.pop()

        transcoded, transcoded_stream = [], None
        if args.transcode_windows:
            gateway = Gateway(args.livegate, "always", camera.url, folder)
            running.append(gateway)
            transcoded_stream = gateway.wait_playing(transcoded=True)
            log("livegate --transcode always playing: "
                f"{json.dumps(transcoded_stream.get('video'))}")
            bench.pids["livegate"] = gateway.pid
            for i in range(args.transcode_windows):
                log(f"--transcode always {i + 1}/{args.transcode_windows}: WHEP + HLS")
                transcoded.append(bench.through(gateway, bench.cpu["transcode"]))
    finally:
        for process in reversed(running):
            process.stop()

    a, b = describe(direct), describe(forwarded)
    hop = {key: difference(b["latency_ms"], a["latency_ms"], key) for key in ("p50", "p95")}
    hop["per_round_p50"] = [
        round(y - x, 2) for x, y in zip(a["per_window_p50_ms"], b["per_window_p50_ms"])]
    hop["capture_to_arrival_p50"] = difference(
        b["capture_to_arrival_ms"], a["capture_to_arrival_ms"], "p50")
    result = {
        "camera": {
            "command": " ".join(camera.command[1:]), "size": f"{WIDTH}x{HEIGHT}", "fps": FPS,
            "profile": args.profile, "bitrate_kbps": args.bitrate, "gop_frames": FPS,
            "audio": args.audio,
            "pattern": args.pattern, "forwarded_as": forwarded_stream.get("video"),
        },
        "livegate": {
            "binary": str(args.livegate),
            "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                      time.gmtime(args.livegate.stat().st_mtime)),
        },
        "machine": {"cores": os.cpu_count(), "cpu": cpu_model()},
        "rounds": args.rounds, "window_s": args.seconds, "warmup_s": args.warmup,
        "direct": a,
        "passthrough": b,
        "hop_ms": hop,
        "cpu_cores": {name: window.cores() for name, window in bench.cpu.items() if window.seconds},
    }
    if packet_clock:
        result["hop_breakdown"] = hop_breakdown(direct, forwarded)
    disturbed = {name: cores["others"] for name, cores in result["cpu_cores"].items()
                 if cores["others"] > OTHERS_TOLERATED}
    if disturbed:
        log(f"warning: other work used CPU during the windows {disturbed} (cores): "
            "the figures are disturbed, run again on a quiet machine")
    if transcoded:
        result["transcode"] = describe(transcoded)
        result["transcode"]["video"] = transcoded_stream.get("video")
        result["transcode"]["size"] = f"{transcoded_stream['width']}x{transcoded_stream['height']}"
    return result


def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def markdown(result):
    def mean(values):
        return round(sum(values) / len(values), 1) if values else None

    def row(label, d):
        lat, arrival = d["latency_ms"], d["capture_to_arrival_ms"]
        return (f"| {label} | {lat['p50']} | {lat['p95']} | {arrival['p50']} | {lat['n']} | "
                f"{mean(d['fps'])} | {mean(d['video_kbps'])} |")

    hop = result["hop_ms"]
    rows = [
        "| glass-to-glass (capture → decoded) | median ms | p95 ms | capture → arrival median ms"
        " | frames | fps | H.264 kbit/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("(a) camera, direct (rtspsrc latency=0)", result["direct"]),
        row("(b) camera → livegate passthrough → WHEP", result["passthrough"]),
        f"| hop (b − a) | {hop['p50']} | {hop['p95']} | {hop['capture_to_arrival_p50']} | | | |",
    ]
    if "transcode" in result:
        rows.append(row(f"livegate --transcode always ({result['transcode']['size']}) → WHEP",
                        result["transcode"]))
    if "hop_breakdown" in result:
        breakdown = result["hop_breakdown"]
        readers = breakdown["reader_last_packet_to_access_unit_ms"]
        stages = [
            ("livegate: camera's last packet of a frame in → livegate's last packet out",
             breakdown["livegate_in_to_out_ms"]),
            ("  of which: in → pushed into its encoding part (rtspsrc, depay, parse, hand-over)",
             breakdown["livegate_in_to_encoding_part_ms"]),
            ("  of which: encoding part → out (parse, pay, fan-out, SRTP, send)",
             breakdown["livegate_encoding_part_to_out_ms"]),
            ("reader (b): last packet → access unit (webrtcbin)", readers["whep"]),
            ("reader (a): last packet → access unit (rtspsrc)", readers["rtsp"]),
        ]
        rows += ["", "| where the hop goes (kernel packet times on lo) | median ms | p95 ms"
                 " | frames |", "|---|---:|---:|---:|"]
        rows += [f"| {label} | {s['p50']} | {s['p95']} | {s['n']} |" for label, s in stages]
    labels = {
        "direct": "(a) windows: livegate ingesting, no viewer",
        "passthrough": "(b) passthrough, 1 WHEP + 1 HLS viewer",
        "transcode": "--transcode always, 1 WHEP + 1 HLS viewer",
    }
    rows += ["", f"| CPU, cores (of {result['machine']['cores']}) | livegate | camera "
             "| readers (this script) | HLS reader | anything else | whole machine |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, cores in result["cpu_cores"].items():
        rows.append(f"| {labels[name]} | {cores['livegate']} | {cores['camera']} | "
                    f"{cores['reader']} | {cores.get('hls_reader', '')} | {cores['others']} | "
                    f"{cores['machine']} |")
    return "\n".join(rows)


def check_prerequisites(args):
    if not args.livegate.is_file() or not os.access(args.livegate, os.X_OK):
        fail(f"{args.livegate} not found: build it (cargo build --release) or set LIVEGATE_BIN")
    if not CAMERA_SCRIPT.is_file():
        fail(f"{CAMERA_SCRIPT} is missing")
    if not shutil.which("ffmpeg"):
        fail("ffmpeg is needed for the HLS reader (apt-get install ffmpeg)")
    missing = [e for e in ELEMENTS if not Gst.ElementFactory.find(e)]
    if missing:
        fail(f"GStreamer elements missing: {', '.join(missing)} (scripts/install-deps)")
    if os.environ.get("LIVEGATE_NETNS") != "1":
        log("not inside scripts/netns-run: fine, everything stays on 127.0.0.1")


def start_packet_clock(args):
    if not args.packets:
        return None
    try:
        clock = PacketClock()
    except PermissionError:
        log("no CAP_NET_RAW (run inside scripts/netns-run as root): no packet timing")
        return None
    clock.start()
    return clock


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Latency and CPU of an RTSP camera forwarded by livegate without re-encoding.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of (a) direct then (b) through livegate (default 3)")
    parser.add_argument("--seconds", type=float, default=20,
                        help="recorded seconds per window (default 20)")
    parser.add_argument("--warmup", type=float, default=3,
                        help="seconds skipped after a reader's first frame (default 3)")
    parser.add_argument("--transcode-windows", type=int, default=1, metavar="N",
                        help="windows with --transcode always, for comparison; 0 skips (default 1)")
    parser.add_argument("--pattern", default=PATTERN,
                        help=f"camera picture, rtsp_server.py --pattern (default {PATTERN})")
    parser.add_argument("--bitrate", type=int, default=4000, help="camera kbit/s (default 4000)")
    parser.add_argument("--profile", choices=["main", "high"], default="main")
    parser.add_argument("--audio", choices=["aac", "opus", "none"], default="aac",
                        help="the camera's sound (default aac)")
    parser.add_argument("--no-packets", dest="packets", action="store_false",
                        help="skip the packet timing that splits the hop")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.warmup < 0 or args.transcode_windows < 0:
        parser.error("--rounds must be at least 1, --seconds positive, the others not negative")
    binary = Path(os.environ.get("LIVEGATE_BIN", "target/release/livegate"))
    args.livegate = binary if binary.is_absolute() else ROOT / binary
    return args


def main(argv):
    args = parse_args(argv)
    Gst.init(None)
    check_prerequisites(args)
    # SIGTERM unwinds like Ctrl-C, so the camera and livegate are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    packet_clock = start_packet_clock(args)
    with tempfile.TemporaryDirectory(prefix="livegate-camera-bench-") as folder:
        try:
            result = run(args, folder, packet_clock)
        except RuntimeError as err:
            fail(f"{err}\n{tail(Path(folder) / 'camera.log')}\n"
                 f"{tail(Path(folder) / 'livegate-auto' / 'log.json')}")
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    print()
    print(markdown(result))


if __name__ == "__main__":
    main(sys.argv[1:])
