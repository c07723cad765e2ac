//! The UDP port range media is served from with `--webrtc-ports`: webrtc-rs binds one socket per
//! peer, so each viewer leases a port and gives it back when it leaves.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::config::PortRange;

#[derive(Clone)]
pub struct PortPool {
    pub range: PortRange,
    free: Arc<Mutex<BTreeSet<u16>>>,
}

/// A port held by one peer until dropped.
pub struct PortLease {
    pub port: u16,
    pool: PortPool,
}

impl PortPool {
    pub fn new(range: PortRange) -> PortPool {
        PortPool { range, free: Arc::new(Mutex::new((range.low..=range.high).collect())) }
    }

    pub fn lease(&self) -> Option<PortLease> {
        let port = self.free.lock().expect("port pool lock").pop_first()?;
        Some(PortLease { port, pool: self.clone() })
    }

    pub fn available(&self) -> usize {
        self.free.lock().expect("port pool lock").len()
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.free.lock().expect("port pool lock").insert(self.port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_until_empty_and_takes_back() {
        let pool = PortPool::new(PortRange { low: 5000, high: 5001 });
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert_ne!(a.port, b.port);
        assert!(pool.lease().is_none());
        drop(a);
        assert_eq!(pool.available(), 1);
        assert!(pool.lease().is_some());
    }
}
