//! Signalling: the WebSocket protocol and WHEP, as pure protocol types and session logic with
//! thin transports over them. Drives `webrtc`; knows nothing of GStreamer.

pub mod protocol;
pub mod sdp;
pub mod session;
pub mod whep;
pub mod ws;

use std::sync::Arc;

use crate::config::IceServer;
use crate::webrtc::{Feed, WebRtc, WebRtcError};

/// Finds the feed of a stream by name.
pub trait Feeds: Send + Sync + 'static {
    fn feed(&self, stream: &str) -> Option<Arc<dyn Feed>>;
}

/// What the signalling transports share.
pub struct Signalling {
    pub webrtc: Arc<WebRtc>,
    pub feeds: Arc<dyn Feeds>,
    /// STUN/TURN servers for viewers, announced in WHEP answers.
    pub ice_servers: Vec<IceServer>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignallingError {
    #[error("no stream named {0:?}")]
    UnknownStream(String),
    #[error("no WHEP session {session:?} on stream {stream:?}")]
    UnknownSession { stream: String, session: String },
    #[error("WHEP offers must be sent with Content-Type: application/sdp (got {0:?})")]
    NotSdp(String),
    #[error("the offer is not UTF-8 text")]
    NotText,
    #[error(transparent)]
    Offer(#[from] sdp::OfferError),
    #[error(transparent)]
    WebRtc(#[from] WebRtcError),
}

impl Signalling {
    fn feed(&self, stream: &str) -> Result<Arc<dyn Feed>, SignallingError> {
        self.feeds.feed(stream).ok_or_else(|| SignallingError::UnknownStream(stream.into()))
    }
}
