//! Just enough STUN (RFC 5389) to route a binding request to its peer: the local ufrag of its
//! USERNAME (RFC 8445 § 7.2.2: `ours:theirs`) and a check of its MESSAGE-INTEGRITY, an HMAC-SHA1
//! keyed with the peer's ICE password, so that only someone who read that peer's answer can make
//! an address that peer's; and whether it nominates its pair (USE-CANDIDATE).

use ring::hmac;

const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const HEADER: usize = 20;
const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const USE_CANDIDATE: u16 = 0x0025;
const HMAC_SHA1: usize = 20;

/// A binding request, as far as routing needs it.
pub(super) struct BindingRequest<'a> {
    pub(super) local_ufrag: &'a str,
    /// The controlling agent (the browser) nominates the pair it checks.
    pub(super) nominates: bool,
    message: &'a [u8],
    /// Where the MESSAGE-INTEGRITY attribute starts.
    integrity: Option<usize>,
}

impl<'a> BindingRequest<'a> {
    pub(super) fn parse(message: &'a [u8]) -> Option<BindingRequest<'a>> {
        if message.len() < HEADER || message[0..2] != BINDING_REQUEST || message[4..8] != MAGIC_COOKIE {
            return None;
        }
        let length = usize::from(u16::from_be_bytes([message[2], message[3]]));
        let message = message.get(..HEADER + length)?;
        let (mut at, mut local_ufrag, mut integrity, mut nominates) = (HEADER, None, None, false);
        while at + 4 <= message.len() {
            let kind = u16::from_be_bytes([message[at], message[at + 1]]);
            let size = usize::from(u16::from_be_bytes([message[at + 2], message[at + 3]]));
            let value = message.get(at + 4..at + 4 + size)?;
            match kind {
                USERNAME => local_ufrag = std::str::from_utf8(value).ok()?.split(':').next(),
                MESSAGE_INTEGRITY if size == HMAC_SHA1 => integrity = Some(at),
                USE_CANDIDATE => nominates = true,
                _ => {}
            }
            at += 4 + size.next_multiple_of(4);
        }
        Some(BindingRequest { local_ufrag: local_ufrag?, nominates, message, integrity })
    }

    /// Whether its MESSAGE-INTEGRITY is the HMAC of what precedes it, keyed with `password`.
    pub(super) fn signed_with(&self, password: &str) -> bool {
        let Some(at) = self.integrity else { return false };
        // Signed as if the message ended with this attribute (a FINGERPRINT may follow it).
        let mut signed = self.message[..at].to_vec();
        signed[2..4].copy_from_slice(&((at + 4 + HMAC_SHA1 - HEADER) as u16).to_be_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
        hmac::verify(&key, &signed, &self.message[at + 4..at + 4 + HMAC_SHA1]).is_ok()
    }
}

/// Whether `message` is a binding success response (checked by the peer its address routes to).
pub(super) fn is_binding_success(message: &[u8]) -> bool {
    message.len() >= HEADER && message[0..2] == BINDING_SUCCESS && message[4..8] == MAGIC_COOKIE
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A binding request from `user`, with PRIORITY, signed with `password`, and a FINGERPRINT.
    pub(in crate::webrtc::shared_port) fn binding_request(user: &str, password: &str) -> Vec<u8> {
        request(user, password, false)
    }

    /// The same, nominating its pair (USE-CANDIDATE).
    pub(in crate::webrtc::shared_port) fn nominating_request(user: &str, password: &str) -> Vec<u8> {
        request(user, password, true)
    }

    /// A binding success response to `request` (its transaction), unsigned: enough to route.
    pub(in crate::webrtc::shared_port) fn success_response(request: &[u8]) -> Vec<u8> {
        [&BINDING_SUCCESS[..], &[0, 0], &request[4..HEADER]].concat()
    }

    fn request(user: &str, password: &str, nominate: bool) -> Vec<u8> {
        let attribute = |kind: u16, value: &[u8]| {
            let mut out = [kind.to_be_bytes(), (value.len() as u16).to_be_bytes()].concat();
            out.extend_from_slice(value);
            out.resize(out.len().next_multiple_of(4), 0);
            out
        };
        let mut message = [&BINDING_REQUEST[..], &[0, 0], &MAGIC_COOKIE, &[7; 12]].concat();
        message.extend(attribute(0x0024, &[1, 2, 3, 4]));
        message.extend(attribute(USERNAME, user.as_bytes()));
        if nominate {
            message.extend(attribute(USE_CANDIDATE, &[]));
        }
        let length = |m: &mut Vec<u8>, extra: usize| {
            let length = (m.len() - HEADER + extra) as u16;
            m[2..4].copy_from_slice(&length.to_be_bytes());
        };
        length(&mut message, 4 + HMAC_SHA1);
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
        let tag = hmac::sign(&key, &message);
        message.extend(attribute(MESSAGE_INTEGRITY, tag.as_ref()));
        message.extend(attribute(0x8028, &[0xde, 0xad, 0xbe, 0xef]));
        length(&mut message, 0);
        message
    }

    #[test]
    fn reads_the_local_ufrag_and_checks_the_signature() {
        let message = binding_request("ours:theirs", "the password");
        let request = BindingRequest::parse(&message).expect("a binding request");
        assert_eq!(request.local_ufrag, "ours");
        assert!(!request.nominates);
        assert!(request.signed_with("the password"), "FINGERPRINT after it is not signed");
        let nominating = nominating_request("ours:theirs", "the password");
        let nominating = BindingRequest::parse(&nominating).expect("a binding request");
        assert!(nominating.nominates && nominating.signed_with("the password"));
        assert!(is_binding_success(&success_response(&message)) && !is_binding_success(&message));
        assert!(!request.signed_with("another password"));

        let mut tampered = message.clone();
        tampered[24] ^= 1;
        assert!(!BindingRequest::parse(&tampered).unwrap().signed_with("the password"), "a changed byte");

        let mut response = message.clone();
        response[0..2].copy_from_slice(&[0x01, 0x01]);
        assert!(BindingRequest::parse(&response).is_none(), "responses carry no USERNAME to trust");
        assert!(BindingRequest::parse(&message[..message.len() - 8]).is_none(), "truncated");
        assert!(BindingRequest::parse(&[0x80; 40]).is_none(), "RTP is not STUN");
    }
}
