#!/usr/bin/python3
"""An independent WHIP (and WHEP) server for tests: GStreamer's webrtcbin, no livegate code.

usage: whip_server.py PORT [--token TOKEN] [--serve-whep] [--audio] [--ice-server URL]

Listens on http://127.0.0.1:PORT, prints "ready" once it does, then logs on stderr until
SIGTERM or SIGINT.

WHIP (RFC 9725), what livegate pushes to:
  POST   /whip/NAME        Content-Type: application/sdp, a sendonly offer with H.264
                           (packetization-mode=1) and optionally Opus -> 201, the answer with
                           every candidate, Location: /whip/NAME/ID (and, with --ice-server,
                           Link: <URL>; rel="ice-server"). A new POST for NAME replaces (tears
                           down) the session NAME had, as real servers do on reconnect.
  DELETE /whip/NAME/ID     ends that session: 200, or 404 if there is none.
The video received is decoded and each frame's latency strip (docs/latency-strip.md) read;
the Opus is decoded and its samples counted.

WHEP (draft-ietf-wish-whep), with --serve-whep, what livegate may pull from:
  POST   /whep/NAME        a recvonly offer with H.264 (and Opus) -> 201, Location /whep/NAME/ID;
                           the session sends a 640x360 30 fps test pattern carrying the latency
                           strip (x264, constrained baseline, a keyframe every 30 frames) and,
                           with --audio, a 440 Hz tone as Opus. Each session has its own
                           pipeline; any number of them may run at once.
  DELETE /whep/NAME/ID     ends it: 200, or 404.

With --token, POST and DELETE need `Authorization: Bearer TOKEN`: none is 401 (with
`WWW-Authenticate: Bearer`), another token 403. A body that is not application/sdp is 415, an
offer that does not parse 400, one with no H.264 packetization-mode=1 406. PATCH (trickle) is
405: answers carry every candidate. ICE gathers on 127.0.0.1 and on every IPv4 address of the
machine (inside scripts/netns-run: 10.99.0.1 and 10.99.0.2), UDP and TCP.

For the tests (no token needed):
  GET  /stats   JSON: sessions (WHIP sessions up), posts (WHIP POSTs answered 201), deletes
                (WHIP DELETEs received), unauthorized (401 and 403 answers, WHIP and WHEP),
                frames (decoded), frames_with_strip (their strip read, CRC right), keyframes
                (IDR access units out of h264parse), audio_samples (decoded Opus samples per
                channel), latency_ms_median (now - strip, over the last 300 frames; null if
                none), width, height (of the last decoded frame; null before), last_authorization
                (the Authorization header of the last WHIP POST; null if it had none),
                plis_sent (keyframe requests POST /pli sent), whep_sessions, whep_posts,
                whep_deletes, plis_received (keyframe requests WHEP viewers sent, as they reached
                the payloader). Every count is since the server started, over all sessions.
  POST /pli     asks the sender of the newest WHIP session for a keyframe (an RTCP PLI, or a
                FIR if its offer allowed FIR only): 204; 404 if there is no session, 409 if it
                has sent no video yet.
"""
import argparse
import collections
import ctypes
import fcntl
import json
import signal
import socket
import statistics
import struct
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gi  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstVideo", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstVideo, GstWebRTC  # noqa: E402

import rtsp_server  # noqa: E402  (the RTSP test camera: its strip painter)
import strip  # noqa: E402
from strip import StripDecoder  # noqa: E402

Gst.init(None)

MAX_BODY = 64 * 1024
GATHER_TIMEOUT_S = 10
LATENCY_WINDOW = 300
MAX_PLAUSIBLE_MS = 600_000  # docs/latency-strip.md: a larger value is a misread

# What a WHEP session sends.
WHEP_WIDTH, WHEP_HEIGHT, WHEP_FPS = 640, 360, 30

# Receiving side of a WHIP session: one bin per received track, fed by a webrtcbin src pad.
VIDEO_DECODE = (
    "rtph264depay ! h264parse name=parse ! avdec_h264 thread-type=slice ! videoconvert"
    " ! video/x-raw,format=I420 ! appsink name=out sync=false emit-signals=true"
)
AUDIO_DECODE = (
    "rtpopusdepay ! opusdec ! audio/x-raw,format=S16LE"
    " ! appsink name=out sync=false emit-signals=true"
)


