//! The shared UDP socket: one task receives for every peer (`recvmmsg`); each peer's driver
//! sends straight to it, with the source address of the peer's candidate. A full send buffer
//! drops the datagram, as a congested link would: a shared socket has one waker, and a viewer
//! must not wait on the others.
//!
//! The packets of one video frame leave in one system call (UDP GSO, where the kernel has it):
//! webrtc-rs hands its socket one datagram at a time (it only batches runs of 16 or more), so
//! each peer's socket holds the SRTP packets of a frame, which share a destination and all but
//! the last a size, until the one with the RTP marker bit (the frame's last; SRTP leaves the
//! header in clear) or anything but RTP comes. The frame cannot be decoded before its last
//! packet anyway, and they come microseconds apart. Only the video's SSRC is gathered: sound
//! has no frames to wait for. Retransmissions go at once.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::runtime::{AsyncUdpSocket, EcnCodepoint, RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};

use super::{inbox_for, stun, PeerId, SharedPort, SharedPortCounters};
use crate::webrtc::forward::newer;

/// Datagrams waiting for one peer's driver. Viewers send us little (STUN, DTLS, RTCP).
pub(super) const INBOX: usize = 128;
/// The largest datagram taken from a viewer.
const MAX_DATAGRAM: usize = 2048;
/// Receive buffer per message of a `recvmmsg` batch: room for GRO-coalesced datagrams.
const RECEIVE_BUFFER: usize = 64 * 1024;
/// Kernel buffers of the shared socket (capped by net.core.[rw]mem_max).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// One received datagram on its way to a peer.
pub(super) struct Datagram {
    data: Bytes,
    from: SocketAddr,
}

pub(super) struct Socket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    pub(super) local: SocketAddr,
}

impl Socket {
    pub(super) fn bind(addr: SocketAddr) -> io::Result<Socket> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let io = tokio::net::UdpSocket::from_std(socket)?;
        let state = UdpSocketState::new(UdpSockRef::from(&io))?;
        for (what, result) in [
            ("send", state.set_send_buffer_size(UdpSockRef::from(&io), SOCKET_BUFFER)),
            ("receive", state.set_recv_buffer_size(UdpSockRef::from(&io), SOCKET_BUFFER)),
        ] {
            if let Err(err) = result {
                tracing::debug!(error = %err, "could not enlarge the shared socket's {what} buffer");
            }
        }
        let local = io.local_addr()?;
        Ok(Socket { io, state, local })
    }

    fn send(&self, transmit: &Transmit<'_>, counters: &SharedPortCounters) -> io::Result<usize> {
        match self.state.try_send(UdpSockRef::from(&self.io), transmit) {
            Ok(()) => Ok(transmit.contents.len()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let datagrams = transmit.segment_size.map_or(1, |size| transmit.contents.len().div_ceil(size));
                counters.send_buffer_full.fetch_add(datagrams as u64, Ordering::Relaxed);
                Ok(transmit.contents.len())
            }
            Err(err) => Err(err),
        }
    }
}

/// Receives for every peer until `shutdown`.
pub(super) async fn receive(port: Arc<SharedPort>, shutdown: CancellationToken) {
    let socket = &port.udp;
    let mut buffers = vec![vec![0u8; RECEIVE_BUFFER]; BATCH_SIZE];
    let mut meta = [RecvMeta::default(); BATCH_SIZE];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.io.async_io(tokio::io::Interest::READABLE, || {
                let mut slices: Vec<IoSliceMut> = buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                socket.state.recv(UdpSockRef::from(&socket.io), &mut slices, &mut meta)
            }) => received,
        };
        let count = match received {
            Ok(count) => count,
            Err(err) => {
                // ICMP errors of earlier sends surface here; the socket itself is fine.
                tracing::debug!(error = %err, "shared WebRTC socket receive error");
                continue;
            }
        };
        for (buffer, meta) in buffers.iter().zip(&meta).take(count) {
            for datagram in buffer[..meta.len].chunks(meta.stride.max(1)) {
                dispatch(&port, datagram, meta.addr, meta.dst_ip);
            }
        }
    }
}

