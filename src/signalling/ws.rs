//! WebSocket transport: feeds text frames to a [`Session`] and runs what it says, generic over
//! any `Sink`/`Stream` of messages so tests need no socket.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use webrtc::peer_connection::RTCIceCandidateInit;

use super::protocol::ServerMessage;
use super::sdp::VideoSection;
use super::session::{Action, Session, MAX_MESSAGE_BYTES};
use super::{Signalling, SignallingError};
use crate::webrtc::{Feed, PeerEvent, Viewer};

/// `GET /ws/{stream}`: upgrade, then signal.
pub async fn upgrade(
    State(signalling): State<Arc<Signalling>>,
    Path(stream): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Over-limit frames must reach the session so it can say why before closing.
    upgrade.max_message_size(MAX_MESSAGE_BYTES * 4).on_upgrade(move |socket: WebSocket| async move {
        let (sink, stream_in) = socket.split();
        run(signalling, stream, sink, stream_in).await;
    })
}

/// One socket's session: the pure protocol state plus the peer it created.
struct Connection {
    signalling: Arc<Signalling>,
    stream: String,
    feed: Arc<dyn Feed>,
    session: Session,
    events: mpsc::UnboundedSender<PeerEvent>,
    viewer: Option<Arc<Viewer>>,
    video: VideoSection,
}

impl Connection {
    /// Handles one client message; `Err` is the error to report before closing.
    async fn on_message(&mut self, message: Message) -> Result<Option<ServerMessage>, String> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(data) => return Err(self.session.on_binary(data.len()).to_string()),
            _ => return Ok(None),
        };
        match self.session.on_text(&text).map_err(|err| err.to_string())? {
            Action::Nothing => Ok(None),
            Action::Answer { sdp, video } => {
                self.video = video;
                let answering =
                    self.signalling.webrtc.answer(&self.stream, self.feed.clone(), sdp, self.events.clone());
                let (viewer, answer) = answering.await.map_err(|err| SignallingError::from(err).to_string())?;
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
                    viewer.add_remote_candidate(init).await.map_err(|err| err.to_string())?;
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
pub async fn run<W, R, E>(signalling: Arc<Signalling>, stream: String, mut sink: W, mut incoming: R)
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let feed = match signalling.feed(&stream) {
        Ok(feed) => feed,
        Err(err) => {
            send_error(&mut sink, &err.to_string()).await;
            return;
        }
    };
    let (events, mut peer_events) = mpsc::unbounded_channel();
    let mut connection = Connection {
        signalling,
        stream,
        feed,
        session: Session::default(),
        events,
        viewer: None,
        video: VideoSection { mid: "0".into(), mline_index: 0 },
    };
    loop {
        let reply = tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => connection.on_message(message).await,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => continue,
            },
            Some(event) = peer_events.recv() => match event {
                PeerEvent::Candidate(candidate) => Ok(Some(connection.candidate(candidate))),
                PeerEvent::Closed => break,
            },
        };
        let sent = match reply {
            Ok(Some(message)) => send(&mut sink, message).await,
            Ok(None) => true,
            Err(error) => {
                send_error(&mut sink, &error).await;
                false
            }
        };
        if !sent {
            break;
        }
    }
    if let Some(viewer) = connection.viewer {
        viewer.close();
    }
    let _ = sink.send(Message::Close(None)).await;
}

/// Sends a message; false when the socket is gone.
async fn send<W: Sink<Message> + Unpin>(sink: &mut W, message: ServerMessage) -> bool {
    sink.send(Message::Text(message.to_json().into())).await.is_ok()
}

async fn send_error<W: Sink<Message> + Unpin>(sink: &mut W, message: &str) {
    tracing::debug!(message, "signalling error");
    let _ = send(sink, ServerMessage::Error { message: message.into() }).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PortRange, WebRtcSettings};
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
        fn subscribe(&self) -> tokio::sync::broadcast::Receiver<bytes::Bytes> {
            tokio::sync::broadcast::channel(1).1
        }
        fn request_keyframe(&self) {}
    }
    struct OneFeed;
    impl super::super::Feeds for OneFeed {
        fn feed(&self, stream: &str) -> Option<Arc<dyn Feed>> {
            (stream == "live").then(|| Arc::new(SilentFeed) as Arc<dyn Feed>)
        }
    }

    fn signalling(feeds: Arc<dyn super::super::Feeds>) -> Arc<Signalling> {
        let settings = WebRtcSettings {
            ports: PortRange { low: 61000, high: 61001 },
            bind: "127.0.0.1".parse().unwrap(),
            public_ip: None,
            ice_servers: vec![],
            max_viewers: 1,
        };
        let webrtc = Arc::new(WebRtc::new(settings, CancellationToken::new()).unwrap());
        Arc::new(Signalling { webrtc, feeds, ice_servers: vec![] })
    }

    /// Runs a session over in-memory sink and stream; returns everything the server sent.
    async fn exchange(feeds: Arc<dyn super::super::Feeds>, stream_name: &str, client: Vec<&str>) -> Vec<Message> {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = sent.clone();
        let sink = Box::pin(futures_util::sink::unfold((), move |(), message: Message| {
            record.lock().unwrap().push(message);
            async { Ok::<_, std::convert::Infallible>(()) }
        }));
        let incoming = stream::iter(client.into_iter().map(|t| Ok::<_, ()>(Message::Text(t.to_owned().into()))));
        run(signalling(feeds), stream_name.into(), sink, incoming).await;
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
        assert_eq!(sent.len(), 1, "nothing else is sent");
    }

    #[tokio::test]
    async fn a_protocol_error_ends_the_session_before_later_messages() {
        let sent =
            exchange(Arc::new(OneFeed), "live", vec!["{\"type\":\"candidate\",\"candidate\":\"x\"}", "hello"]).await;
        assert!(error_text(&sent[0]).contains("send the offer first"));
        assert!(matches!(sent[1], Message::Close(_)), "{sent:?}");
        assert_eq!(sent.len(), 2, "the second message was never read");
    }
}