def negotiate_or_stop(session, offer):
    """The session's answer to `offer`; a session that cannot answer is torn down."""
    try:
        return session.negotiate(offer)
    except BaseException:
        session.stop()
        raise


def log(message):
    print(f"[whip-server] {message}", file=sys.stderr, flush=True)


# --- Stats ------------------------------------------------------------------------------------


class Stats:
    COUNTERS = (
        "posts", "deletes", "unauthorized", "frames", "frames_with_strip", "keyframes",
        "audio_samples", "plis_sent", "whep_posts", "whep_deletes", "plis_received",
    )

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.latencies = collections.deque(maxlen=LATENCY_WINDOW)
        self.width = self.height = None
        self.last_authorization = None

    def add(self, name, n=1):
        with self.lock:
            self.counts[name] += n

    def frame(self, width, height, latency_ms):
        with self.lock:
            self.counts["frames"] += 1
            self.width, self.height = width, height
            if latency_ms is not None:
                self.counts["frames_with_strip"] += 1
                self.latencies.append(latency_ms)

    def snapshot(self, sessions, whep_sessions):
        with self.lock:
            median = statistics.median(self.latencies) if self.latencies else None
            return {
                "sessions": sessions,
                **self.counts,
                "latency_ms_median": None if median is None else round(median, 1),
                "width": self.width,
                "height": self.height,
                "last_authorization": self.last_authorization,
                "whep_sessions": whep_sessions,
            }


# --- SDP and webrtcbin --------------------------------------------------------------------------


