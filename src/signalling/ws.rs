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
use super::session::{Action, Session, SessionError, MAX_MESSAGE_BYTES};
use super::{Signalling, SignallingError};
use crate::webrtc::{PeerEvent, Viewer};

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

enum Outcome {
    Continue,
    Stop,
}

/// Runs one session until either side ends it.
pub async fn run<W, R, E>(signalling: Arc<Signalling>, stream: String, mut sink: W, mut incoming: R)
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let mut session = Session::default();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut viewer: Option<Arc<Viewer>> = None;
    let mut video_mid = ("0".to_owned(), 0u16);

    let feed = match signalling.feed(&stream) {
        Ok(feed) => feed,
        Err(err) => {
            send_error(&mut sink, &err.to_string()).await;
            return;
        }
    };

    loop {
        let outcome = tokio::select! {
            message = incoming.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => Ok(text.to_string()),
                    Some(Ok(Message::Binary(data))) => Err(session.on_binary(data.len()).to_string()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                match text.map_err(|e| e).and_then(|text| session.on_text(&text).map_err(|e: SessionError| e.to_string())) {
                    Err(message) => {
                        send_error(&mut sink, &message).await;
                        Outcome::Stop
                    }
                    Ok(Action::Nothing) => Outcome::Continue,
                    Ok(Action::Answer { sdp, video }) => {
                        video_mid = (video.mid, video.mline_index);
                        match signalling.webrtc.answer(&stream, feed.clone(), sdp, events_tx.clone()).await {
                            Ok((new_viewer, answer)) => {
                                viewer = Some(new_viewer);
                                send(&mut sink, ServerMessage::Answer { sdp: answer }).await
                            }
                            Err(err) => {
                                send_error(&mut sink, &SignallingError::from(err).to_string()).await;
                                Outcome::Stop
                            }
                        }
                    }
                    Ok(Action::AddCandidate { candidate, sdp_mid, sdp_mline_index, username_fragment }) => {
                        let init = RTCIceCandidateInit { candidate, sdp_mid, sdp_mline_index, username_fragment, ..Default::default() };
                        match viewer.as_ref().map(|v| v.add_remote_candidate(init)) {
                            Some(adding) => match adding.await {
                                Ok(()) => Outcome::Continue,
                                Err(err) => {
                                    send_error(&mut sink, &err.to_string()).await;
                                    Outcome::Stop
                                }
                            },
                            None => Outcome::Continue,
                        }
                    }
                }
            }
            Some(event) = events.recv() => match event {
                PeerEvent::Candidate(candidate) => {
                    let (sdp_mid, sdp_mline_index) = video_mid.clone();
                    send(&mut sink, ServerMessage::Candidate { candidate, sdp_mid, sdp_mline_index }).await
                }
                PeerEvent::Closed => Outcome::Stop,
            },
        };
        if let Outcome::Stop = outcome {
            break;
        }
    }
    if let Some(viewer) = viewer {
        viewer.close();
    }
    let _ = sink.send(Message::Close(None)).await;
}

async fn send<W: Sink<Message> + Unpin>(sink: &mut W, message: ServerMessage) -> Outcome {
    match sink.send(Message::Text(message.to_json().into())).await {
        Ok(()) => Outcome::Continue,
        Err(_) => Outcome::Stop,
    }
}

async fn send_error<W: Sink<Message> + Unpin>(sink: &mut W, message: &str) {
    tracing::debug!(message, "signalling error");
    let _ = send(sink, ServerMessage::Error { message: message.into() }).await;
}
