//! One port for the media of every viewer: UDP (`--webrtc-port`) and ICE over TCP
//! (`--webrtc-tcp-port`, RFC 6544 passive candidates).
//!
//! webrtc-rs binds a socket (and a TCP listener) per peer connection and has no mux of its own,
//! but it asks its [`Runtime`] to wrap each one it binds. Every peer therefore gets a
//! [`PeerRuntime`]: it does what `TokioRuntime` does, except that `wrap_udp_socket` and
//! `wrap_tcp_listener` close what webrtc-rs just bound (an ephemeral port, used from then on only
//! as a name) and return the peer's view of the shared socket or listener. The gateway advertises
//! the shared ports in its candidates instead (`Advertised`).
//!
//! Who gets what arrives:
//! - a STUN binding request names its peer in USERNAME (`<our ufrag>:<theirs>`), registered from
//!   the peer's answer, and is signed with that peer's ICE password (MESSAGE-INTEGRITY, checked
//!   here); on UDP, the address it came from is then that peer's, and on TCP the connection it
//!   opened is;
//! - any other datagram (a STUN response, DTLS, SRTCP) goes by the address it came from, learnt
//!   from those requests or from the peer's own checks to an address no other peer has.
//!
//! On UDP, the browser's first nominating check is handed to its peer twice (`udp::Nomination`),
//! so that webrtc-rs answers it without waiting for the browser to ask again.
//!
//! A peer holds at most `MAX_REMOTES` addresses (the oldest goes) and `MAX_CONNECTIONS` TCP
//! connections, so no viewer can grow the routing table or take the process's descriptors.

mod stun;
mod tcp;
mod udp;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime, TokioRuntime,
};

/// A peer's key in the routing table.
type PeerId = u64;
/// Remote addresses one peer may hold (a browser checks from a few candidates).
const MAX_REMOTES: usize = 8;
/// ICE-TCP connections one peer may hold (a browser opens one per candidate pair).
const MAX_CONNECTIONS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SharedPortError {
    #[error("ICE ufrag {ufrag:?} is already in use on the shared port")]
    UfragInUse { ufrag: String },
}

/// What arrived on the shared port that no peer could take.
#[derive(Debug, Default)]
pub struct SharedPortCounters {
    /// Datagrams from an address no peer knows, or binding requests for a ufrag no peer has or
    /// not signed with its password.
    pub unroutable: AtomicU64,
    /// Datagrams dropped because the peer's inbox was full.
    pub inbox_full: AtomicU64,
    /// Datagrams not sent because the socket's send buffer was full.
    pub send_buffer_full: AtomicU64,
    /// TCP connections closed before reaching a peer: no signed binding request in time, or the
    /// peer already holds its `MAX_CONNECTIONS`.
    pub tcp_refused: AtomicU64,
}

struct PeerRoutes {
    /// The ICE ufrag and password of the peer's answer.
    credentials: Option<(String, String)>,
    /// Oldest first.
    remotes: VecDeque<SocketAddr>,
    /// One per local address the peer gathered on. webrtc-rs rebinds (adding more) only for an ICE
    /// restart that discards its candidates, which livegate never asks for.
    datagrams: Vec<(IpAddr, mpsc::Sender<udp::Datagram>)>,
    connections: Vec<(IpAddr, mpsc::Sender<tcp::Accepted>)>,
    connection_permits: Arc<Semaphore>,
    nomination: udp::Nomination,
}

impl Default for PeerRoutes {
    fn default() -> PeerRoutes {
        PeerRoutes {
            credentials: None,
            remotes: VecDeque::new(),
            datagrams: Vec::new(),
            connections: Vec::new(),
            connection_permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            nomination: udp::Nomination::Awaited,
        }
    }
}

#[derive(Default)]
struct Routes {
    next_peer: PeerId,
    peers: HashMap<PeerId, PeerRoutes>,
    by_ufrag: HashMap<String, PeerId>,
    by_remote: HashMap<SocketAddr, PeerId>,
}