class Refused(Exception):
    """An offer or request answered with an HTTP error."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


_gobject = ctypes.CDLL("libgobject-2.0.so.0")
_gobject.g_object_ref.restype = ctypes.c_void_p
_gobject.g_object_ref.argtypes = [ctypes.c_void_p]
ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

SIOCGIFADDR = 0x8915


def local_addresses():
    """127.0.0.1 and the IPv4 address of every interface that has one."""
    addresses = ["127.0.0.1"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
            except OSError:  # no IPv4 address
                continue
            address = socket.inet_ntoa(reply[20:24])
            if address not in addresses:
                addresses.append(address)
    return addresses


def make_webrtcbin(name):
    webrtc = Gst.ElementFactory.make("webrtcbin", name)
    webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
    ice = webrtc.get_property("ice-agent")
    # PyGObject takes webrtcbin's own reference to its agent and drops it with the wrapper
    # (webrtcbin then crashes on a freed agent): give it a reference of its own first.
    _gobject.g_object_ref(ctypes.pythonapi.PyCapsule_GetPointer(ice.__gpointer__, None))
    # libnice leaves loopback out unless told; told addresses, it gathers on those only.
    for address in local_addresses():
        ice.emit("add-local-ip-address", address)
    return webrtc


def parse_offer(body):
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise Refused(400, "the offer is not UTF-8") from None
    result, message = GstSdp.SDPMessage.new_from_text(text)
    if result != GstSdp.SDPResult.OK or message.medias_len() == 0:
        raise Refused(400, "the body is not an SDP offer with media")
    return message


def fmtp_parameters(media, pt):
    """The `a=fmtp:PT` parameters of a section, as a dict."""
    for k in range(media.attributes_len()):
        attribute = media.get_attribute(k)
        if attribute.key != "fmtp" or not attribute.value:
            continue
        format_, _, parameters = attribute.value.partition(" ")
        if format_ == str(pt):
            pairs = (p.strip().partition("=") for p in parameters.split(";"))
            return {key.strip().lower(): value.strip() for key, _, value in pairs if key.strip()}
    return {}


def offered_codecs(message, kind):
    """[(pt, caps structure, fmtp dict)] of the offer's `kind` ("video"/"audio") sections, in
    offer order."""
    codecs = []
    for i in range(message.medias_len()):
        media = message.get_media(i)
        # Port 0 is a rejected section, unless it is bundle-only (RFC 9143): webrtcbin offers
        # every section after the first so, with max-bundle.
        if media.get_media() != kind or (
                media.get_port() == 0 and media.get_attribute_val("bundle-only") is None):
            continue
        for j in range(media.formats_len()):
            try:
                pt = int(media.get_format(j))
            except ValueError:
                continue
            caps = media.get_caps_from_media(pt)
            if caps is not None and caps.get_size():
                codecs.append((pt, caps.get_structure(0), fmtp_parameters(media, pt)))
    return codecs


CODEC_FIELDS = ("media", "encoding-name", "clock-rate", "payload", "encoding-params",
                "packetization-mode")


def codec_preferences(codec, profile_level_id=False):
    """A transceiver's codec preferences for one offered codec (pt, structure, fmtp): its
    payload type, encoding and RTCP feedback, nothing that would constrain an encoder.

    webrtcbin answers with the intersection of these and the offer's own parameters, but
    GstSdp turns an H.264 profile-level-id into a `profile` field when the offer allows level
    asymmetry, and that never makes it back into an answer: with profile_level_id, the offer's
    profile-level-id is put back (a sender then finds its own in the answer, as browsers
    answer). Only for receiving: on a sending transceiver it would have to match the caps the
    payloader makes from the encoder's SPS.
    """
    _pt, structure, fmtp = codec
    fields = []
    for i in range(structure.n_fields()):
        name = structure.nth_field_name(i)
        if name not in CODEC_FIELDS and not name.startswith("rtcp-fb-"):
            continue
        value = structure.get_value(name)
        if isinstance(value, bool):
            fields.append(f"{name}=(boolean){'true' if value else 'false'}")
        elif isinstance(value, int):
            fields.append(f"{name}=(int){value}")
        else:
            fields.append(f'{name}=(string)"{value}"')
    if profile_level_id and "profile-level-id" in fmtp:
        fields.append(f'profile-level-id=(string)"{fmtp["profile-level-id"]}"')
    return Gst.Caps.from_string(",".join(["application/x-rtp", *fields]))


def is_baseline(codec):
    """Constrained baseline or baseline (what the WHEP side's x264 sends decodes there)."""
    _pt, structure, fmtp = codec
    profile = structure.get_string("profile") or ""
    return fmtp.get("profile-level-id", "").startswith("42") or profile in (
        "constrained-baseline", "baseline")


def pick_h264(message, prefer_baseline):
    """(pt, structure, fmtp) of the offer's first H.264 with packetization-mode=1 (with
    prefer_baseline, its first baseline one if it has one)."""
    candidates = [
        codec for codec in offered_codecs(message, "video")
        if (codec[1].get_string("encoding-name") or "").upper() == "H264"
        and codec[1].get_string("packetization-mode") == "1"
    ]
    if not candidates:
        raise Refused(406, "the offer has no H.264 with packetization-mode=1")
    if prefer_baseline:
        for codec in candidates:
            if is_baseline(codec):
                return codec
    return candidates[0]


def pick_opus(message):
    for codec in offered_codecs(message, "audio"):
        if (codec[1].get_string("encoding-name") or "").upper() == "OPUS":
            return codec
    return None


class Session:
    """One webrtcbin in its own pipeline; the subclasses add media."""

    kind = "?"

    def __init__(self, name):
        self.name = name
        self.id = uuid.uuid4().hex
        self.pipeline = Gst.Pipeline.new(f"{self.kind}-{name}-{self.id[:8]}")
        self.webrtc = make_webrtcbin("webrtc")
        self.pipeline.add(self.webrtc)
        self.stopped = False
        # Signal handlers and probes, undone by stop(): each holds this session, which holds
        # the pipeline, a cycle through C that Python's collector never sees (the pipeline,
        # its sockets and threads would outlive the session).
        self.hooks = []
        self.connect(self.webrtc, "notify::connection-state", self._on_state)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        self.connect(bus, "message::error", self._on_error)
        self.connect(bus, "message::warning", self._on_error)

    def connect(self, instance, signal_name, handler):
        self.hooks.append((instance.disconnect, instance.connect(signal_name, handler)))

    def probe(self, pad, mask, handler):
        self.hooks.append((pad.remove_probe, pad.add_probe(mask, handler)))

    @property
    def label(self):
        return f"{self.kind} {self.name}/{self.id[:8]}"

    @property
    def location(self):
        return f"/{self.kind}/{self.name}/{self.id}"

    def _on_state(self, webrtc, _spec):
        state = webrtc.get_property("connection-state").value_nick
        log(f"{self.label}: connection {state}")

    def _on_error(self, _bus, message):
        if message.type == Gst.MessageType.ERROR:
            err, debug = message.parse_error()
        else:
            err, debug = message.parse_warning()
        log(f"{self.label}: {message.type.first_value_nick} from {message.src.get_name()}: "
            f"{err.message} ({debug})")

    def negotiate(self, offer):
        """Sets the offer, answers it, waits for every candidate: the answer's SDP text."""
        self.pipeline.set_state(Gst.State.PLAYING)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, offer)
        promise = Gst.Promise.new()
        self.webrtc.emit("set-remote-description", description, promise)
        promise.wait()
        promise = Gst.Promise.new()
        self.webrtc.emit("create-answer", None, promise)
        promise.wait()
        reply = promise.get_reply()  # owns the answer: keep it referenced while it is used
        answer = reply.get_value("answer") if reply and reply.has_field("answer") else None
        if answer is None:
            error = reply.get_value("error") if reply and reply.has_field("error") else None
            raise Refused(400, f"webrtcbin could not answer the offer: "
                          f"{error.message if error else 'no reason given'}")
        promise = Gst.Promise.new()
        self.webrtc.emit("set-local-description", answer, promise)
        promise.wait()
        deadline = time.monotonic() + GATHER_TIMEOUT_S
        complete = GstWebRTC.WebRTCICEGatheringState.COMPLETE
        while self.webrtc.get_property("ice-gathering-state") != complete:
            if time.monotonic() > deadline:
                raise Refused(500, "ICE gathering did not complete")
            time.sleep(0.01)
        return self.webrtc.get_property("local-description").sdp.as_text()

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        self.pipeline.set_state(Gst.State.NULL)
        self.pipeline.get_bus().remove_signal_watch()
        for undo, hook in self.hooks:
            undo(hook)
        self.hooks.clear()
        log(f"{self.label}: stopped")