fn dispatch(port: &SharedPort, datagram: &[u8], from: SocketAddr, to: Option<IpAddr>) {
    // A viewer sends nothing larger (STUN, DTLS records, RTCP); this bounds what an inbox holds.
    if datagram.len() > MAX_DATAGRAM {
        port.counters.unroutable.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // A dual-stack socket sees IPv4 peers as ::ffff:a.b.c.d; candidates name them a.b.c.d.
    let (from, to) = (SocketAddr::new(from.ip().to_canonical(), from.port()), to.map(|ip| ip.to_canonical()));
    let mut routes = port.routes.lock().expect("routes lock");
    // STUN: a signed binding request makes its source address its peer's.
    let is_stun = datagram.first().is_some_and(|b| *b < 4);
    let signed = is_stun.then(|| routes.signed_request_peer(datagram).map(|(peer, _)| peer)).flatten();
    if let Some(peer) = signed {
        routes.claim(from, peer);
    }
    let nominates = signed.is_some() && stun::BindingRequest::parse(datagram).is_some_and(|r| r.nominates);
    let peer = signed.or_else(|| routes.by_remote.get(&from).copied());
    let Some(peer_routes) = peer.and_then(|peer| routes.peers.get_mut(&peer)) else {
        port.counters.unroutable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let again = peer_routes.nomination.passing(datagram, from, nominates);
    let Some(inbox) = inbox_for(&peer_routes.datagrams, to) else {
        port.counters.unroutable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    for data in std::iter::once(Bytes::copy_from_slice(datagram)).chain(again) {
        if inbox.try_send(Datagram { data, from }).is_err() {
            port.counters.inbox_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// webrtc-rs (0.21), as the controlled agent, does not answer a nominating check on a pair it
/// has not itself checked yet (RFC 8445 § 7.3.1.5 asks it to): it starts its own check, and the
/// browser, unanswered, asks again ~50 ms later, which delayed every first picture as much. So a
/// peer's first nominating request is kept and handed to it once more right after the response
/// to its own check from that address: the pair is valid by then, and the peer selects it and
/// answers at once. Had it answered the first, the browser ignores the second answer.
pub(super) enum Nomination {
    Awaited,
    Held { from: SocketAddr, request: Bytes },
    Replayed,
}

impl Nomination {
    /// What to hand the peer again after `datagram`, from `from`.
    fn passing(&mut self, datagram: &[u8], from: SocketAddr, nominates: bool) -> Option<Bytes> {
        match self {
            Nomination::Awaited if nominates => {
                *self = Nomination::Held { from, request: Bytes::copy_from_slice(datagram) };
                None
            }
            Nomination::Held { from: held, .. } if *held == from && stun::is_binding_success(datagram) => {
                match std::mem::replace(self, Nomination::Replayed) {
                    Nomination::Held { request, .. } => Some(request),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// One peer's view of the shared socket, for one of its local addresses.
#[derive(Debug)]
pub(super) struct PeerSocket {
    port: Arc<SharedPort>,
    peer: PeerId,
    local: SocketAddr,
    /// The source address of what it sends, when the shared socket is bound to every interface.
    source: Option<IpAddr>,
    received: Mutex<mpsc::Receiver<Datagram>>,
    frame: Mutex<Run>,
    /// The SSRC whose frames are gathered (`PeerLease::gather_frames_of`); 0: none yet.
    video_ssrc: Arc<AtomicU32>,
}

/// Datagrams for one destination waiting to leave together: `segment` bytes each, the last
/// maybe fewer.
#[derive(Debug, Default)]
struct Run {
    destination: Option<SocketAddr>,
    segment: usize,
    count: usize,
    buffer: Vec<u8>,
    /// The newest RTP sequence number taken: anything not newer is a retransmission.
    newest: Option<u16>,
}

/// Most datagrams, and bytes, one GSO send carries (the kernel's limits).
const GSO_SEGMENTS: usize = 64;
const GSO_BYTES: usize = 65_000;

/// What an (S)RTP header says in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RtpHeader {
    /// The end of a frame.
    marker: bool,
    sequence: u16,
    /// RTP time: which frame it is.
    timestamp: u32,
    ssrc: u32,
}

/// An (S)RTP datagram's header, or `None` if it is not RTP (STUN, DTLS, RTCP).
fn rtp_header(datagram: &[u8]) -> Option<RtpHeader> {
    let header = datagram.get(..12)?;
    // Version 2, and not an RTCP packet type (200-206 read as marker + payload type 72-78).
    let rtp = header[0] >> 6 == 2 && !(64..=95).contains(&(header[1] & 0x7f));
    rtp.then(|| RtpHeader {
        marker: header[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([header[2], header[3]]),
        timestamp: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        ssrc: u32::from_be_bytes([header[8], header[9], header[10], header[11]]),
    })
}

impl Run {
    /// Takes `datagram` if it can follow the run's datagrams in one send.
    fn take(&mut self, destination: SocketAddr, datagram: &[u8], max_segments: usize) -> bool {
        let fits = match self.destination {
            None => true,
            Some(to) => {
                to == destination
                    && datagram.len() <= self.segment
                    && !self.closed()
                    && self.count < max_segments
                    && self.buffer.len() + datagram.len() <= GSO_BYTES
            }
        };
        if fits {
            if self.destination.is_none() {
                (self.destination, self.segment) = (Some(destination), datagram.len());
            }
            self.buffer.extend_from_slice(datagram);
            self.count += 1;
        }
        fits
    }

    /// Whether a datagram of fewer bytes than the others ended it: nothing may follow.
    fn closed(&self) -> bool {
        self.buffer.len() % self.segment.max(1) != 0
    }
}

impl PeerSocket {
    pub(super) fn new(
        port: Arc<SharedPort>,
        peer: PeerId,
        local: SocketAddr,
        received: mpsc::Receiver<Datagram>,
        video_ssrc: Arc<AtomicU32>,
    ) -> PeerSocket {
        let source = port.udp.local.ip().is_unspecified().then_some(local.ip());
        PeerSocket { port, peer, local, source, received: Mutex::new(received), frame: Mutex::default(), video_ssrc }
    }

    fn send(
        &self,
        destination: SocketAddr,
        ecn: Option<EcnCodepoint>,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<usize> {
        let transmit = Transmit { destination, ecn, contents, segment_size, src_ip: self.source };
        self.port.udp.send(&transmit, &self.port.counters)
    }

    /// Sends what the run holds, as one datagram or one GSO send.
    fn flush(&self, run: &mut Run) {
        if let Some(destination) = run.destination.take() {
            let segment_size = (run.count > 1).then_some(run.segment);
            if let Err(err) = self.send(destination, None, &run.buffer, segment_size) {
                tracing::debug!(%destination, error = %err, "send on the shared WebRTC socket failed");
            }
        }
        run.buffer.clear();
        run.count = 0;
    }
}

impl AsyncUdpSocket for PeerSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn poll_send(&self, _cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        // STUN (a first byte of 0-3, RFC 7983) is how a peer starts talking to an address.
        if transmit.contents.first().is_some_and(|b| *b < 4) {
            self.port.checking(self.peer, transmit.destination);
        }
        let max_segments = self.port.udp.state.max_gso_segments().min(GSO_SEGMENTS);
        let mut run = self.frame.lock().expect("frame lock");
        // The newest sequence number of what webrtc-rs batched itself is its last datagram's.
        let last = transmit.segment_size.map_or(0, |size| (transmit.contents.len() - 1) / size * size);
        let rtp = rtp_header(&transmit.contents[last..]);
        let send_now = || self.send(transmit.destination, transmit.ecn, transmit.contents, transmit.segment_size);
        let video_ssrc = self.video_ssrc.load(Ordering::Relaxed);
        // Sound (or video before its SSRC is known) goes as it comes, past any frame held.
        if rtp.is_some_and(|header| header.ssrc != video_ssrc) {
            return Poll::Ready(send_now());
        }
        // A retransmission answers a NACK: it goes at once, not with the next frame.
        let in_order = rtp.is_some_and(|header| run.newest.is_none_or(|newest| newer(header.sequence, newest)));
        if in_order {
            run.newest = rtp.map(|header| header.sequence);
        }
        let gathered = rtp.filter(|_| in_order && max_segments > 1 && transmit.segment_size.is_none());
        let Some(RtpHeader { marker, timestamp, .. }) = gathered else {
            self.flush(&mut run);
            return Poll::Ready(self.send(
                transmit.destination,
                transmit.ecn,
                transmit.contents,
                transmit.segment_size,
            ));
        };
        if !run.take(transmit.destination, transmit.contents, max_segments) {
            self.flush(&mut run);
            run.take(transmit.destination, transmit.contents, max_segments);
        }
        if marker || run.closed() || run.count == max_segments {
            self.flush(&mut run);
        }
        if marker {
            crate::hops::left(timestamp);
        }
        Poll::Ready(Ok(transmit.contents.len()))
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut received = self.received.lock().expect("peer inbox lock");
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let datagram = if filled == 0 {
                match received.poll_recv(cx) {
                    Poll::Ready(Some(datagram)) => datagram,
                    Poll::Ready(None) => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match received.try_recv() {
                    Ok(datagram) => datagram,
                    Err(_) => break,
                }
            };
            let len = datagram.data.len().min(bufs[filled].len());
            bufs[filled][..len].copy_from_slice(&datagram.data[..len]);
            let meta = &mut meta[filled];
            (meta.addr, meta.len, meta.stride, meta.ecn) = (datagram.from, len, len.max(1), None);
            meta.dst_ip = Some(self.local.ip());
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }

    fn max_gso_segments(&self) -> usize {
        self.port.udp.state.max_gso_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::super::stun::tests::{binding_request, nominating_request, success_response};
    use super::*;
    use std::time::Duration;

    const VIDEO: u32 = 0x0102_0304;
    const SOUND: u32 = 0x0a0b_0c0d;

    /// An SRTP-like datagram: an RTP header with `sequence`, `marker` and `ssrc` (its RTP time
    /// the sequence number's), then `len - 12` bytes.
    fn rtp_of(ssrc: u32, len: usize, sequence: u16, marker: bool) -> Vec<u8> {
        let mut datagram = vec![0u8; len];
        (datagram[0], datagram[1]) = (0x80, 102 | if marker { 0x80 } else { 0 });
        datagram[2..4].copy_from_slice(&sequence.to_be_bytes());
        datagram[4..8].copy_from_slice(&u32::from(sequence).to_be_bytes());
        datagram[8..12].copy_from_slice(&ssrc.to_be_bytes());
        datagram
    }

    fn rtp(len: usize, sequence: u16, marker: bool) -> Vec<u8> {
        rtp_of(VIDEO, len, sequence, marker)
    }

    #[test]
    fn tells_rtp_and_its_marker_from_rtcp_dtls_and_stun() {
        let header =
            |marker, sequence: u16| Some(RtpHeader { marker, sequence, timestamp: sequence.into(), ssrc: VIDEO });
        assert_eq!(rtp_header(&rtp(100, 7, false)), header(false, 7));
        assert_eq!(rtp_header(&rtp(100, 8, true)), header(true, 8));
        assert_eq!(rtp_header(&[0x81, 200, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0]), None, "a sender report");
        assert_eq!(rtp_header(&[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None, "DTLS");
        assert_eq!(rtp_header(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0]), None, "STUN");
    }

    #[tokio::test]
    async fn the_packets_of_a_frame_leave_together() {
        let shutdown = CancellationToken::new();
        let port = SharedPort::bind("127.0.0.1:0".parse().unwrap(), None, shutdown.clone()).unwrap();
        if port.udp.state.max_gso_segments() <= 1 {
            eprintln!("no UDP GSO on this kernel: nothing to test");
            return;
        }
        let (runtime, lease) = port.peer();
        lease.gather_frames_of(VIDEO);
        let socket = runtime.wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = client.local_addr().unwrap();
        let frame = [rtp(1200, 1, false), rtp(1200, 2, false), rtp(1200, 3, false), rtp(300, 4, true)];
        for (i, datagram) in frame.iter().enumerate() {
            socket.send_to(datagram, to).await.unwrap();
            let mut buf = [0u8; 1500];
            let nothing_yet = tokio::time::timeout(Duration::from_millis(20), client.recv_from(&mut buf)).await;
            if i < frame.len() - 1 {
                assert!(nothing_yet.is_err(), "datagram {i} waits for the end of its frame");
                if i == 1 {
                    // Sound in the middle of a frame passes it, and does not break it up.
                    let sound = rtp_of(SOUND, 90, 500, false);
                    socket.send_to(&sound, to).await.unwrap();
                    let (len, _) = tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf))
                        .await
                        .expect("sound goes at once")
                        .unwrap();
                    assert_eq!(len, 90);
                }
            } else {
                // The first has come; the rest follow as separate datagrams (the kernel splits).
                let (len, _) = nothing_yet.expect("the marker sends the frame").unwrap();
                assert_eq!(len, 1200);
                let mut lens = vec![len];
                for _ in 1..frame.len() {
                    lens.push(client.recv_from(&mut buf).await.unwrap().0);
                }
                assert_eq!(lens, [1200, 1200, 1200, 300]);
            }
        }
        // Anything that is not RTP goes at once, and so does a retransmission.
        let mut buf = [0u8; 1500];
        for (datagram, what) in
            [(vec![22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], "DTLS"), (rtp(1200, 2, false), "resent")]
        {
            socket.send_to(&datagram, to).await.unwrap();
            let received = tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf)).await;
            assert_eq!(received.expect(what).unwrap().0, datagram.len(), "{what}");
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn the_first_nomination_is_handed_over_again_after_the_peers_own_check_succeeds() {
        let shutdown = CancellationToken::new();
        let port = SharedPort::bind("127.0.0.1:0".parse().unwrap(), None, shutdown.clone()).unwrap();
        let shared = port.udp.local;
        let (runtime, lease) = port.peer();
        let socket = runtime.wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        lease.register("aaaa", "password a").unwrap();
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 1500];
        let mut receive = async || {
            let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
                .await
                .expect("delivered")
                .unwrap();
            buf[..len].to_vec()
        };
        let nomination = nominating_request("aaaa:client", "password a");
        let (ours, theirs) =
            (binding_request("client:aaaa", "theirs"), nominating_request("aaaa:client", "password a"));
        for datagram in [&nomination, &success_response(&ours), &theirs, &success_response(&ours)] {
            client.send_to(datagram, shared).await.unwrap();
        }
        assert_eq!(receive().await, nomination);
        assert_eq!(receive().await, success_response(&ours));
        assert_eq!(receive().await, nomination, "again, once the pair is valid");
        assert_eq!(receive().await, theirs);
        assert_eq!(receive().await, success_response(&ours), "only the first nomination is handed over twice");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut [0u8; 1500])).await.is_err(),
            "nothing more"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn routes_by_ufrag_then_by_address_and_forgets_a_peer_that_left() {
        let shutdown = CancellationToken::new();
        let port = SharedPort::bind("127.0.0.1:0".parse().unwrap(), None, shutdown.clone()).unwrap();
        let shared = port.udp.local;
        let (runtime_a, lease_a) = port.peer();
        let (runtime_b, lease_b) = port.peer();
        let ephemeral = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket_a = runtime_a.wrap_udp_socket(ephemeral()).unwrap();
        let socket_b = runtime_b.wrap_udp_socket(ephemeral()).unwrap();
        lease_a.register("aaaa", "password a").unwrap();
        lease_b.register("bbbb", "password b").unwrap();
        assert!(lease_b.register("aaaa", "password b").is_err(), "a ufrag routes to one peer");

        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let receive = |socket: Arc<dyn AsyncUdpSocket>| async move {
            let mut buf = [0u8; 1500];
            let (len, from) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
                .await
                .expect("delivered")
                .unwrap();
            (buf[..len].to_vec(), from)
        };
        // Unsigned (or signed with another password), a request claims nothing.
        client.send_to(&binding_request("bbbb:client", "a guess"), shared).await.unwrap();
        let request = binding_request("bbbb:client", "password b");
        client.send_to(&request, shared).await.unwrap();
        assert_eq!(receive(socket_b.clone()).await, (request, client.local_addr().unwrap()));
        client.send_to(b"\x16dtls", shared).await.unwrap();
        assert_eq!(receive(socket_b.clone()).await.0, b"\x16dtls", "then by the address the request came from");

        socket_a.send_to(&binding_request("client:aaaa", "theirs"), client.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 1500];
        let (_, from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(from, shared, "peers send from the shared port");

        drop(lease_b);
        client.send_to(b"\x16dtls", shared).await.unwrap();
        let request = binding_request("aaaa:client", "password a");
        client.send_to(&request, shared).await.unwrap();
        assert_eq!(receive(socket_a).await.0, request, "b's address went with b");
        assert_eq!(port.counters.unroutable.load(Ordering::Relaxed), 2, "the guess and the orphan");
        assert_eq!(port.peers(), 1);
        shutdown.cancel();
    }
}
