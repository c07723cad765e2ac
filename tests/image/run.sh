#!/usr/bin/env bash
# The container image, built and run for real, without Docker:
#
#  1. base      `debootstrap --variant=minbase` of the Dockerfile's Debian release, trimmed like
#               the official slim variant and committed as the local image
#               docker.io/library/debian:RELEASE-slim (cached; rebuilt after 7 days);
#  2. build     the Dockerfile's `runtime` stage, unchanged, with buildah (`--isolation chroot`,
#               `--layers`, never pulling), the `build` stage replaced by a build context holding
#               the already-built binary (`--build-context build=DIR`: a named context wins over
#               the stage of that name, so `COPY --from=build /out/livegate` takes DIR/out/livegate
#               and the rust stage is skipped);
#  3. run       the image with podman (runc) the way k8s/base runs the pod: read-only root, uid/gid
#               10001 plus group 44, no capabilities, no-new-privileges, writable emptyDir-like
#               folders only on /tmp, /var/lib/livegate/hls and /var/lib/livegate/state, the config, certificate
#               and token files mounted read-only where the Deployment mounts them; the config is
#               k8s/base/livegate.toml itself, with a certificate and tokens made for the test;
#  4. play      inside scripts/netns-run (host network of a private namespace: WebRTC needs a
#               non-loopback interface): /healthz, /readyz, the token is required, the HLS
#               playlist and a segment (ffprobe: H.264 at the configured size), WebRTC viewers
#               over WHEP (target/release/examples/load_viewers) receiving frames through the
#               UDP port(s) the config names, and SIGTERM stops it cleanly within the grace period.
#
# Needs root, buildah, podman, runc, debootstrap, curl, openssl, ffprobe, ss, python3 (all in
# `scripts/install-deps test`) and http://deb.debian.org (debootstrap and the Dockerfile's apt).
# Builds no Rust: `make test-image` builds the binary and load_viewers first.
#
#   tests/image/run.sh
#
# Environment:
#   LIVEGATE_BIN                 gateway binary put in the image (default: target/release/livegate)
#   LIVEGATE_LOAD_VIEWERS        WHEP viewers (default: target/release/examples/load_viewers)
#   LIVEGATE_IMAGE_CONFIG        config file run in the image (default: k8s/base/livegate.toml)
#   LIVEGATE_IMAGE_CACHE         base image, container storage (default: target/image-cache)
#   LIVEGATE_IMAGE_FRESH=1       drop the cache first: a cold run, as on a fresh machine
#   LIVEGATE_IMAGE_STORAGE_DRIVER  overlay or vfs (default: overlay when the kernel mounts it)
#   LIVEGATE_IMAGE_MIRROR        Debian mirror for debootstrap (default: http://deb.debian.org/debian)
# Output: target/image-test/ (build log, gateway log, playlist, segment, viewers' report).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/image-test"
image=localhost/livegate:image-test
container=livegate-image-test

say() { printf 'tests/image: %s\n' "$*" >&2; }
fail() {
	printf 'tests/image: FAILED: %s\n' "$*" >&2
	exit 1
}
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s' "$root/$1" ;; esac; }
# The current step, named in the message if a command fails unexpectedly.
step=""
begin() {
	step="$1"
	say "$step"
}
trap 'rc=$?; [ $rc = 0 ] || [ -z "$step" ] || say "(the step that failed: $step; logs in $out)"' EXIT

# Shared by both phases (the second runs inside scripts/netns-run, re-executing this script).
cache="$(abs "${LIVEGATE_IMAGE_CACHE:-target/image-cache}")"
setup_tools() {
	store="$cache/storage-$driver"
	runroot="$cache/run-$driver"
}
# Neither gets the lock's descriptor: podman's conmon outlives the command.
bah() { buildah --root "$store" --runroot "$runroot" --storage-driver "$driver" "$@" 9>&-; }
# runc, not crun: crun refuses hybrid cgroup v1/v2 hosts. cgroupfs: no systemd needed.
# Events off: no journald either.
pod() {
	podman --root "$store" --runroot "$runroot" --storage-driver "$driver" --runtime runc \
		--cgroup-manager cgroupfs --events-backend none --tmpdir "$runroot/libpod" "$@" 9>&-
}

