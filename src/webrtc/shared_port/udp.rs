//! The shared UDP socket: one task receives for every peer (`recvmmsg`); each peer's driver
//! sends straight to it (UDP GSO for runs of equal-size datagrams, where the kernel has it, with
//! the source address of the peer's candidate). A full send buffer drops the datagram, as a
//! congested link would: a shared socket has one waker, and a viewer must not wait on the others.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};

use super::{inbox_for, stun_request_local_ufrag, PeerId, SharedPort};

/// Datagrams waiting for one peer's driver. Viewers send us little (STUN, DTLS, RTCP).
pub(super) const INBOX: usize = 128;
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

    fn send(&self, transmit: &Transmit<'_>, counters: &super::MuxCounters) -> io::Result<usize> {
        match self.state.try_send(UdpSockRef::from(&self.io), transmit) {
            Ok(()) => Ok(transmit.contents.len()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                counters.send_buffer_full.fetch_add(1, Ordering::Relaxed);
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
    let mut routes = port.routes.lock().expect("routes lock");
    let peer = match stun_request_local_ufrag(datagram) {
        Some(ufrag) => {
            let peer = routes.by_ufrag.get(ufrag).copied();
            if let Some(peer) = peer {
                routes.claim(from, peer);
            }
            peer
        }
        None => routes.by_remote.get(&from).copied(),
    };
    let inbox = peer.and_then(|peer| inbox_for(&routes.peers.get(&peer)?.datagrams, to));
    let Some(inbox) = inbox else {
        port.counters.unroutable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if inbox.try_send(Datagram { data: Bytes::copy_from_slice(datagram), from }).is_err() {
        port.counters.inbox_full.fetch_add(1, Ordering::Relaxed);
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
}

impl PeerSocket {
    pub(super) fn new(
        port: Arc<SharedPort>,
        peer: PeerId,
        local: SocketAddr,
        received: mpsc::Receiver<Datagram>,
    ) -> PeerSocket {
        let source = port.udp.local.ip().is_unspecified().then_some(local.ip());
        PeerSocket { port, peer, local, source, received: Mutex::new(received) }
    }
}

impl AsyncUdpSocket for PeerSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn poll_send(&self, _cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        // STUN (the two top bits clear) is how a peer starts talking to an address.
        if transmit.contents.first().is_some_and(|b| b & 0xc0 == 0) {
            self.port.checking(self.peer, transmit.destination);
        }
        let transmit = Transmit {
            destination: transmit.destination,
            ecn: transmit.ecn,
            contents: transmit.contents,
            segment_size: transmit.segment_size,
            src_ip: self.source,
        };
        Poll::Ready(self.port.udp.send(&transmit, &self.port.counters))
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
    use super::super::tests::binding_request;
    use super::*;
    use std::time::Duration;

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
        lease_a.register_ufrag("aaaa").unwrap();
        lease_b.register_ufrag("bbbb").unwrap();
        assert!(lease_b.register_ufrag("aaaa").is_err(), "a ufrag routes to one peer");

        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let receive = |socket: Arc<dyn AsyncUdpSocket>| async move {
            let mut buf = [0u8; 1500];
            let (len, from) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
                .await
                .expect("delivered")
                .unwrap();
            (buf[..len].to_vec(), from)
        };
        client.send_to(&binding_request("bbbb:client"), shared).await.unwrap();
        assert_eq!(receive(socket_b.clone()).await, (binding_request("bbbb:client"), client.local_addr().unwrap()));
        client.send_to(b"\x16dtls", shared).await.unwrap();
        assert_eq!(receive(socket_b.clone()).await.0, b"\x16dtls", "then by the address the request came from");

        socket_a.send_to(&binding_request("client:aaaa"), client.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 1500];
        let (_, from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(from, shared, "peers send from the shared port");

        drop(lease_b);
        client.send_to(b"\x16dtls", shared).await.unwrap();
        client.send_to(&binding_request("aaaa:client"), shared).await.unwrap();
        assert_eq!(receive(socket_a).await.0, binding_request("aaaa:client"), "b's address went with b");
        assert_eq!(port.counters.unroutable.load(Ordering::Relaxed), 1);
        assert_eq!(port.peers(), 1);
        shutdown.cancel();
    }
}
