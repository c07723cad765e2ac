//! ICE over TCP on the shared port (RFC 6544 passive candidates, RFC 4571 framing): the shared
//! listener accepts, reads the first framed message (the browser's STUN binding request), and
//! hands the connection, that message still unread, to the peer its USERNAME names.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use webrtc::runtime::{AsyncTcpListener, AsyncTcpStream};

use super::{inbox_for, SharedPort};

/// Connections waiting for one peer's driver to accept them.
pub(super) const INBOX: usize = 8;
/// How long a new connection has to send its binding request.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections at once that have not yet named their peer.
const MAX_UNNAMED: usize = 256;
/// The largest first message taken (a binding request is about 100 bytes).
const MAX_FIRST_MESSAGE: usize = 1024;

/// A connection on its way to a peer: its first message, already read, and where it came from.
pub(super) struct Accepted {
    stream: tokio::net::TcpStream,
    first: Vec<u8>,
    remote: SocketAddr,
    /// One of the peer's `MAX_CONNECTIONS`, until webrtc-rs drops the connection.
    permit: OwnedSemaphorePermit,
}

pub(super) struct Listener {
    io: tokio::net::TcpListener,
    pub(super) local: SocketAddr,
}

impl Listener {
    pub(super) fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let io = tokio::net::TcpListener::from_std(listener)?;
        let local = io.local_addr()?;
        Ok(Listener { io, local })
    }
}

/// Accepts for every peer until `shutdown`.
pub(super) async fn accept(port: Arc<SharedPort>, shutdown: CancellationToken) {
    let Some(listener) = &port.tcp else { return };
    let unnamed = Arc::new(Semaphore::new(MAX_UNNAMED));
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.io.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %err, "ICE-TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = unnamed.clone().try_acquire_owned() else {
            port.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let port = port.clone();
        tokio::spawn(async move {
            let handed = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, hand_over(&port, stream, remote)).await;
            if let Err(reason) = handed.unwrap_or_else(|_| Err("no binding request in time".into())) {
                tracing::debug!(%remote, reason, "ICE-TCP connection refused");
                port.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
}

/// Reads the first framed message and gives the connection to the peer it names.
async fn hand_over(port: &SharedPort, mut stream: tokio::net::TcpStream, remote: SocketAddr) -> Result<(), String> {
    let length = stream.read_u16().await.map_err(|e| e.to_string())?;
    if usize::from(length) > MAX_FIRST_MESSAGE {
        return Err(format!("a first message of {length} bytes"));
    }
    let mut first = vec![0u8; 2 + usize::from(length)];
    first[..2].copy_from_slice(&length.to_be_bytes());
    stream.read_exact(&mut first[2..]).await.map_err(|e| e.to_string())?;
    let local_ip = stream.local_addr().ok().map(|a| a.ip().to_canonical());
    let routes = port.routes.lock().expect("routes lock");
    let (_, peer) = routes.signed_request_peer(&first[2..]).ok_or("no binding request signed for a peer")?;
    let permit = peer.connection_permits.clone().try_acquire_owned().map_err(|_| "the peer has its connections")?;
    let inbox = inbox_for(&peer.connections, local_ip).ok_or("the peer has no ICE-TCP listener")?;
    let accepted =
        Accepted { stream, first, remote: SocketAddr::new(remote.ip().to_canonical(), remote.port()), permit };
    inbox.try_send(accepted).map_err(|_| "the peer has connections waiting".to_owned())
}

/// One peer's view of the shared listener.
#[derive(Debug)]
pub(super) struct PeerListener {
    local: SocketAddr,
    received: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
}

impl PeerListener {
    pub(super) fn new(local: SocketAddr, received: mpsc::Receiver<Accepted>) -> PeerListener {
        PeerListener { local, received: tokio::sync::Mutex::new(received) }
    }
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted").field("remote", &self.remote).finish()
    }
}

impl AsyncTcpListener for PeerListener {
    fn accept<'a>(
        &'a self,
    ) -> Pin<Box<dyn Future<Output = io::Result<(Arc<dyn AsyncTcpStream>, SocketAddr)>> + Send + 'a>> {
        Box::pin(async move {
            let Some(accepted) = self.received.lock().await.recv().await else {
                // The peer is leaving; an error would only make its driver ask again at once.
                return std::future::pending().await;
            };
            let (read, write) = accepted.stream.into_split();
            let stream = PeerStream {
                unread: Mutex::new(accepted.first),
                read,
                write,
                // Named after the peer's own listener, so webrtc-rs pairs it with that candidate.
                local: self.local,
                remote: accepted.remote,
                _permit: accepted.permit,
            };
            Ok((Arc::new(stream) as Arc<dyn AsyncTcpStream>, accepted.remote))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// An accepted connection whose first message is read again from `unread`.
#[derive(Debug)]
struct PeerStream {
    unread: Mutex<Vec<u8>>,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    local: SocketAddr,
    remote: SocketAddr,
    _permit: OwnedSemaphorePermit,
}

impl AsyncTcpStream for PeerStream {
    fn read<'a, 'b>(&'a self, buf: &'b mut [u8]) -> Pin<Box<dyn Future<Output = io::Result<usize>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            {
                let mut unread = self.unread.lock().expect("unread lock");
                if !unread.is_empty() {
                    let n = unread.len().min(buf.len());
                    buf[..n].copy_from_slice(&unread[..n]);
                    unread.drain(..n);
                    return Ok(n);
                }
            }
            loop {
                self.read.readable().await?;
                match self.read.try_read(buf) {
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return result,
                }
            }
        })
    }

    fn write_all<'a, 'b>(&'a self, buf: &'b [u8]) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            let mut rest = buf;
            while !rest.is_empty() {
                self.write.writable().await?;
                match self.write.try_write(rest) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => rest = &rest[n..],
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(err) => return Err(err),
                }
            }
            Ok(())
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.remote)
    }
}