############################ phase 2: inside the network namespace ############################
if [ "${1:-}" = --play ]; then
	driver="$LIVEGATE_IMAGE_STORAGE_DRIVER"
	setup_tools
	work="$LIVEGATE_IMAGE_WORK"
	lv="$LIVEGATE_LOAD_VIEWERS"
	listen_port="$LIVEGATE_IMAGE_LISTEN_PORT"
	media_low="$LIVEGATE_IMAGE_MEDIA_LOW" media_high="$LIVEGATE_IMAGE_MEDIA_HIGH" ice_tcp="$LIVEGATE_IMAGE_ICE_TCP"
	media="$media_low"
	[ "$media_high" = "$media_low" ] || media="$media_low-$media_high"
	size="$LIVEGATE_IMAGE_VIDEO_SIZE"
	ip="${LIVEGATE_TEST_MEDIA_IP:?not inside scripts/netns-run}"
	origin="https://$ip:$listen_port"
	viewer="$(cat "$work/auth/viewer-tokens")"
	admin="$(cat "$work/auth/admin-tokens")"
	# Verified against the test's own certificate (its names include the namespace's address).
	curl=(curl -sS --max-time 5 --cacert "$work/tls/tls.crt")

	stop_container() { pod rm -f -t 0 "$container" >/dev/null 2>&1 || true; }
	save_log() { pod logs "$container" >"$out/gateway.log" 2>&1 || true; }
	trap 'rc=$?; save_log; stop_container; [ $rc = 0 ] || [ -z "$step" ] || say "(the step that failed: $step; logs in $out)"' EXIT

	begin "run: podman run --read-only as 10001:10001, writable only the k8s emptyDirs, config from ${LIVEGATE_IMAGE_CONFIG_NAME}"
	stop_container
	# The emptyDirs as the kubelet makes them: host folders (drwxrwsrwx root:fsGroup) bind-mounted.
	# Not --tmpfs: runc gives a tmpfs the mode of the image's folder it covers (0750) but not its
	# owner (10001), so uid 10001 could not write to it.
	rm -rf "$work/emptydir"
	for d in tmp hls state; do
		install -d -o 0 -g 10001 -m 2777 "$work/emptydir/$d"
	done
	# The Deployment's securityContext and volumes. The rlimits are set because podman's defaults
	# (1048576 open files, the host's process limit) need CAP_SYS_RESOURCE, which root lacks on
	# some machines (this CI's).
	pod run -d --name "$container" --network host \
		--read-only --read-only-tmpfs=false \
		--user 10001:10001 --group-add 44 --cap-drop ALL --security-opt no-new-privileges \
		--ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
		-v "$work/emptydir/tmp:/tmp" \
		-v "$work/emptydir/hls:/var/lib/livegate/hls" \
		-v "$work/emptydir/state:/var/lib/livegate/state" \
		-v "$work/config:/etc/livegate/config:ro" \
		-v "$work/tls:/etc/livegate/tls:ro" \
		-v "$work/auth:/etc/livegate/auth:ro" \
		"$image" --config /etc/livegate/config/livegate.toml >/dev/null ||
		fail "podman run did not start the container"

	running() { [ "$(pod inspect --format '{{.State.Running}}' "$container" 2>/dev/null)" = true ]; }
	died() {
		save_log
		tail -n 30 "$out/gateway.log" >&2
		fail "the gateway exited ($(pod inspect --format 'exit code {{.State.ExitCode}}' "$container" 2>/dev/null)) $1; log above and in $out/gateway.log"
	}
	# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.25 s.
	wait_for() {
		local seconds="$1" what="$2" deadline
		shift 2
		deadline=$((SECONDS + seconds))
		until "$@"; do
			running || died "while waiting for $what"
			[ "$SECONDS" -lt "$deadline" ] || {
				save_log
				fail "$what: not within ${seconds} s (gateway log: $out/gateway.log)"
			}
			sleep 0.25
		done
	}
	status() { "${curl[@]}" -o /dev/null -w '%{http_code}' "$@" 2>/dev/null || true; }
	ok() { [ "$(status "$@")" = 200 ]; }

	begin "healthz: GET $origin/healthz answers 200 (the startup probe: 30 x 2 s)"
	wait_for 60 "GET /healthz = 200" ok "$origin/healthz"

	begin "process: the gateway runs as uid 10001, groups 10001 and 44, no capabilities, read-only root"
	pid="$(pod inspect --format '{{.State.Pid}}' "$container")"
	[ -r "/proc/$pid/status" ] || fail "no process $pid for the container"
	awk '/^Uid:/ { for (i = 2; i <= 5; i++) if ($i != 10001) exit 1 }' "/proc/$pid/status" ||
		fail "uids are $(grep '^Uid:' "/proc/$pid/status"), expected 10001 (runAsUser)"
	awk '/^Gid:/ { for (i = 2; i <= 5; i++) if ($i != 10001) exit 1 }' "/proc/$pid/status" ||
		fail "gids are $(grep '^Gid:' "/proc/$pid/status"), expected 10001 (runAsGroup)"
	grep -Eq '^Groups:.*\<44\>' "/proc/$pid/status" ||
		fail "supplementary groups are $(grep '^Groups:' "/proc/$pid/status"), expected 44 (video)"
	grep -q '^CapEff:[[:space:]]*0000000000000000$' "/proc/$pid/status" ||
		fail "effective capabilities $(grep '^CapEff:' "/proc/$pid/status"), expected none"
	awk '$5 == "/" { split($6, o, ","); for (i in o) if (o[i] == "ro") found = 1 } END { exit !found }' \
		"/proc/$pid/mountinfo" || fail "the container's / is not mounted read-only"

	begin "readyz: /readyz answers 200 (every stream playing; encoder \"auto\" found one)"
	wait_for 60 "GET /readyz = 200" ok "$origin/readyz"

	begin "tokens: the token files are read (no token: 401; viewer token: the stream is playing)"
	code="$(status "$origin/api/streams")"
	[ "$code" = 401 ] || fail "GET /api/streams without a token answered $code, expected 401"
	streams="$("${curl[@]}" -H "Authorization: Bearer $viewer" "$origin/api/streams")" ||
		fail "GET /api/streams with the viewer token failed"
	python3 -c 'import json, sys; s = json.loads(sys.argv[1]); assert any(x["name"] == "live" and x["state"] == "playing" for x in s), s' \
		"$streams" || fail "/api/streams: expected stream live playing, got $streams"
	code="$(status -H "Authorization: Bearer $admin" "$origin/metrics")"
	[ "$code" = 200 ] || fail "GET /metrics with the admin token answered $code, expected 200"

	begin "HLS: playlist over HTTPS with ?token=, a segment, ffprobe says H.264 $size"
	playlist_url="$origin/hls/live/index.m3u8?token=$viewer"
	segments() {
		"${curl[@]}" -o "$out/index.m3u8" "$playlist_url" 2>/dev/null &&
			[ "$(grep -c '^segment-' "$out/index.m3u8")" -ge 2 ]
	}
	wait_for 20 "an HLS playlist with 2 segments" segments
	head -n 1 "$out/index.m3u8" | grep -qx '#EXTM3U' || fail "the playlist does not start with #EXTM3U: $out/index.m3u8"
	segment="$(grep '^segment-' "$out/index.m3u8" | tail -n 1)"
	case "$segment" in *"token="*) ;; *) fail "segment URI $segment does not carry the token" ;; esac
	code="$("${curl[@]}" -o "$out/segment.ts" -w '%{http_code}' "$origin/hls/live/$segment")" || true
	[ "$code" = 200 ] || fail "GET /hls/live/$segment answered $code, expected 200"
	probe="$(ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,width,height -of csv=p=0 "$out/segment.ts" | awk 'NF && !n++')" ||
		fail "ffprobe cannot read the segment $out/segment.ts"
	[ "$probe" = "h264,${size/x/,}" ] || fail "ffprobe of the segment: $probe, expected h264,${size/x/,}"
	ls "/proc/$pid/root/var/lib/livegate/hls/live/" 2>/dev/null | grep -q '\.ts$' ||
		fail "no segment in the container's /var/lib/livegate/hls/live (hls_dir, an emptyDir)"
	[ -s "/proc/$pid/root/tmp/gstreamer-registry.bin" ] ||
		fail "no GStreamer registry at /tmp/gstreamer-registry.bin (GST_REGISTRY_1_0 of the image)"

	viewers=2 seconds=6
	begin "WebRTC: $viewers WHEP viewers (load_viewers) for $seconds s, media on UDP $media"
	# load_viewers takes no token: the stream argument carries it into the WHEP URL.
	"$lv" "$origin" "live?token=$viewer" "$viewers" "$seconds" "${LIVEGATE_IMAGE_PEER_IP:-10.99.0.2}" \
		>"$out/load_viewers.json" 2>"$out/load_viewers.log" &
	lv_pid=$!
	# While they play: which UDP ports has the gateway's process bound?
	sleep 4
	ss -Huanp 2>/dev/null | grep "pid=$pid," | awk '{ n = split($4, a, ":"); print a[n] }' | sort -un >"$out/udp-ports"
	wait "$lv_pid" || fail "load_viewers exited with an error: $(cat "$out/load_viewers.log")"
	python3 - "$out/load_viewers.json" "$viewers" <<-'EOF' || fail "WebRTC viewers: $(cat "$out/load_viewers.json")"
		import json, sys
		report = json.load(open(sys.argv[1]))
		want = int(sys.argv[2])
		problems = [f"failed: {f}" for f in report["failures"]]
		if len(report["viewers"]) != want:
		    problems.append(f"{len(report['viewers'])} of {want} viewers connected")
		for i, v in enumerate(report["viewers"]):
		    if not v["connected"]:
		        problems.append(f"viewer {i}: ICE/DTLS never connected")
		    # A check that video flows, not a benchmark: 30 are sent, the machine may be busy.
		    if v["fps"] < 15:
		        problems.append(f"viewer {i}: {v['fps']:.1f} frames/s, expected >= 15 (30 sent)")
		    if v["loss_ratio"] > 0.02:
		        problems.append(f"viewer {i}: {v['loss_ratio']:.1%} of packets lost, expected <= 2 %")
		for p in problems:
		    print(f"tests/image: {p}", file=sys.stderr)
		print("tests/image: viewers: " + ", ".join(f"{v['fps']:.1f} fps, {v['packets']} packets, {v['lost']} lost"
		      for v in report["viewers"]), file=sys.stderr)
		sys.exit(1 if problems else 0)
	EOF
	[ -s "$out/udp-ports" ] || fail "the gateway had no UDP socket while viewers played"
	while read -r port; do
		[ "$port" -ge "$media_low" ] && [ "$port" -le "$media_high" ] ||
			fail "the gateway bound UDP port $port, outside the configured media port(s) $media"
	done <"$out/udp-ports"
	# TCP: HTTPS, and ICE-TCP when --check-config says so; nothing else listens.
	ss -Htlnp 2>/dev/null | grep "pid=$pid," | awk '{ n = split($4, a, ":"); print a[n] }' | sort -un >"$out/tcp-ports"
	want="$( (echo "$listen_port"; [ "$ice_tcp" = - ] || echo "$ice_tcp") | sort -un)"
	[ "$(cat "$out/tcp-ports")" = "$want" ] ||
		fail "the gateway listens on TCP $(tr '\n' ' ' <"$out/tcp-ports"), expected $(echo $want) (HTTPS, ICE-TCP)"

	begin "stop: SIGTERM (podman stop -t 15, the pod's grace period) ends it with exit code 0"
	started=$SECONDS
	pod stop -t 15 "$container" >/dev/null || fail "podman stop failed"
	code="$(pod inspect --format '{{.State.ExitCode}}' "$container")"
	save_log
	[ "$code" = 0 ] || fail "exit code $code after SIGTERM, expected 0 (log: $out/gateway.log)"
	[ $((SECONDS - started)) -lt 15 ] || fail "SIGTERM took $((SECONDS - started)) s, the grace period is 15 s"
	if grep -q '"level":"ERROR"' "$out/gateway.log"; then
		grep '"level":"ERROR"' "$out/gateway.log" | head -n 5 >&2
		fail "the gateway logged errors (above; $out/gateway.log)"
	fi
	step=""
	exit 0
