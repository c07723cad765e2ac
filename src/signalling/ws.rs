//! WebSocket transport: feeds text frames to a [`Session`] and runs what it says, generic over
//! any `Sink`/`Stream` of messages so tests need no socket.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use webrtc::peer_connection::RTCIceCandidateInit;

use super::limits::{ClientIp, PendingPlace};
use super::protocol::ServerMessage;
use super::sdp::VideoSection;
use super::session::{Action, Session, SessionError, MAX_MESSAGE_BYTES};
use super::{Signalling, SignallingError};
use crate::auth::{Access, Denied};
use crate::webrtc::{Feed, PeerEvent, Viewer};

/// A socket that has not sent its offer by then is closed.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames up to this size are read, so an oversized message gets a clear error and close code
/// 1009; the protocol layer drops anything larger.
const MAX_FRAME_BYTES: usize = 16 * MAX_MESSAGE_BYTES;

/// `GET /ws/{stream}`: check the caller, upgrade, then signal.
pub async fn upgrade(
    State(signalling): State<Arc<Signalling>>,
    Path(stream): Path<String>,
    Extension(access): Extension<Access>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, SignallingError> {
    signalling.limits.request(ip)?;
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = text(header::ORIGIN);
    if !signalling.origin_allowed(origin, text(header::HOST)) {
        return Err(SignallingError::Origin(origin.unwrap_or_default().to_owned()));
    }
    // Browsers cannot set headers on a WebSocket: without a token in the URL, the first
    // message must carry one.
    let needs_auth = match access.viewer_of(&stream) {
        Ok(_) => false,
        Err(Denied::NoCredential) => true,
        Err(denied) => return Err(denied.into()),
    };
    let upgrade = upgrade.max_message_size(MAX_FRAME_BYTES).max_frame_size(MAX_FRAME_BYTES);
    Ok(upgrade
        .on_upgrade(move |socket: WebSocket| async move {
            let (sink, stream_in) = socket.split();
            run(signalling, stream, ip, needs_auth, sink, stream_in).await;
        })
        .into_response())
}

/// Why a session ends early: what to tell the client, and the close code.
struct Failure {
    message: String,
    code: u16,
}

impl From<SessionError> for Failure {
    fn from(err: SessionError) -> Failure {
        Failure { code: err.close_code(), message: err.to_string() }
    }
}

impl From<SignallingError> for Failure {
    fn from(err: SignallingError) -> Failure {
        Failure { code: POLICY_VIOLATION, message: err.to_string() }
    }
}

const POLICY_VIOLATION: u16 = 1008;

/// One socket's session: the pure protocol state plus the peer it created.
struct Connection {
    signalling: Arc<Signalling>,
    stream: String,
    ip: std::net::IpAddr,
    feed: Arc<dyn Feed>,
    session: Session,
    events: mpsc::UnboundedSender<PeerEvent>,
    viewer: Option<Arc<Viewer>>,
    /// Held from the offer until the peer connects.
    pending: Option<PendingPlace>,
    video: VideoSection,
}

impl Connection {
    /// Handles one client message.
    async fn on_message(&mut self, message: Message) -> Result<Option<ServerMessage>, Failure> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(data) => return Err(self.session.on_binary(data.len()).into()),
            _ => return Ok(None),
        };
        match self.session.on_text(&text)? {
            Action::Nothing => Ok(None),
            Action::Authenticate { token } => {
                let access = self.signalling.auth.check(Some(&token)).await;
                access.viewer_of(&self.stream).map_err(SignallingError::from)?;
                self.session.authenticated();
                Ok(None)
            }
            Action::Answer { sdp, video } => {
                self.video = video;
                self.pending = Some(self.signalling.limits.pending(self.ip).map_err(SignallingError::from)?);
                let answering = self.signalling.webrtc.answer(
                    &self.stream,
                    self.feed.clone(),
                    sdp,
                    self.events.clone(),
                    super::WEBSOCKET,
                );
                let (viewer, answer) = answering.await.map_err(SignallingError::from)?;
                self.viewer = Some(viewer);
                Ok(Some(ServerMessage::Answer { sdp: answer }))
            }
            Action::AddCandidate { candidate, sdp_mid, sdp_mline_index, username_fragment } => {
                let init = RTCIceCandidateInit {
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                    username_fragment,
                    ..Default::default()
                };
                if let Some(viewer) = &self.viewer {
                    viewer.add_remote_candidate(init).await.map_err(SignallingError::from)?;
                }
                Ok(None)
            }
        }
    }

    fn candidate(&self, candidate: String) -> ServerMessage {
        ServerMessage::Candidate { candidate, sdp_mid: self.video.mid.clone(), sdp_mline_index: self.video.mline_index }
    }
}

