//! What one client address may do to signalling: a request rate (a token bucket per address,
//! from `governor`) and a number of sessions answered but not yet connected. Over either, the
//! client gets 429 with `Retry-After`, and nobody else notices.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::ClientLimits;
use crate::places::{Place, Places};

/// The client's address, as the HTTP layer worked it out (trusting `X-Forwarded-For` only from
/// configured proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    #[error("too many signalling requests from {ip}; retry in {retry_after:?}")]
    TooFast { ip: IpAddr, retry_after: Duration },
    #[error("{ip} already has {max} WebRTC sessions that have not connected; connect or close one first")]
    TooManyPending { ip: IpAddr, max: usize },
}

impl Limited {
    /// Whole seconds to wait, at least one.
    pub fn retry_after_seconds(&self) -> u64 {
        match self {
            Limited::TooFast { retry_after, .. } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
            Limited::TooManyPending { .. } => super::PENDING_RETRY_SECONDS,
        }
    }
}

pub struct Limits {
    rate: DefaultKeyedRateLimiter<IpAddr>,
    pending: Places<IpAddr>,
    max_pending: usize,
}

/// One unconnected session of one address; dropping it frees the place.
pub type PendingPlace = Place<IpAddr>;

impl Limits {
    pub fn new(limits: &ClientLimits) -> Limits {
        let rate = NonZeroU32::new(limits.signalling_rate).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 is not 0"));
        Limits {
            rate: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            pending: Places::new(),
            max_pending: limits.max_pending_per_ip,
        }
    }

    /// Counts one signalling request against the address's rate.
    pub fn request(&self, ip: IpAddr) -> Result<(), Limited> {
        self.rate.check_key(&ip).map_err(|not_until| Limited::TooFast {
            ip,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }

    /// A place for one more unconnected session of this address.
    pub fn pending(&self, ip: IpAddr) -> Result<PendingPlace, Limited> {
        self.pending.take(&ip, self.max_pending).ok_or(Limited::TooManyPending { ip, max: self.max_pending })
    }

    /// Forgets the rate state of addresses that have been quiet; call now and then.
    pub fn forget_idle(&self) {
        self.rate.retain_recent();
        self.rate.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, max_pending: usize) -> Limits {
        Limits::new(&ClientLimits { max_pending_per_ip: max_pending, signalling_rate: rate, trusted_proxies: vec![] })
    }

    #[test]
    fn a_burst_of_twice_the_rate_then_429_for_that_address_only() {
        let limits = limits(5, 8);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..10 {
            limits.request(a).unwrap();
        }
        let refused = limits.request(a).unwrap_err();
        assert!(matches!(refused, Limited::TooFast { .. }));
        assert_eq!(refused.retry_after_seconds(), 1);
        assert!(limits.request(b).is_ok(), "another address is not affected");
    }

    #[test]
    fn pending_sessions_per_address() {
        let limits = limits(100, 2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = limits.pending(ip).unwrap();
        let _second = limits.pending(ip).unwrap();
        assert_eq!(limits.pending(ip).err().unwrap(), Limited::TooManyPending { ip, max: 2 });
        assert!(limits.pending("10.0.0.9".parse().unwrap()).is_ok());
        drop(first);
        assert!(limits.pending(ip).is_ok(), "a connected or closed session frees its place");
    }
}