fi

############################ phase 1: base image and build ############################
[ "$(id -u)" = 0 ] || fail "needs root: debootstrap, buildah and podman with native storage (run it as root, or via sudo)"
for tool in buildah podman runc debootstrap curl openssl ffprobe ss python3; do
	command -v "$tool" >/dev/null 2>&1 || fail "$tool not found; scripts/install-deps test installs it"
done
bin="$(abs "${LIVEGATE_BIN:-target/release/livegate}")"
lv="$(abs "${LIVEGATE_LOAD_VIEWERS:-target/release/examples/load_viewers}")"
config="$(abs "${LIVEGATE_IMAGE_CONFIG:-k8s/base/livegate.toml}")"
[ -x "$bin" ] || fail "$bin not found; cargo build --release --bin livegate (make test-image does)"
[ -x "$lv" ] || fail "$lv not found; cargo build --release --example load_viewers (make test-image does)"
[ -f "$config" ] || fail "config $config not found"
dockerfile="$root/Dockerfile"
release="$(sed -n 's/^ARG DEBIAN_RELEASE=//p' "$dockerfile")"
[ -n "$release" ] || fail "no 'ARG DEBIAN_RELEASE=' default in $dockerfile"
grep -q '^FROM debian:${DEBIAN_RELEASE}-slim AS runtime' "$dockerfile" ||
	fail "the Dockerfile's runtime stage no longer starts FROM debian:\${DEBIAN_RELEASE}-slim: update this test's base image"