/// The sender of the peer's inbox for `local`, or its first one.
fn inbox_for<T>(inboxes: &[(IpAddr, mpsc::Sender<T>)], local: Option<IpAddr>) -> Option<&mpsc::Sender<T>> {
    inboxes.iter().find(|(ip, _)| Some(*ip) == local).or(inboxes.first()).map(|(_, inbox)| inbox)
}

impl Routes {
    fn claim(&mut self, remote: SocketAddr, peer: PeerId) {
        let Some(routes) = self.peers.get_mut(&peer) else { return };
        if routes.remotes.contains(&remote) {
            return;
        }
        routes.remotes.push_back(remote);
        let oldest = (routes.remotes.len() > MAX_REMOTES).then(|| routes.remotes.pop_front()).flatten();
        if let Some(oldest) = oldest.filter(|oldest| self.by_remote.get(oldest) == Some(&peer)) {
            self.by_remote.remove(&oldest);
        }
        if let Some(previous) = self.by_remote.insert(remote, peer).filter(|p| *p != peer) {
            if let Some(routes) = self.peers.get_mut(&previous) {
                routes.remotes.retain(|r| *r != remote);
            }
        }
    }

    /// The peer a binding request is for, if it is signed with that peer's password.
    fn signed_request_peer(&self, message: &[u8]) -> Option<(PeerId, &PeerRoutes)> {
        let request = stun::BindingRequest::parse(message)?;
        let peer = *self.by_ufrag.get(request.local_ufrag)?;
        let routes = self.peers.get(&peer)?;
        let (_, password) = routes.credentials.as_ref()?;
        request.signed_with(password).then_some((peer, routes))
    }
}

/// The shared socket and listener, and who is behind them.
pub struct SharedPort {
    udp: udp::Socket,
    tcp: Option<tcp::Listener>,
    routes: Mutex<Routes>,
    pub counters: SharedPortCounters,
}

impl std::fmt::Debug for SharedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPort").field("udp", &self.udp.local).field("tcp", &self.tcp_port()).finish()
    }
}

impl SharedPort {
    /// Binds UDP `udp` and, if given, TCP `tcp`, and serves every peer on them until `shutdown`.
    pub fn bind(udp: SocketAddr, tcp: Option<SocketAddr>, shutdown: CancellationToken) -> io::Result<Arc<SharedPort>> {
        let port = Arc::new(SharedPort {
            udp: udp::Socket::bind(udp)?,
            tcp: tcp.map(tcp::Listener::bind).transpose()?,
            routes: Default::default(),
            counters: Default::default(),
        });
        tokio::spawn(udp::receive(port.clone(), shutdown.clone()));
        if port.tcp.is_some() {
            tokio::spawn(tcp::accept(port.clone(), shutdown));
        }
        Ok(port)
    }

    pub fn udp_port(&self) -> u16 {
        self.udp.local.port()
    }

    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp.as_ref().map(|tcp| tcp.local.port())
    }

    /// A new peer: its runtime, and the lease that forgets its routes when dropped.
    pub fn peer(self: &Arc<Self>) -> (Arc<dyn Runtime>, PeerLease) {
        let mut routes = self.routes.lock().expect("routes lock");
        routes.next_peer += 1;
        let peer = routes.next_peer;
        routes.peers.insert(peer, PeerRoutes::default());
        let video_ssrc = Arc::new(AtomicU32::new(0));
        (
            Arc::new(PeerRuntime { port: self.clone(), peer, video_ssrc: video_ssrc.clone() }),
            PeerLease { port: self.clone(), peer, video_ssrc },
        )
    }

    fn register(&self, peer: PeerId, ufrag: &str, password: &str) -> Result<(), SharedPortError> {
        let mut routes = self.routes.lock().expect("routes lock");
        if routes.by_ufrag.contains_key(ufrag) {
            return Err(SharedPortError::UfragInUse { ufrag: ufrag.to_owned() });
        }
        routes.by_ufrag.insert(ufrag.to_owned(), peer);
        if let Some(routes) = routes.peers.get_mut(&peer) {
            routes.credentials = Some((ufrag.to_owned(), password.to_owned()));
        }
        Ok(())
    }

    /// The peer checks `remote`: its answers come back to that peer, unless another peer's
    /// checks (or requests) got there first.
    fn checking(&self, peer: PeerId, remote: SocketAddr) {
        let mut routes = self.routes.lock().expect("routes lock");
        if !routes.by_remote.contains_key(&remote) {
            routes.claim(remote, peer);
        }
    }

    fn forget(&self, peer: PeerId) {
        let mut routes = self.routes.lock().expect("routes lock");
        let Some(gone) = routes.peers.remove(&peer) else { return };
        if let Some((ufrag, _)) = gone.credentials {
            routes.by_ufrag.remove(&ufrag);
        }
        for remote in gone.remotes {
            if routes.by_remote.get(&remote) == Some(&peer) {
                routes.by_remote.remove(&remote);
            }
        }
    }

    #[cfg(test)]
    fn peers(&self) -> usize {
        self.routes.lock().expect("routes lock").peers.len()
    }
}