#[cfg(test)]
mod tests {
    use super::super::stun::tests::binding_request;
    use super::super::MAX_CONNECTIONS;
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_connection_goes_to_the_peer_its_binding_request_names() {
        let shutdown = CancellationToken::new();
        let any = "127.0.0.1:0".parse().unwrap();
        let port = SharedPort::bind(any, Some(any), shutdown.clone()).unwrap();
        let shared = port.tcp.as_ref().unwrap().local;
        let (runtime, lease) = port.peer();
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let name = own.local_addr().unwrap();
        let listener = runtime.wrap_tcp_listener(own).unwrap();
        lease.register("tcpu", "tcp password").unwrap();

        // A stranger's connection is closed; the peer's is handed over with its request unread.
        let mut stranger = tokio::net::TcpStream::connect(shared).await.unwrap();
        let request = binding_request("tcpu:x", "a guess");
        stranger.write_all(&[&(request.len() as u16).to_be_bytes()[..], &request].concat()).await.unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(stranger.read(&mut byte).await.unwrap(), 0, "closed");

        let mut client = tokio::net::TcpStream::connect(shared).await.unwrap();
        let request = binding_request("tcpu:x", "tcp password");
        let framed = [&(request.len() as u16).to_be_bytes()[..], &request].concat();
        client.write_all(&framed).await.unwrap();
        let (stream, remote) = tokio::time::timeout(Duration::from_secs(2), listener.accept()).await.unwrap().unwrap();
        assert_eq!(remote, client.local_addr().unwrap());
        assert_eq!(stream.local_addr().unwrap(), name, "named after the peer's own listener");
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &framed[..], "the first message is read again");
        stream.write_all(b"\x00\x02hi").await.unwrap();
        let mut answer = [0u8; 4];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"\x00\x02hi");

        // A peer holds at most MAX_CONNECTIONS: the one above, three more, and no fifth.
        let mut more = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut extra = tokio::net::TcpStream::connect(shared).await.unwrap();
            extra.write_all(&framed).await.unwrap();
            more.push(extra);
        }
        let mut fifth = more.pop().unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut byte)).await.unwrap().unwrap();
        assert_eq!(closed, 0, "over the peer's limit");
        assert_eq!(port.counters.tcp_refused.load(Ordering::Relaxed), 2);
        shutdown.cancel();
    }
}