base_ref="docker.io/library/debian:$release-slim"
mirror="${LIVEGATE_IMAGE_MIRROR:-http://deb.debian.org/debian}"
t0=$SECONDS

rm -rf "$out"
mkdir -p "$out" "$(dirname "$cache")"
# One run at a time per cache: one container name, one storage.
exec 9>"$cache.lock"
flock -n 9 || fail "another tests/image run holds $cache.lock"
mkdir -p "$cache"
if [ "${LIVEGATE_IMAGE_FRESH:-0}" = 1 ]; then
	say "LIVEGATE_IMAGE_FRESH=1: dropping $cache"
	for d in "$cache"/storage-*; do
		[ -d "$d" ] || continue
		driver="${d##*/storage-}"
		setup_tools
		pod system reset --force >/dev/null 2>&1 || true
	done
	rm -rf "$cache"
	mkdir -p "$cache"
fi
# What a killed run left.
rm -rf "$cache"/work.*
work="$(mktemp -d "$cache/work.XXXXXX")"
cleanup_work() { rm -rf "$work"; }
trap 'rc=$?; cleanup_work; [ $rc = 0 ] || [ -z "$step" ] || say "(the step that failed: $step; logs in $out)"' EXIT

# Native overlay when this kernel mounts it on the cache's file system (copy-on-write: a
# container costs nothing); vfs otherwise (every layer and container a full copy: slower).
driver="${LIVEGATE_IMAGE_STORAGE_DRIVER:-$(cat "$cache/storage-driver" 2>/dev/null || true)}"
if [ -z "$driver" ]; then
	mkdir -p "$work/ovl/lower" "$work/ovl/upper" "$work/ovl/work" "$work/ovl/merged"
	if mount -t overlay overlay -o "lowerdir=$work/ovl/lower,upperdir=$work/ovl/upper,workdir=$work/ovl/work" \
		"$work/ovl/merged" 2>/dev/null; then
		umount "$work/ovl/merged"
		driver=overlay
	else
		driver=vfs
	fi
	echo "$driver" >"$cache/storage-driver"