/// A peer's place on the shared port, until dropped.
pub struct PeerLease {
    port: Arc<SharedPort>,
    peer: PeerId,
    /// The SSRC whose frames leave in one send; 0 until it is known.
    video_ssrc: Arc<AtomicU32>,
}

impl PeerLease {
    pub fn udp_port(&self) -> u16 {
        self.port.udp_port()
    }

    /// Routes STUN requests for `ufrag` signed with `password` (the `a=ice-ufrag` and
    /// `a=ice-pwd` of the peer's answer) to this peer.
    pub fn register(&self, ufrag: &str, password: &str) -> Result<(), SharedPortError> {
        self.port.register(self.peer, ufrag, password)
    }

    /// The peer's video goes out with `ssrc`: its frames are gathered into one send. Other RTP
    /// (the sound) leaves packet by packet, as it comes.
    pub fn gather_frames_of(&self, ssrc: u32) {
        self.video_ssrc.store(ssrc, Ordering::Relaxed);
    }
}

impl Drop for PeerLease {
    fn drop(&mut self) {
        self.port.forget(self.peer);
    }
}

/// `TokioRuntime`, except that the sockets and listeners it wraps are views of the shared ones.
#[derive(Debug)]
struct PeerRuntime {
    port: Arc<SharedPort>,
    peer: PeerId,
    video_ssrc: Arc<AtomicU32>,
}

impl PeerRuntime {
    /// Adds an inbox for `local` to the peer's routes.
    fn add_inbox<T>(
        &self,
        local: SocketAddr,
        inboxes: impl FnOnce(&mut PeerRoutes) -> &mut Vec<(IpAddr, mpsc::Sender<T>)>,
        capacity: usize,
    ) -> io::Result<mpsc::Receiver<T>> {
        let (inbox, received) = mpsc::channel(capacity);
        let mut routes = self.port.routes.lock().expect("routes lock");
        let peer = routes.peers.get_mut(&self.peer).ok_or_else(|| io::Error::other("the peer already left"))?;
        inboxes(peer).push((local.ip(), inbox));
        Ok(received)
    }
}

impl Runtime for PeerRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn(future)
    }

    fn spawn_reactor(&self, pool_size: usize, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn_reactor(pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // The address stays the socket's name inside webrtc-rs; the port itself is let go.
        let local = socket.local_addr()?;
        drop(socket);
        let received = self.add_inbox(local, |peer| &mut peer.datagrams, udp::INBOX)?;
        Ok(Arc::new(udp::PeerSocket::new(self.port.clone(), self.peer, local, received, self.video_ssrc.clone())))
    }

    fn wrap_tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        let local = listener.local_addr()?;
        drop(listener);
        let received = self.add_inbox(local, |peer| &mut peer.connections, tcp::INBOX)?;
        Ok(Arc::new(tcp::PeerListener::new(local, received)))
    }

    fn connect_tcp<'a>(
        &'a self,
        remote: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TokioRuntime.connect_tcp(remote)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TokioRuntime.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TokioRuntime.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TokioRuntime.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.yield_now()
    }

    fn name(&self) -> &'static str {
        "livegate-shared-port"
    }
}
