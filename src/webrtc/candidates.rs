//! Remote ICE candidates a viewer may make us send to. Each one makes the gateway send STUN
//! checks to an address the client chose, so a session gets at most
//! [`MAX_REMOTE_CANDIDATES`], only of the address families and scopes the gateway itself
//! gathers on, and (see `Viewer`) none before its answer has been sent.

use std::net::IpAddr;

/// Remote candidates one session may give, in its offer and trickled together.
pub const MAX_REMOTE_CANDIDATES: usize = 16;

/// Which remote addresses are worth checking, from the gateway's own candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CandidatePolicy {
    v4: bool,
    v6: bool,
    loopback: bool,
    link_local: bool,
}

/// The address of an SDP candidate attribute value (`candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host`).
fn fields(candidate: &str) -> Option<(&str, &str)> {
    let value = candidate.trim().strip_prefix("a=").unwrap_or(candidate.trim());
    let mut fields = value.strip_prefix("candidate:")?.split_ascii_whitespace();
    let transport = fields.nth(2)?;
    let address = fields.nth(1)?;
    Some((transport, address))
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

impl CandidatePolicy {
    /// Learns what the gateway gathers on from the candidates in its own SDP.
    pub fn from_local_sdp(sdp: &str) -> CandidatePolicy {
        let mut policy = CandidatePolicy::default();
        for line in sdp.lines().filter(|l| l.starts_with("a=candidate:")) {
            let Some(ip) = fields(line).and_then(|(_, address)| address.parse::<IpAddr>().ok()) else { continue };
            policy.v4 |= ip.is_ipv4();
            policy.v6 |= ip.is_ipv6();
            policy.loopback |= ip.is_loopback();
            policy.link_local |= is_link_local(&ip);
        }
        policy
    }

    /// Why a remote candidate is not worth sending to, if it is not.
    pub fn refuses(&self, candidate: &str) -> Option<String> {
        let Some((transport, address)) = fields(candidate) else {
            return Some("not a candidate attribute".into());
        };
        if !transport.eq_ignore_ascii_case("udp") {
            return Some(format!(
                "transport {transport} (the gateway's TCP candidates are passive: it is the one connected to)"
            ));
        }
        let Ok(ip) = address.parse::<IpAddr>() else {
            return Some(format!("{address:?} is not an IP address (mDNS names are not resolved)"));
        };
        let unroutable = ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
            || (ip.is_loopback() && !self.loopback)
            || (is_link_local(&ip) && !self.link_local);
        let family = if ip.is_ipv4() { self.v4 } else { self.v6 };
        (unroutable || !family).then(|| format!("{ip} is of a family or scope the gateway does not gather on"))
    }
}

/// Takes the candidates out of an offer, to be given to the peer once the answer is out.
pub fn split_offer_candidates(offer: &str) -> (String, Vec<String>) {
    let mut candidates = Vec::new();
    let mut rest = String::with_capacity(offer.len());
    for line in offer.split_inclusive('\n') {
        match line.trim_end().strip_prefix("a=") {
            Some(value) if value.starts_with("candidate:") => candidates.push(value.to_owned()),
            _ => rest.push_str(line),
        }
    }
    (rest, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "v=0\r\na=candidate:1 1 udp 2130706431 10.99.0.1 50000 typ host\r\n";

    #[test]
    fn admits_only_what_the_gateway_could_reach() {
        let policy = CandidatePolicy::from_local_sdp(LOCAL);
        assert_eq!(policy.refuses("candidate:2 1 udp 2130706431 10.99.0.2 40000 typ host"), None);
        assert_eq!(policy.refuses("candidate:2 1 UDP 1 203.0.113.9 40000 typ srflx raddr 0.0.0.0 rport 0"), None);
        for refused in [
            "candidate:2 1 udp 1 127.0.0.1 40000 typ host",
            "candidate:2 1 udp 1 169.254.1.1 40000 typ host",
            "candidate:2 1 udp 1 224.0.0.1 40000 typ host",
            "candidate:2 1 udp 1 255.255.255.255 40000 typ host",
            "candidate:2 1 udp 1 0.0.0.0 40000 typ host",
            "candidate:2 1 udp 1 2001:db8::1 40000 typ host",
            "candidate:2 1 udp 1 abc.local 40000 typ host",
            "candidate:2 1 tcp 1 10.99.0.2 9 typ host tcptype active",
            "hello",
        ] {
            assert!(policy.refuses(refused).is_some(), "{refused} must be refused");
        }
        let with_loopback = CandidatePolicy::from_local_sdp(
            "a=candidate:1 1 udp 1 127.0.0.1 5 typ host\r\na=candidate:1 1 udp 1 ::1 5 typ host\r\n",
        );
        assert_eq!(with_loopback.refuses("candidate:2 1 udp 1 127.0.0.1 40000 typ host"), None);
        assert_eq!(with_loopback.refuses("a=candidate:2 1 udp 1 ::1 40000 typ host"), None);
    }

    #[test]
    fn offers_lose_their_candidates_until_the_answer_is_out() {
        let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=candidate:1 1 udp 1 10.0.0.2 4 typ host\r\na=mid:0\r\n";
        let (rest, candidates) = split_offer_candidates(offer);
        assert_eq!(rest, "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n");
        assert_eq!(candidates, vec!["candidate:1 1 udp 1 10.0.0.2 4 typ host"]);
    }
}
