#!/usr/bin/python3
"""A real RTSP camera for tests: gst-rtsp-server serving a live H.264 test pattern.

usage: rtsp_server.py PORT   (serves rtsp://127.0.0.1:PORT/cam until killed)

SIGUSR1 makes the camera stall, as real ones do: the RTSP session stays up but no more
video is sent (a second SIGUSR1 resumes it).
"""
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! valve name=valve "
    "! rtph264pay name=pay0 pt=96 )"
)
factory.set_shared(True)
valves = []
factory.connect("media-configure", lambda _factory, media: valves.append(media.get_element().get_by_name("valve")))


def toggle_stall():
    for valve in valves:
        valve.set_property("drop", not valve.get_property("drop"))
    return GLib.SOURCE_CONTINUE


GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, toggle_stall)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
