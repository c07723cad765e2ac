#!/usr/bin/env bash
# livegate benchmarks (issue 4): the release gateway, Debian's Chromium, the light WebRTC viewers
# (examples/load_viewers.rs) and the original design (bench/baseline.py), all inside a private
# network namespace. Builds nothing: `make bench` builds first.
#
#   bench/run.sh            # full run (≈ 10 min): prints the table, writes target/bench/<time>.json
#                           # and rewrites docs/BENCHMARKS.md
#   bench/run.sh --quick    # < 3 min; report in target/bench/BENCHMARKS-quick.md
#   bench/run.sh --only=webrtc,hls   # some scenarios (encoder, webrtc, hls, ttff, loss, fanout, overload, relay, baseline)
#
# Environment: LIVEGATE_BIN (default target/release/livegate), LIVEGATE_LOAD_VIEWERS (default
# target/release/examples/load_viewers), LIVEGATE_E2E_CHROMIUM (default /usr/bin/chromium).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
e2e="$root/tests/e2e"

for tool in node npm; do
	command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool is needed (scripts/install-deps test)" >&2; exit 1; }
done
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
	echo "bench: Node.js 20 or newer is needed (playwright-core), found $(node --version)" >&2
	exit 1
fi
chromium="${LIVEGATE_E2E_CHROMIUM:-/usr/bin/chromium}"
[ -x "$chromium" ] || { echo "bench: $chromium not found; apt-get install chromium" >&2; exit 1; }
/usr/bin/python3 -c 'import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstVideo", "1.0")' 2>/dev/null \
	|| { echo "bench: /usr/bin/python3 needs python3-gi, gir1.2-gstreamer-1.0, gir1.2-gst-plugins-base-1.0" >&2; exit 1; }
for el in x264enc hlssink2 videotestsrc; do
	gst-inspect-1.0 "$el" >/dev/null 2>&1 || { echo "bench: GStreamer element $el missing (scripts/install-deps)" >&2; exit 1; }
done

# One pinned install of playwright-core: the browser suite's (tests/e2e/package-lock.json).
if [ ! -f "$e2e/node_modules/playwright-core/package.json" ]; then
	echo "bench: npm ci in tests/e2e" >&2
	(cd "$e2e" && npm ci --no-audit --no-fund --loglevel=error)
fi

bin="${LIVEGATE_BIN:-target/release/livegate}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
lv="${LIVEGATE_LOAD_VIEWERS:-target/release/examples/load_viewers}"
case "$lv" in /*) ;; *) lv="$root/$lv" ;; esac
for f in "$bin" "$lv"; do
	[ -x "$f" ] || { echo "bench: $f not found; cargo build --release --bin livegate --example load_viewers" >&2; exit 1; }
done
export LIVEGATE_BIN="$bin" LIVEGATE_LOAD_VIEWERS="$lv" LIVEGATE_E2E_CHROMIUM="$chromium"

cd "$root"
exec scripts/netns-run node bench/bench.mjs "$@"
