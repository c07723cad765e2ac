//! A WebSocket signalling session as pure logic: text in, what to do out. No sockets, no peers.

use super::protocol::ClientMessage;
use super::sdp::{check_offer, OfferError, VideoSection};

/// Largest message accepted: an SDP offer with many candidates is a few KiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("message of {size} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge { size: usize },
    #[error("message is not a JSON signalling message ({0}); expected {{\"type\":\"offer\",\"sdp\":…}} or {{\"type\":\"candidate\",…}}")]
    NotJson(String),
    #[error("binary messages are not accepted; send JSON text")]
    Binary,
    #[error("a second offer on one socket; open a new socket for a new session")]
    SecondOffer,
    #[error("a candidate before the offer; send the offer first")]
    CandidateBeforeOffer,
    #[error(
        "this gateway needs a token: send {{\"type\":\"auth\",\"token\":…}} first, or open the socket with ?token=…"
    )]
    AuthFirst,
    #[error("auth comes before the offer, not after it")]
    AuthAfterOffer,
    #[error(transparent)]
    Offer(#[from] OfferError),
}

impl SessionError {
    /// The WebSocket close code that goes with the error: 1009 for a message too big, else
    /// 1008 (policy violation).
    pub fn close_code(&self) -> u16 {
        match self {
            SessionError::TooLarge { .. } => 1009,
            _ => 1008,
        }
    }
}

/// What the transport should do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Check this token; call [`Session::authenticated`] if it may watch the stream.
    Authenticate { token: String },
    /// Answer this checked offer.
    Answer { sdp: String, video: VideoSection },
    /// Hand this remote candidate to the peer.
    AddCandidate {
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
        username_fragment: Option<String>,
    },
    /// Nothing to do (the viewer's end-of-candidates).
    Nothing,
}

#[derive(Debug, Default)]
pub struct Session {
    offered: bool,
    needs_auth: bool,
}

impl Session {
    /// A session whose first message must be `auth` when `needs_auth`.
    pub fn new(needs_auth: bool) -> Session {
        Session { offered: false, needs_auth }
    }

    pub fn authenticated(&mut self) {
        self.needs_auth = false;
    }

    pub fn offered(&self) -> bool {
        self.offered
    }

    pub fn on_text(&mut self, text: &str) -> Result<Action, SessionError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(SessionError::TooLarge { size: text.len() });
        }
        let message: ClientMessage =
            serde_json::from_str(text).map_err(|err| SessionError::NotJson(err.to_string()))?;
        match message {
            ClientMessage::Auth { .. } if self.offered => Err(SessionError::AuthAfterOffer),
            ClientMessage::Auth { token } => Ok(Action::Authenticate { token }),
            _ if self.needs_auth => Err(SessionError::AuthFirst),
            ClientMessage::Offer { .. } if self.offered => Err(SessionError::SecondOffer),
            ClientMessage::Offer { sdp } => {
                let video = check_offer(&sdp)?;
                self.offered = true;
                Ok(Action::Answer { sdp, video })
            }
            ClientMessage::Candidate { .. } if !self.offered => Err(SessionError::CandidateBeforeOffer),
            ClientMessage::Candidate { candidate, .. } if candidate.is_empty() => Ok(Action::Nothing),
            ClientMessage::Candidate { candidate, sdp_mid, sdp_mline_index, username_fragment } => {
                Ok(Action::AddCandidate { candidate, sdp_mid, sdp_mline_index, username_fragment })
            }
        }
    }

    pub fn on_binary(&mut self, size: usize) -> SessionError {
        if size > MAX_MESSAGE_BYTES {
            SessionError::TooLarge { size }
        } else {
            SessionError::Binary
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sdp::tests::{offer, H264_VIDEO};
    use super::*;
    use crate::signalling::protocol::ClientMessage;

    fn offer_json() -> String {
        serde_json::to_string(&ClientMessage::Offer { sdp: offer(H264_VIDEO) }).unwrap()
    }

    #[test]
    fn offer_then_candidates() {
        let mut s = Session::default();
        assert!(matches!(s.on_text(&offer_json()), Ok(Action::Answer { .. })));
        let c = r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host","sdpMid":"1","sdpMLineIndex":1}"#;
        assert!(matches!(s.on_text(c), Ok(Action::AddCandidate { sdp_mline_index: Some(1), .. })));
        assert_eq!(s.on_text(r#"{"type":"candidate","candidate":""}"#), Ok(Action::Nothing));
    }

    #[test]
    fn auth_comes_first_when_needed() {
        let mut s = Session::new(true);
        assert_eq!(s.on_text(&offer_json()), Err(SessionError::AuthFirst));
        assert_eq!(s.on_text(r#"{"type":"auth","token":"t"}"#), Ok(Action::Authenticate { token: "t".into() }));
        s.authenticated();
        assert!(matches!(s.on_text(&offer_json()), Ok(Action::Answer { .. })));
        assert_eq!(s.on_text(r#"{"type":"auth","token":"t"}"#), Err(SessionError::AuthAfterOffer));
        assert_eq!(SessionError::TooLarge { size: 1 }.close_code(), 1009);
        assert_eq!(SessionError::AuthFirst.close_code(), 1008);
    }

    #[test]
    fn protocol_errors() {
        let mut s = Session::default();
        assert!(matches!(s.on_text("{not json"), Err(SessionError::NotJson(_))));
        let unknown = s.on_text(r#"{"type":"hello"}"#).unwrap_err().to_string();
        assert!(unknown.contains("unknown variant `hello`"), "{unknown}");
        assert_eq!(s.on_text(r#"{"type":"candidate","candidate":"x"}"#), Err(SessionError::CandidateBeforeOffer));
        let huge = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "a".repeat(MAX_MESSAGE_BYTES));
        assert!(matches!(s.on_text(&huge), Err(SessionError::TooLarge { .. })));
        assert!(matches!(s.on_text(r#"{"type":"offer","sdp":"v=0"}"#), Err(SessionError::Offer(_))));
        assert!(matches!(s.on_text(&offer_json()), Ok(Action::Answer { .. })), "a failed offer is not an offer");
        assert_eq!(s.on_text(&offer_json()), Err(SessionError::SecondOffer));
        assert_eq!(s.on_binary(10), SessionError::Binary);
    }
}
