//! The WebSocket signalling protocol: JSON text messages tagged by `type`.

use serde::{Deserialize, Serialize};

/// Messages a viewer sends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    /// The viewer's token, when the gateway needs one and the socket's URL carried none; first.
    Auth { token: String },
    /// The SDP offer (recvonly video); first, and only once.
    Offer { sdp: String },
    /// A trickled ICE candidate; an empty `candidate` means the viewer has no more.
    Candidate {
        candidate: String,
        #[serde(rename = "sdpMid", default)]
        sdp_mid: Option<String>,
        #[serde(rename = "sdpMLineIndex", default)]
        sdp_mline_index: Option<u16>,
        #[serde(rename = "usernameFragment", default)]
        username_fragment: Option<String>,
    },
}

/// Messages the gateway sends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// The SDP answer to the viewer's offer.
    Answer { sdp: String },
    /// One of the gateway's ICE candidates.
    Candidate {
        candidate: String,
        #[serde(rename = "sdpMid")]
        sdp_mid: String,
        #[serde(rename = "sdpMLineIndex")]
        sdp_mline_index: u16,
    },
    /// What went wrong; the gateway closes the socket after it.
    Error { message: String },
}

impl ServerMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_client_messages() {
        let offer: ClientMessage = serde_json::from_str(r#"{"type":"offer","sdp":"v=0"}"#).unwrap();
        assert_eq!(offer, ClientMessage::Offer { sdp: "v=0".into() });
        let candidate: ClientMessage = serde_json::from_str(
            r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}"#,
        )
        .unwrap();
        assert!(
            matches!(candidate, ClientMessage::Candidate { sdp_mid: Some(ref m), sdp_mline_index: Some(0), .. } if m == "0")
        );
    }

    #[test]
    fn writes_the_documented_server_messages() {
        assert_eq!(ServerMessage::Answer { sdp: "v=0".into() }.to_json(), r#"{"type":"answer","sdp":"v=0"}"#);
        assert_eq!(
            ServerMessage::Candidate { candidate: "candidate:x".into(), sdp_mid: "0".into(), sdp_mline_index: 0 }
                .to_json(),
            r#"{"type":"candidate","candidate":"candidate:x","sdpMid":"0","sdpMLineIndex":0}"#
        );
        assert_eq!(ServerMessage::Error { message: "no".into() }.to_json(), r#"{"type":"error","message":"no"}"#);
    }
}
