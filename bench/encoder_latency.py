#!/usr/bin/python3
"""How long x264 holds a frame (its input pad → its output pad, wall clock) under livegate's
settings and variations of them, on the bench's test picture (720p30 SMPTE, moving), in rounds
alternating between the variants so that the machine's load falls on all alike.

    /usr/bin/python3 bench/encoder_latency.py [seconds per round] [rounds]

Prints per variant the median and p95 over every frame, and the mean frame size.
"""
import collections
import statistics
import sys
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

# src/media/encoder.rs, X264: what livegate sets.
LIVEGATE = (
    "tune=zerolatency speed-preset=superfast bitrate=2000 key-int-max=30 option-string=scenecut=0 "
    "bframes=0 aud=false vbv-buf-capacity=300"
)
VARIANTS = {
    "livegate (2 sliced threads)": LIVEGATE,
    "threads=1": LIVEGATE + " threads=1",
    "vbv-buf-capacity=100": LIVEGATE.replace("vbv-buf-capacity=300", "vbv-buf-capacity=100"),
    "threads=4 (4 slices)": LIVEGATE + " threads=4",
    "speed-preset=ultrafast": LIVEGATE.replace("superfast", "ultrafast"),
}


def percentile(xs, p):
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))]


def run(options, seconds):
    pipeline = Gst.parse_launch(
        "videotestsrc is-live=true pattern=smpte horizontal-speed=2 ! "
        "video/x-raw,format=I420,width=1280,height=720,framerate=30/1 ! "
        f"x264enc name=enc {options} ! video/x-h264,profile=constrained-baseline ! fakesink sync=false"
    )
    encoder = pipeline.get_by_name("enc")
    # No B-frames and zero latency: frames come out in the order they go in (the encoder shifts
    # their timestamps, so those cannot pair them).
    entered, held, sizes = collections.deque(), [], []

    def into(_pad, _info):
        entered.append(time.monotonic())
        return Gst.PadProbeReturn.OK

    def out(_pad, info):
        held.append(1000 * (time.monotonic() - entered.popleft()))
        sizes.append(info.get_buffer().get_size())
        return Gst.PadProbeReturn.OK

    encoder.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, into)
    encoder.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, out)
    pipeline.set_state(Gst.State.PLAYING)
    time.sleep(seconds)
    pipeline.set_state(Gst.State.NULL)
    return held[30:], sizes[30:]  # past the first second


def main():
    Gst.init(None)
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    held = {name: [] for name in VARIANTS}
    sizes = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, options in VARIANTS.items():
            h, s = run(options, seconds)
            held[name] += h
            sizes[name] += s
    for name in VARIANTS:
        h = held[name]
        print(
            f"{name:34s} frames {len(h):5d}  held median {statistics.median(h):5.2f} ms  "
            f"p95 {percentile(h, 95):5.2f} ms  mean size {statistics.mean(sizes[name]) / 1000:5.1f} kB"
        )


if __name__ == "__main__":
    main()
