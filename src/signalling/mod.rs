//! Signalling: the WebSocket protocol and WHEP, as pure protocol types and session logic with
//! thin transports over them. Drives `webrtc`; knows nothing of GStreamer.

pub mod limits;
pub mod protocol;
pub mod sdp;
pub mod session;
pub mod whep;
pub mod ws;

use std::sync::Arc;

use crate::auth::{Auth, Denied};
use crate::config::{CorsOrigin, IceServer};
use crate::webrtc::{Feed, WebRtc, WebRtcError};
use limits::{Limited, Limits};

/// How a WebRTC session can be signalled, as `/metrics` labels viewers.
pub const WEBSOCKET: &str = "websocket";
pub const WHEP: &str = "whep";
/// livegate's own offer to a WHIP server it publishes to.
pub const WHIP: &str = "whip";
pub const SIGNALLING_KINDS: [&str; 3] = [WEBSOCKET, WHEP, WHIP];

/// Seconds a client over its pending-session limit is asked to wait: about one connect timeout.
pub const PENDING_RETRY_SECONDS: u64 = 10;

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
    /// Checks tokens sent in a WebSocket's first message.
    pub auth: Arc<Auth>,
    pub limits: Limits,
    /// Origins whose pages may open the WebSocket besides the gateway's own; empty means any.
    pub allowed_origins: Vec<CorsOrigin>,
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
    #[error("access denied: {0}")]
    Denied(#[from] Denied),
    #[error(transparent)]
    Limited(#[from] Limited),
    #[error("pages from origin {0:?} may not open this WebSocket; allow it with --cors-origin")]
    Origin(String),
}

impl Signalling {
    fn feed(&self, stream: &str) -> Result<Arc<dyn Feed>, SignallingError> {
        self.feeds.feed(stream).ok_or_else(|| SignallingError::UnknownStream(stream.into()))
    }

    /// A browser page may open the WebSocket if it is served by the gateway itself (its origin
    /// names the host the request was sent to) or its origin is allowed; other clients send no
    /// `Origin`.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        let own = host.is_some_and(|host| origin.split_once("://").is_some_and(|(_, o)| o.eq_ignore_ascii_case(host)));
        own || self.allowed_origins.is_empty()
            || self.allowed_origins.iter().any(|allowed| matches!(allowed, CorsOrigin::Exactly(a) if *a == origin))
    }
}