/// Runs one session until either side ends it.
pub async fn run<W, R, E>(
    signalling: Arc<Signalling>,
    stream: String,
    ip: std::net::IpAddr,
    needs_auth: bool,
    mut sink: W,
    mut incoming: R,
) where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let feed = match signalling.feed(&stream) {
        Ok(feed) => feed,
        Err(err) => {
            close_with(&mut sink, err.into()).await;
            return;
        }
    };
    let (events, mut peer_events) = mpsc::unbounded_channel();
    let mut connection = Connection {
        signalling,
        stream,
        ip,
        feed,
        session: Session::new(needs_auth),
        events,
        viewer: None,
        pending: None,
        video: VideoSection { mid: "0".into(), mline_index: 0 },
    };
    let offer_deadline = tokio::time::sleep(OFFER_TIMEOUT);
    tokio::pin!(offer_deadline);
    let failure = loop {
        let reply = tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => connection.on_message(message).await,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                Some(Ok(_)) => continue,
            },
            Some(event) = peer_events.recv() => match event {
                PeerEvent::Candidate(candidate) => Ok(Some(connection.candidate(candidate))),
                PeerEvent::Closed => break None,
            },
            _ = &mut offer_deadline, if !connection.session.offered() => Err(Failure {
                message: format!("no offer within {} s; send {{\"type\":\"offer\",…}} after connecting", OFFER_TIMEOUT.as_secs()),
                code: POLICY_VIOLATION,
            }),
        };
        match reply {
            Ok(Some(message)) => {
                let answered = matches!(message, ServerMessage::Answer { .. });
                if !send(&mut sink, message).await {
                    break None;
                }
                if let (true, Some(viewer)) = (answered, &connection.viewer) {
                    viewer.answer_sent().await;
                    viewer.hold_until_settled(connection.pending.take());
                }
            }
            Ok(None) => {}
            Err(failure) => break Some(failure),
        }
    };
    if let Some(viewer) = connection.viewer {
        viewer.close();
    }
    match failure {
        Some(failure) => close_with(&mut sink, failure).await,
        None => {
            let _ = sink.send(Message::Close(None)).await;
        }
    }
}

/// Sends a message; false when the socket is gone.
async fn send<W: Sink<Message> + Unpin>(sink: &mut W, message: ServerMessage) -> bool {
    sink.send(Message::Text(message.to_json().into())).await.is_ok()
}

