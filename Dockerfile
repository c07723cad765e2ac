# syntax=docker/dockerfile:1
#
# livegate container image: build the release binary, then copy it into a
# slim Debian bookworm runtime with only the GStreamer plugins it uses.
# Multi-arch (linux/amd64, linux/arm64) images: ./build.sh (docker buildx).
#
# GStreamer element -> plugin file -> Debian 12 package (GStreamer 1.22,
# checked with `gst-inspect-1.0 ELEMENT | grep Filename` and `dpkg -S FILE`):
#   capsfilter queue tee identity clocksync filesrc
#                      libgstcoreelements.so      libgstreamer1.0-0
#   videotestsrc       libgstvideotestsrc.so      gstreamer1.0-plugins-base
#   videoconvert videoscale
#                      libgstvideoconvertscale.so gstreamer1.0-plugins-base
#   videorate          libgstvideorate.so         gstreamer1.0-plugins-base
#   appsink            libgstapp.so               gstreamer1.0-plugins-base
#   decodebin uridecodebin
#                      libgstplayback.so          gstreamer1.0-plugins-base
#   v4l2src v4l2h264enc libgstvideo4linux2.so     gstreamer1.0-plugins-good
#   jpegdec            libgstjpeg.so              gstreamer1.0-plugins-good
#   rtspsrc            libgstrtsp.so              gstreamer1.0-plugins-good
#   rtph264pay         libgstrtp.so               gstreamer1.0-plugins-good
#   qtdemux matroskademux (file: sources)
#                      libgstisomp4.so libgstmatroska.so gstreamer1.0-plugins-good
#   h264parse          libgstvideoparsersbad.so   gstreamer1.0-plugins-bad
#   hlssink2           libgsthls.so               gstreamer1.0-plugins-bad
#   mpegtsmux          libgstmpegtsmux.so         gstreamer1.0-plugins-bad
#   vah264enc          libgstva.so                gstreamer1.0-plugins-bad
#   nvh264enc          libgstnvcodec.so           gstreamer1.0-plugins-bad
#   x264enc            libgstx264.so              gstreamer1.0-plugins-ugly
#   avdec_h264 avenc_aac avdec_aac
#                      libgstlibav.so             gstreamer1.0-libav
#   audiotestsrc       libgstaudiotestsrc.so      gstreamer1.0-plugins-base
#   audioconvert audioresample audiomixer opusenc
#                      libgstaudio*.so libgstopus.so gstreamer1.0-plugins-base
#   rtpopuspay aacparse (rtp, audioparsers); pulsesrc
#                      libgstrtp.so libgstaudioparsers.so libgstpulseaudio.so gstreamer1.0-plugins-good
#   alsasrc            libgstalsa.so              gstreamer1.0-alsa
#   vaapih264enc       libgstvaapi.so             gstreamer1.0-vaapi (optional:
#                      --build-arg WITH_VAAPI=1)
# Hardware encoders also need the host's driver stack (VA-API driver, NVIDIA
# runtime) inside the container; encoder = "auto" falls back to x264.

ARG DEBIAN_RELEASE=bookworm

############################ build ############################
FROM rust:1-${DEBIAN_RELEASE} AS build
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      pkg-config \
      libgstreamer1.0-dev \
      libgstreamer-plugins-base1.0-dev \
      libgstreamer-plugins-bad1.0-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cargo registry and target directory are BuildKit cache mounts (one per
# architecture), so a rebuild only recompiles what changed.
RUN --mount=type=cache,id=livegate-cargo-registry-${TARGETARCH},target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=livegate-target-${TARGETARCH},target=/src/target,sharing=locked \
    cargo build --release --locked \
 && install -D -m 0755 target/release/livegate /out/livegate

############################ runtime ############################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG WITH_VAAPI=0
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="livegate" \
      org.opencontainers.image.description="Capture live video once, serve it over WebRTC and HLS from one HTTPS binary" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates \
      libgstreamer1.0-0 \
      gstreamer1.0-plugins-base \
      gstreamer1.0-plugins-good \
      gstreamer1.0-plugins-bad \
      gstreamer1.0-plugins-ugly \
      gstreamer1.0-libav \
      gstreamer1.0-alsa \
 && if [ "${WITH_VAAPI}" = "1" ]; then \
      apt-get install -y --no-install-recommends gstreamer1.0-vaapi; \
    fi \
 && rm -rf /var/lib/apt/lists/*
# Fixed uid/gid 10001 (matches runAsUser in k8s/), member of "video"
# (gid 44 on Debian) so it can open /dev/videoN, and of "audio" (gid 29) for a
# camera's microphone, /dev/snd/*.
RUN groupadd --system --gid 10001 livegate \
 && useradd --system --uid 10001 --gid 10001 --groups video,audio \
      --home-dir /var/lib/livegate --no-create-home --shell /usr/sbin/nologin livegate \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/livegate /var/lib/livegate/hls /var/lib/livegate/state \
 && install -d -m 0755 /etc/livegate
COPY --from=build /out/livegate /usr/local/bin/livegate
# GStreamer's plugin registry cache goes to a writable place even when the
# root filesystem is read-only (Kubernetes mounts an emptyDir on /tmp).
ENV GST_REGISTRY_1_0=/tmp/gstreamer-registry.bin \
    HOME=/tmp
USER 10001:10001
WORKDIR /var/lib/livegate
# HTTPS (pages, HLS, WHEP, WebSocket signalling) and WebRTC media: one UDP
# port for every viewer (--webrtc-port, default 8189) and ICE-TCP on the same
# number (--webrtc-tcp-port). tests/image checks these against the ports the
# gateway binds. No HEALTHCHECK: Kubernetes probes /healthz and /readyz.
EXPOSE 8443/tcp 8189/udp 8189/tcp
ENTRYPOINT ["/usr/local/bin/livegate"]