class WhipSession(Session):
    """Receives a sender's H.264 (and Opus), decodes it and reads the strips into Stats."""

    kind = "whip"

    def __init__(self, name, offer, stats):
        video = pick_h264(offer, prefer_baseline=False)  # refused before anything is made
        opus = pick_opus(offer)
        super().__init__(name)
        self.stats = stats
        self.video_pad = None  # the webrtcbin src pad the video comes out of
        self.strip = None
        self.webrtc.set_property("latency", 0)  # no jitterbuffer wait: latencies as they are
        self.connect(self.webrtc, "pad-added", self._on_pad)
        recvonly = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
        # PLI if the offer allows it, else FIR (rtpsession picks by the fields and all-headers).
        self.key_unit_all_headers = not video[1].has_field("rtcp-fb-nack-pli")
        # Transceivers made beforehand, holding the offer's own H.264 and Opus entries: else
        # webrtcbin would answer each section with its first codec (say, VP8).
        self.webrtc.emit("add-transceiver", recvonly, codec_preferences(video, True))
        if opus:
            self.webrtc.emit("add-transceiver", recvonly, codec_preferences(opus))
        log(f"{self.label}: H.264 as payload type {video[0]}"
            + (f", Opus as {opus[0]}" if opus else ", no Opus"))

    def _on_pad(self, _webrtc, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps()
        s = caps.get_structure(0)
        encoding = (s.get_string("encoding-name") or "").upper()
        if encoding == "H264":
            sink = Gst.parse_bin_from_description(VIDEO_DECODE, True)
            self.connect(sink.get_by_name("out"), "new-sample", self._on_frame)
            self.probe(sink.get_by_name("parse").get_static_pad("src"),
                       Gst.PadProbeType.BUFFER, self._on_access_unit)
        elif encoding == "OPUS":
            sink = Gst.parse_bin_from_description(AUDIO_DECODE, True)
            self.connect(sink.get_by_name("out"), "new-sample", self._on_audio)
        else:
            log(f"{self.label}: ignoring received {encoding or caps.to_string()}")
            sink = Gst.ElementFactory.make("fakesink")
            sink.set_property("async", False)
        self.pipeline.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))
        if encoding == "H264":
            self.video_pad = pad
        log(f"{self.label}: receiving {encoding}")

    def _on_access_unit(self, _pad, info):
        if not info.get_buffer().has_flags(Gst.BufferFlags.DELTA_UNIT):
            self.stats.add("keyframes")
        return Gst.PadProbeReturn.OK

    def _on_frame(self, sink):
        now_ns = time.time_ns()
        sample = sink.emit("pull-sample")
        try:
            s = sample.get_caps().get_structure(0)
            width, height = s.get_int("width")[1], s.get_int("height")[1]
            if self.strip is None or self.strip.source_width != width:
                self.strip = StripDecoder(width)
            value = self.strip.read(sample) if width >= strip.CELLS else None
            latency = None
            if value is not None:
                latency = (now_ns // 1_000_000 - value) % strip.VALUE_MOD + now_ns % 1_000_000 / 1e6
                if latency > MAX_PLAUSIBLE_MS:
                    latency = None
            self.stats.frame(width, height, latency)
        except Exception:  # keep the stream flowing, but say why
            traceback.print_exc()
        return Gst.FlowReturn.OK

    def _on_audio(self, sink):
        sample = sink.emit("pull-sample")
        channels = sample.get_caps().get_structure(0).get_int("channels")[1] or 1
        self.stats.add("audio_samples", sample.get_buffer().get_size() // (2 * channels))
        return Gst.FlowReturn.OK

    def request_keyframe(self):
        """Sends an upstream force-key-unit event into webrtcbin, which its rtpsession turns
        into RTCP PLI (FIR with all-headers, when the offer has ccm fir but no nack pli)."""
        pad = self.video_pad
        if pad is None:
            return False
        event = GstVideo.video_event_new_upstream_force_key_unit(
            Gst.CLOCK_TIME_NONE, self.key_unit_all_headers, 0)
        handled = pad.send_event(event)
        log(f"{self.label}: keyframe requested ({'FIR' if self.key_unit_all_headers else 'PLI'}"
            f"{'' if handled else ', not handled'})")
        return True


REALTIME_CLOCK = Gst.SystemClock(clock_type=Gst.ClockType.REALTIME)


class WhepSession(Session):
    """Sends a live test pattern with the latency strip (and a tone) to a WHEP viewer."""

    kind = "whep"

    def __init__(self, name, offer, stats, audio):
        video = pick_h264(offer, prefer_baseline=True)  # refused before anything is made
        opus = pick_opus(offer) if audio else None
        super().__init__(name)
        self.stats = stats
        self.strip_probe = None
        # Base time + running time (the strip's capture time) is Unix time on this clock.
        self.pipeline.use_clock(REALTIME_CLOCK)
        pt = video[0]
        launch = (
            "videotestsrc is-live=true pattern=ball"
            f" ! capsfilter name=vraw caps=video/x-raw,format=I420,width={WHEP_WIDTH},"
            f"height={WHEP_HEIGHT},framerate={WHEP_FPS}/1"
            " ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0"
            " ! video/x-h264,profile=constrained-baseline"
            f" ! rtph264pay name=vpay pt={pt} config-interval=-1 aggregate-mode=zero-latency"
            " ! capsfilter caps=application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,"
            f"payload={pt}"
        )
        media = [("video", launch, video)]
        if opus:
            media.append((
                "audio",
                "audiotestsrc is-live=true wave=sine freq=440 volume=0.1 ! audioconvert"
                " ! audioresample ! opusenc ! rtpopuspay name=apay"
                f" pt={opus[0]} ! capsfilter caps=application/x-rtp,media=audio,"
                f"encoding-name=OPUS,clock-rate=48000,payload={opus[0]}",
                opus,
            ))
        sendonly = GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY
        for _kind, description, offered in media:
            branch = Gst.parse_bin_from_description(description, True)
            self.pipeline.add(branch)
            sink = self.webrtc.request_pad_simple("sink_%u")
            transceiver = sink.get_property("transceiver")
            transceiver.set_property("direction", sendonly)
            transceiver.set_property("codec-preferences", codec_preferences(offered))
            branch.get_static_pad("src").link(sink)
            if _kind == "video":
                vraw = branch.get_by_name("vraw").get_static_pad("src")
                self.strip_probe = rtsp_server.add_writable_probe(
                    vraw, rtsp_server.StripPainter(vraw))
                self.probe(branch.get_by_name("vpay").get_static_pad("sink"),
                           Gst.PadProbeType.EVENT_UPSTREAM, self._on_upstream_event)
        log(f"{self.label}: sending H.264 as payload type {pt}"
            + (f", Opus as {opus[0]}" if opus else ""))

    def _on_upstream_event(self, _pad, info):
        event = info.get_event()
        if event.type == Gst.EventType.CUSTOM_UPSTREAM and event.has_name("GstForceKeyUnit"):
            self.stats.add("plis_received")
            log(f"{self.label}: keyframe request from the viewer")
        return Gst.PadProbeReturn.OK

    def stop(self):
        super().stop()
        rtsp_server._probes.pop(self.strip_probe, None)


# --- HTTP ---------------------------------------------------------------------------------------


class Server:
    def __init__(self, args):
        self.args = args
        self.stats = Stats()
        self.lock = threading.Lock()
        self.whip = {}  # name -> WhipSession
        self.whep = {}  # id -> WhepSession
        self.newest_whip = None
        self.whip_posts = threading.Lock()  # one WHIP POST at a time: replacing is then simple

    def stats_json(self):
        with self.lock:
            return self.stats.snapshot(len(self.whip), len(self.whep))

    def authorize(self, headers):
        """None if the request may go on, else the refusal (status, reason)."""
        if self.args.token is None:
            return None
        value = headers.get("Authorization")
        if value is None:
            return 401, "Authorization: Bearer TOKEN needed"
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.args.token:
            return 403, "wrong token"
        return None

    def create_whip(self, name, offer):
        with self.whip_posts:
            session = WhipSession(name, offer, self.stats)  # a refused offer changes nothing
            with self.lock:
                old = self.whip.pop(name, None)
            if old:
                log(f"{old.label}: replaced by a new POST")
                old.stop()
            answer = negotiate_or_stop(session, offer)
            with self.lock:
                self.whip[name] = session
                self.newest_whip = session
            return session, answer

    def create_whep(self, name, offer):
        session = WhepSession(name, offer, self.stats, self.args.audio)
        answer = negotiate_or_stop(session, offer)
        with self.lock:
            self.whep[session.id] = session
        return session, answer

    def delete(self, kind, name, session_id):
        with self.lock:
            if kind == "whip":
                session = self.whip.get(name)
                if session is None or session.id != session_id:
                    return False
                del self.whip[name]
                if self.newest_whip is session:
                    self.newest_whip = None
            else:
                session = self.whep.get(session_id)
                if session is None or session.name != name:
                    return False
                del self.whep[session_id]
        session.stop()
        return True

    def request_keyframe(self):
        with self.lock:
            session = self.newest_whip
        if session is None:
            return 404
        return 204 if session.request_keyframe() else 409

    def stop_all(self):
        with self.lock:
            sessions = list(self.whip.values()) + list(self.whep.values())
            self.whip.clear()
            self.whep.clear()
        for session in sessions:
            session.stop()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "whip-test-server"

    @property
    def app(self):
        return self.server.app

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's name)
        # The tests poll /stats many times a second: only the other requests are worth a line.
        if not self.path.startswith("/stats"):
            log(f"{self.address_string()} {format % args}")

    def reply(self, status, body=b"", content_type="text/plain", headers=()):
        if isinstance(body, str):
            body = (body + "\n").encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise Refused(411, "Content-Length needed")
        if int(length) > MAX_BODY:
            raise Refused(413, f"offers over {MAX_BODY} bytes are refused")
        return self.rfile.read(int(length))

    def route(self):
        """(endpoint, name, session id) from the path; endpoint None if unknown."""
        parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
        if parts == ["stats"]:
            return "stats", None, None
        if parts == ["pli"]:
            return "pli", None, None
        if parts[0] in ("whip", "whep") and len(parts) in (2, 3) and all(parts[1:]):
            if parts[0] == "whep" and not self.app.args.serve_whep:
                return None, None, None
            kind = parts[0] if len(parts) == 2 else parts[0] + "-session"
            return kind, parts[1], parts[2] if len(parts) == 3 else None
        return None, None, None

    def refuse_unauthorized(self):
        refusal = self.app.authorize(self.headers)
        if refusal is None:
            return False
        status, reason = refusal
        self.app.stats.add("unauthorized")
        headers = [("WWW-Authenticate", "Bearer")] if status == 401 else []
        self.reply(status, reason, headers=headers)
        return True

    def handle_errors(self, action):
        try:
            action()
        except Refused as refused:
            log(f"{self.command} {self.path}: {refused.status} {refused}")
            self.reply(refused.status, str(refused))
        except Exception as err:  # a bug here: say so, and keep serving
            traceback.print_exc()
            self.reply(500, f"internal error: {err}")

    def do_GET(self):
        endpoint, _, _ = self.route()
        if endpoint == "stats":
            self.reply(200, json.dumps(self.app.stats_json()), "application/json")
        elif endpoint is None:
            self.reply(404, "not found")
        else:
            self.reply(405, "method not allowed")

    def do_POST(self):
        endpoint, name, _ = self.route()
        if endpoint == "pli":
            self.read_body_quietly()
            status = self.app.request_keyframe()
            if status == 204:
                self.app.stats.add("plis_sent")
            reasons = {404: "no WHIP session", 409: "the WHIP session has sent no video yet"}
            self.reply(status, reasons.get(status, b""))
        elif endpoint in ("whip", "whep"):
            self.handle_errors(lambda: self.post_offer(endpoint, name))
        elif endpoint is None:
            self.reply(404, "not found")
        else:
            self.reply(405, "method not allowed")

    def read_body_quietly(self):
        length = self.headers.get("Content-Length")
        if length and length.isdigit():
            self.rfile.read(min(int(length), MAX_BODY))

    def post_offer(self, kind, name):
        if kind == "whip":
            with self.app.stats.lock:
                self.app.stats.last_authorization = self.headers.get("Authorization")
        body = self.read_body()
        if self.refuse_unauthorized():
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/sdp":
            raise Refused(415, "Content-Type must be application/sdp")
        offer = parse_offer(body)
        if kind == "whip":
            session, answer = self.app.create_whip(name, offer)
            self.app.stats.add("posts")
        else:
            session, answer = self.app.create_whep(name, offer)
            self.app.stats.add("whep_posts")
        headers = [("Location", session.location)]
        if self.app.args.ice_server:
            headers.append(("Link", f'<{self.app.args.ice_server}>; rel="ice-server"'))
        log(f"{session.label}: answered, {answer.count('a=candidate:')} candidates")
        self.reply(201, answer.encode(), "application/sdp", headers)

    def do_DELETE(self):
        endpoint, name, session_id = self.route()
        if endpoint not in ("whip-session", "whep-session"):
            self.reply(404 if endpoint is None else 405, "not found")
            return
        kind = endpoint.split("-")[0]
        self.app.stats.add("deletes" if kind == "whip" else "whep_deletes")
        if self.refuse_unauthorized():
            return
        if self.app.delete(kind, name, session_id):
            self.reply(200, "session ended")
        else:
            self.reply(404, "no such session")

    def do_PATCH(self):
        self.read_body_quietly()
        endpoint, _, _ = self.route()
        if endpoint in ("whip-session", "whep-session"):
            self.reply(405, "no trickle ICE: the answer carries every candidate",
                       headers=[("Allow", "DELETE")])
        else:
            self.reply(404, "not found")

    def do_OPTIONS(self):
        endpoint, _, _ = self.route()
        if endpoint in ("whip", "whep"):
            self.reply(204, headers=[("Allow", "POST, OPTIONS"),
                                     ("Accept-Post", "application/sdp")])
        else:
            self.reply(404, "not found")


def parse_args(argv):
    parser = argparse.ArgumentParser(description="A WHIP (and WHEP) test server on webrtcbin.")
    parser.add_argument("port", type=int, help="TCP port to listen on, on 127.0.0.1")
    parser.add_argument("--token", help="require Authorization: Bearer TOKEN on POST and DELETE")
    parser.add_argument("--serve-whep", action="store_true",
                        help="also serve WHEP viewers a test pattern with the latency strip")
    parser.add_argument("--audio", action="store_true",
                        help="WHEP sessions also send a tone as Opus, when the offer takes it"
                        " (WHIP sessions take Opus whenever it is offered)")
    parser.add_argument("--ice-server", metavar="URL",
                        help='announce URL in a Link: <URL>; rel="ice-server" header of answers')
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"{args.port} is not a TCP port")
    return args


def main(argv):
    args = parse_args(argv)
    app = Server(args)
    try:
        httpd = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    except OSError as err:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}: {err}")
    httpd.daemon_threads = True
    httpd.app = app
    loop = GLib.MainLoop()

    def stop():
        log("stopping")
        httpd.shutdown()  # serve_forever runs on its own thread
        app.stop_all()
        loop.quit()
        return GLib.SOURCE_REMOVE

    for number in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, number, stop)
    threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
    print("ready", flush=True)
    log(f"listening on http://127.0.0.1:{args.port} (WHIP{', WHEP' if args.serve_whep else ''}"
        f"{', token needed' if args.token else ''}); ICE on {', '.join(local_addresses())}")
    loop.run()
    httpd.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
