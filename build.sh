#!/usr/bin/env bash
# Build and push the multi-arch livegate image with docker buildx.
#
#   PROFILE=registry.example.com ./build.sh        # build + push amd64 and arm64
#   PROFILE=registry.example.com ./build.sh -d     # print the commands only
#
# See ./build.sh -h for the settings.
set -euo pipefail

usage() {
	cat <<'USAGE'
Usage: [PROFILE=REGISTRY] [IMAGE=NAME] [TAG=TAG] ./build.sh [-d] [-l] [-h]

Builds the livegate image from ./Dockerfile for several platforms with
docker buildx and pushes it to REGISTRY/NAME:TAG.

Options:
  -d   dry run: print the exact docker buildx commands instead of running them
  -l   local: build for this machine's platform only and load the image into
       the local docker (no push); PROFILE is then optional
  -h   show this help

Environment:
  PROFILE    registry (and optional path) to push to, e.g. registry.example.com
             or ghcr.io/acme; required unless -l or IMAGE holds a registry
  IMAGE      image name (default: livegate)
  TAG        image tag (default: `git describe --tags --always --dirty`, else
             the version in Cargo.toml)
  PLATFORMS  buildx platforms (default: linux/amd64,linux/arm64)
  LATEST     1 to also tag and push :latest (default: 0)
  BUILDER    buildx builder name, created if missing (default: livegate-builder)
  BUILD_ARGS extra arguments for docker buildx build, e.g. "--build-arg WITH_VAAPI=1"

Building a foreign platform uses QEMU emulation; register it once per host
with your distribution's qemu-user-static/binfmt support (see
docs/KUBERNETES.md), or attach a native arm64 node to the builder.
USAGE
}

DRY_RUN=0
LOCAL=0
while getopts ":dlh" opt; do
	case "$opt" in
	d) DRY_RUN=1 ;;
	l) LOCAL=1 ;;
	h)
		usage
		exit 0
		;;
	*)
		echo "build.sh: unknown option -$OPTARG" >&2
		usage >&2
		exit 2
		;;
	esac
done
shift $((OPTIND - 1))
if [ "$#" -gt 0 ]; then
	echo "build.sh: unexpected argument: $1" >&2
	usage >&2
	exit 2
fi

cd "$(dirname "$0")"

IMAGE="${IMAGE:-livegate}"
PLATFORMS="${PLATFORMS:-linux/amd64,linux/arm64}"
LATEST="${LATEST:-0}"
BUILDER="${BUILDER:-livegate-builder}"
BUILD_ARGS="${BUILD_ARGS:-}"

if [ -z "${TAG:-}" ]; then
	TAG="$(git describe --tags --always --dirty 2>/dev/null || true)"
	if [ -z "$TAG" ]; then
		TAG="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml 2>/dev/null | head -n 1)"
	fi
	TAG="${TAG:-dev}"
fi
# Docker tags allow [A-Za-z0-9_.-], at most 128 characters.
TAG="$(printf '%s' "$TAG" | tr -c 'A-Za-z0-9_.-' '-' | cut -c1-128)"

if [ -n "${PROFILE:-}" ]; then
	REF="${PROFILE%/}/${IMAGE}"
else
	REF="$IMAGE"
fi
if [ "$LOCAL" = 0 ] && [ -z "${PROFILE:-}" ] && [[ "$IMAGE" != */* ]]; then
	echo "build.sh: set PROFILE to the registry to push to, e.g. PROFILE=registry.example.com ./build.sh (or use -l)" >&2
	exit 2
fi

REVISION="$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)"

build=(docker buildx build --builder "$BUILDER")
if [ "$LOCAL" = 1 ]; then
	build+=(--load)
else
	build+=(--platform "$PLATFORMS" --push)
fi
build+=(--build-arg "VERSION=$TAG" --build-arg "REVISION=$REVISION")
build+=(--tag "$REF:$TAG")
if [ "$LATEST" = 1 ]; then
	build+=(--tag "$REF:latest")
fi
if [ -n "$BUILD_ARGS" ]; then
	read -r -a extra <<<"$BUILD_ARGS"
	build+=("${extra[@]}")
fi
build+=(--file Dockerfile .)

create=(docker buildx create --name "$BUILDER" --driver docker-container --bootstrap)

# Print a command so that it can be pasted into a shell as is.
show() {
	local out="" arg q="'"
	for arg in "$@"; do
		if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
			out+="$arg "
		else
			out+="$q${arg//$q/$q\\$q$q}$q "
		fi
	done
	printf '%s\n' "${out% }"
}

if [ "$DRY_RUN" = 1 ]; then
	echo "# dry run: livegate image $REF:$TAG"
	echo "# builder (created only when 'docker buildx inspect $BUILDER' fails):"
	show "${create[@]}"
	show "${build[@]}"
	exit 0
fi

if ! docker buildx version >/dev/null 2>&1; then
	echo "build.sh: docker buildx is not available (install the docker-buildx plugin)" >&2
	exit 1
fi
if ! docker buildx inspect "$BUILDER" >/dev/null 2>&1; then
	show "${create[@]}"
	"${create[@]}"
fi
show "${build[@]}"
"${build[@]}"
echo "build.sh: built $REF:$TAG"