/// Says what went wrong, then closes with the matching code.
async fn close_with<W: Sink<Message> + Unpin>(sink: &mut W, failure: Failure) {
    tracing::debug!(message = %failure.message, code = failure.code, "signalling error");
    let _ = send(sink, ServerMessage::Error { message: failure.message.clone() }).await;
    let reason: String = failure.message.chars().take(100).collect();
    let _ = sink.send(Message::Close(Some(CloseFrame { code: failure.code, reason: reason.into() }))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MediaPorts, WebRtcSettings};
    use crate::webrtc::WebRtc;
    use futures_util::stream;
    use tokio_util::sync::CancellationToken;

    struct NoFeeds;
    impl super::super::Feeds for NoFeeds {
        fn feed(&self, _: &str) -> Option<Arc<dyn Feed>> {
            None
        }
    }

    struct SilentFeed;
    impl Feed for SilentFeed {
        fn subscribe(&self) -> tokio::sync::broadcast::Receiver<rtc::rtp::Packet> {
            tokio::sync::broadcast::channel(1).1
        }
        fn subscribe_audio(&self) -> tokio::sync::broadcast::Receiver<rtc::rtp::Packet> {
            tokio::sync::broadcast::channel(1).1
        }
        fn carries(&self) -> crate::webrtc::Carried {
            crate::webrtc::Carried::default()
        }
        fn request_keyframe(&self) {}
        fn request_keyframe_for_joiner(&self) {}
    }
    struct OneFeed;
    impl super::super::Feeds for OneFeed {
        fn feed(&self, stream: &str) -> Option<Arc<dyn Feed>> {
            (stream == "live").then(|| Arc::new(SilentFeed) as Arc<dyn Feed>)
        }
    }

    fn signalling(feeds: Arc<dyn super::super::Feeds>) -> Arc<Signalling> {
        let settings = WebRtcSettings {
            ports: MediaPorts::Shared { udp: 0, tcp: Some(0) },
            bind: "127.0.0.1".parse().unwrap(),
            public_ip: None,
            ice_servers: vec![],
            max_viewers: 1,
        };
        let webrtc = Arc::new(WebRtc::new(settings, CancellationToken::new()).unwrap());
        let limits =
            crate::config::ClientLimits { max_pending_per_ip: 1, signalling_rate: 10, trusted_proxies: vec![] };
        Arc::new(Signalling {
            webrtc,
            feeds,
            ice_servers: vec![],
            auth: Arc::new(crate::auth::Auth::open()),
            limits: super::super::limits::Limits::new(&limits),
            allowed_origins: vec![crate::config::CorsOrigin::Exactly("https://dash.example".into())],
        })
    }

    async fn exchange(feeds: Arc<dyn super::super::Feeds>, stream_name: &str, client: Vec<&str>) -> Vec<Message> {
        exchange_as(feeds, stream_name, false, client).await
    }

    /// Runs a session over in-memory sink and stream; returns everything the server sent.
    async fn exchange_as(
        feeds: Arc<dyn super::super::Feeds>,
        stream_name: &str,
        needs_auth: bool,
        client: Vec<&str>,
    ) -> Vec<Message> {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = sent.clone();
        let sink = Box::pin(futures_util::sink::unfold((), move |(), message: Message| {
            record.lock().unwrap().push(message);
            async { Ok::<_, std::convert::Infallible>(()) }
        }));
        let incoming = stream::iter(client.into_iter().map(|t| Ok::<_, ()>(Message::Text(t.to_owned().into()))));
        let ip = "10.0.0.1".parse().unwrap();
        run(signalling(feeds), stream_name.into(), ip, needs_auth, sink, incoming).await;
        let sent = sent.lock().unwrap().clone();
        sent
    }

    fn error_text(message: &Message) -> String {
        let Message::Text(text) = message else { panic!("expected text, got {message:?}") };
        let parsed: ServerMessage = serde_json::from_str(text).unwrap();
        let ServerMessage::Error { message } = parsed else { panic!("expected an error, got {parsed:?}") };
        message
    }

    #[tokio::test]
    async fn unknown_stream_is_an_error_then_close() {
        let sent = exchange(Arc::new(NoFeeds), "nope", vec![]).await;
        assert!(error_text(&sent[0]).contains("no stream named \"nope\""));
        assert_eq!(close_code(&sent[1]), Some(1008));
        assert_eq!(sent.len(), 2, "nothing else is sent");
    }

    #[tokio::test]
    async fn a_protocol_error_ends_the_session_before_later_messages() {
        let sent =
            exchange(Arc::new(OneFeed), "live", vec!["{\"type\":\"candidate\",\"candidate\":\"x\"}", "hello"]).await;
        assert!(error_text(&sent[0]).contains("send the offer first"));
        assert_eq!(close_code(&sent[1]), Some(1008));
        assert_eq!(sent.len(), 2, "the second message was never read");
    }

    fn close_code(message: &Message) -> Option<u16> {
        match message {
            Message::Close(frame) => frame.as_ref().map(|f| f.code),
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_closed_gateway_wants_auth_first_and_big_messages_close_with_1009() {
        let offer = serde_json::json!({"type": "offer", "sdp": "v=0"}).to_string();
        let sent = exchange_as(Arc::new(OneFeed), "live", true, vec![&offer]).await;
        assert!(error_text(&sent[0]).contains("\"type\":\"auth\""), "{sent:?}");
        let huge = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "a".repeat(MAX_MESSAGE_BYTES));
        let sent = exchange(Arc::new(OneFeed), "live", vec![&huge]).await;
        assert_eq!(close_code(&sent[1]), Some(1009));
    }

    #[tokio::test]
    async fn websocket_origins() {
        let signalling = signalling(Arc::new(NoFeeds));
        assert!(signalling.origin_allowed(None, Some("gw:8443")), "non-browser clients send no Origin");
        assert!(signalling.origin_allowed(Some("https://gw:8443"), Some("gw:8443")), "the page's own origin");
        assert!(signalling.origin_allowed(Some("https://dash.example"), Some("gw:8443")));
        assert!(!signalling.origin_allowed(Some("https://evil.example"), Some("gw:8443")));
    }
}