fi
case "$driver" in overlay | vfs) ;; *) fail "LIVEGATE_IMAGE_STORAGE_DRIVER=$driver: overlay or vfs" ;; esac
setup_tools
say "container storage: $store ($driver)"
# Whatever an interrupted run left behind.
pod rm -a -f -t 0 >/dev/null 2>&1 || true
bah rm -a >/dev/null 2>&1 || true

begin "base: local image $base_ref from debootstrap --variant=minbase $release"
base_tar="$cache/debian-$release-slim.tar"
if [ -f "$base_tar" ] && [ -n "$(find "$base_tar" -mtime +7)" ]; then
	say "the cached base is over 7 days old: making it again (security updates)"
	rm -f "$base_tar"
	bah rmi -f "$base_ref" >/dev/null 2>&1 || true
fi
if [ ! -f "$base_tar" ]; then
	bah rmi -f "$base_ref" >/dev/null 2>&1 || true
	rootfs="$work/rootfs"
	say "debootstrap from $mirror (log: $out/debootstrap.log)"
	debootstrap --variant=minbase "$release" "$rootfs" "$mirror" >"$out/debootstrap.log" 2>&1 || {
		tail -n 20 "$out/debootstrap.log" >&2
		fail "debootstrap --variant=minbase $release $mirror failed (log above; is $mirror reachable?)"
	}
	# What the official slim image has beyond minbase (debuerreotype): deb822 sources with
	# updates and security, dpkg leaving out documentation, apt keeping no caches.
	rm -f "$rootfs/etc/apt/sources.list"
	cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<-EOF
		Types: deb
		URIs: http://deb.debian.org/debian
		Suites: $release $release-updates
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

		Types: deb
		URIs: http://deb.debian.org/debian-security
		Suites: $release-security
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<-'EOF'
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/groff/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/linda/*
		path-exclude /usr/share/lintian/overrides/*
		path-exclude /usr/share/locale/*
		path-include /usr/share/locale/locale.alias
		path-exclude /usr/share/man/*
	EOF
	cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<-'EOF'
		DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		Dir::Cache::pkgcache "";
		Dir::Cache::srcpkgcache "";
	EOF
	echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
	echo 'APT::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
	find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
	find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
	rm -rf "$rootfs"/usr/share/{groff,info,linda,man}/* "$rootfs"/usr/share/lintian/overrides/*
	find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
		"$rootfs"/var/log/* "$rootfs"/tmp/*
	# The host's names stay out of the image (runtimes mount their own over these).
	: >"$rootfs/etc/resolv.conf"
	: >"$rootfs/etc/hostname"
	tar --numeric-owner -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
		-cf "$work/base.tar" . || fail "could not pack the debootstrap root"
	rm -rf "$rootfs"
	mv "$work/base.tar" "$base_tar"
fi
if ! bah inspect --type image "$base_ref" >/dev/null 2>&1; then
	ctr="$(bah from scratch)"
	bah add "$ctr" "$base_tar" / >/dev/null
	bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$ctr"
	bah commit -q --rm "$ctr" "$base_ref" >/dev/null || fail "buildah commit $base_ref failed"
fi
say "base ready after $((SECONDS - t0)) s"

begin "build: the Dockerfile's runtime stage, with $bin as the build stage's /out/livegate"
# A copy: the binary may be rebuilt while the image builds. It must run (not caught mid-link).
install -D -m 0755 "$bin" "$work/build-stage/out/livegate"
"$work/build-stage/out/livegate" --version >/dev/null 2>&1 ||
	fail "the copy of $bin does not run (was it being rebuilt? run again)"
t1=$SECONDS
bah build --isolation chroot --pull=never --layers --target runtime \
	--build-context "build=$work/build-stage" -f "$dockerfile" -t "$image" "$root" >"$out/build.log" 2>&1 || {
	tail -n 30 "$out/build.log" >&2
	fail "buildah build of the Dockerfile's runtime stage failed (log above and in $out/build.log)"
}
# Layers no tag needs any more (the previous binary's); the cached apt layer stays.
bah rmi --prune >/dev/null 2>&1 || true
say "image built in $((SECONDS - t1)) s ($(grep -c 'Using cache' "$out/build.log" || true) steps from cache)"

begin "image config: user 10001, and EXPOSE naming the ports the config listens on"
bah inspect --type image "$image" >"$out/image.json"
mkdir -p "$work/config" "$work/tls" "$work/auth"
cp "$config" "$work/config/livegate.toml"
# A certificate for the addresses the test connects to, and fresh tokens, mounted where the
# Deployment mounts the Secrets, with its modes (0440, group fsGroup 10001).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=livegate-image-test \
	-addext "subjectAltName=DNS:localhost,IP:10.99.0.1,IP:127.0.0.1" \
	-keyout "$work/tls/tls.key" -out "$work/tls/tls.crt" 2>"$out/openssl.log" || fail "openssl could not make a certificate"
head -c 24 /dev/urandom | base64 | tr '+/' '-_' >"$work/auth/viewer-tokens"
head -c 24 /dev/urandom | base64 | tr '+/' '-_' >"$work/auth/admin-tokens"
chgrp -R 10001 "$work/tls" "$work/auth"
chmod 0440 "$work/tls"/* "$work/auth"/*
chmod 0755 "$work" "$work/config" "$work/tls" "$work/auth"
chmod 0644 "$work/config/livegate.toml"
# The image's own binary reads the config (as the pod would) and says what it will bind.
pod run --rm --network none --read-only --user 10001:10001 --cap-drop ALL \
	--ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
	-v "$work/config:/etc/livegate/config:ro" -v "$work/tls:/etc/livegate/tls:ro" -v "$work/auth:/etc/livegate/auth:ro" \
	"$image" --config /etc/livegate/config/livegate.toml --check-config >"$out/check-config.txt" 2>&1 || {
	cat "$out/check-config.txt" >&2
	fail "livegate --check-config in the image rejected $config (above)"
}
settings="$(python3 - "$out/image.json" "$out/check-config.txt" <<-'EOF'
	import json, re, sys
	image = json.load(open(sys.argv[1]))["OCIv1"]["config"]
	text = open(sys.argv[2]).read()
	def setting(pattern, what):
	    m = re.search(pattern, text, re.M)
	    if not m:
	        sys.exit(f"tests/image: FAILED: --check-config printed no {what} (pattern {pattern!r}):\n{text}")
	    return m
	listen = int(setting(r"^listen = .*:(\d+)$", "listen address").group(1))
	# "50000-50099 (one per viewer)", "8189/udp (shared, no ICE-TCP)", "8189/udp and 8189/tcp (shared)"
	m = setting(r"^webrtc ports = (\d+)(?:-(\d+))?(?:/udp)?(?: and (\d+)/tcp)?", "webrtc ports")
	low, high = int(m.group(1)), int(m.group(2) or m.group(1))
	ice_tcp = int(m.group(3)) if m.group(3) else None
	size = setting(r"^video = (\d+x\d+) ", "video size").group(1)
	problems = []
	if image.get("User") != "10001:10001":
	    problems.append(f"USER is {image.get('User')!r}, expected '10001:10001' (runAsUser in k8s/)")
	# ExposedPorts: "8443/tcp", a range "50000-50099/udp" (buildah) or each port (docker).
	exposed = {"tcp": set(), "udp": set()}
	for key in image.get("ExposedPorts") or {}:
	    ports, proto = key.split("/")
	    a, _, b = ports.partition("-")
	    exposed[proto].update(range(int(a), int(b or a) + 1))
	needed = {"tcp": {listen} | ({ice_tcp} if ice_tcp else set()), "udp": set(range(low, high + 1))}
	def span(ports):
	    return f"{ports[0]}" if len(ports) == 1 else f"{ports[0]}-{ports[-1]}" if len(ports) == ports[-1] - ports[0] + 1 else str(ports)
	for proto in ("tcp", "udp"):
	    missing, unused = sorted(needed[proto] - exposed[proto]), sorted(exposed[proto] - needed[proto])
	    if missing:
	        problems.append(f"EXPOSE lacks {proto.upper()} {span(missing)}, which the gateway binds")
	    if unused:
	        problems.append(f"EXPOSE names {proto.upper()} {span(unused)}, which the gateway never binds")
	if problems:
	    problems.append(f"the image exposes {sorted(image.get('ExposedPorts') or {})}; --check-config: {m.group(0)}")
	for p in problems:
	    print(f"tests/image: Dockerfile: {p}", file=sys.stderr)
	if problems:
	    sys.exit(1)
	print(listen, low, high, ice_tcp or "-", size)
EOF
)" || fail "the image's config does not match what $config makes the gateway do (above)"
read -r listen_port media_low media_high ice_tcp video_size <<<"$settings"
media="$media_low"
[ "$media_high" = "$media_low" ] || media="$media_low-$media_high"
say "listens on $listen_port/tcp, WebRTC media on UDP $media, ICE-TCP ${ice_tcp/-/off}, video $video_size"

step=""
export LIVEGATE_IMAGE_WORK="$work" LIVEGATE_LOAD_VIEWERS="$lv" LIVEGATE_IMAGE_LISTEN_PORT="$listen_port" \
	LIVEGATE_IMAGE_MEDIA_LOW="$media_low" LIVEGATE_IMAGE_MEDIA_HIGH="$media_high" LIVEGATE_IMAGE_ICE_TCP="$ice_tcp" \
	LIVEGATE_IMAGE_VIDEO_SIZE="$video_size" LIVEGATE_IMAGE_CONFIG_NAME="${config#"$root"/}" \
	LIVEGATE_IMAGE_CACHE="$cache" LIVEGATE_IMAGE_STORAGE_DRIVER="$driver"
"$root/scripts/netns-run" "$here/run.sh" --play || exit 1
say "passed in $((SECONDS - t0)) s: image $image built from Dockerfile, served HLS and WebRTC read-only as 10001"
