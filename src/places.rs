//! Places counted per key (viewers per stream, unconnected sessions per client address), each
//! given back when whoever holds it is dropped, on every path.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

type Counts<K> = Arc<Mutex<HashMap<K, usize>>>;

pub struct Places<K> {
    counts: Counts<K>,
}

/// One place under one key, until dropped.
pub struct Place<K: Eq + Hash> {
    key: K,
    counts: Counts<K>,
}

impl<K: Eq + Hash + Clone> Places<K> {
    pub fn new() -> Places<K> {
        Places { counts: Arc::default() }
    }

    /// A place under `key` if it holds fewer than `max`.
    pub fn take(&self, key: &K, max: usize) -> Option<Place<K>> {
        let mut counts = self.counts.lock().expect("places lock");
        let count = counts.entry(key.clone()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Place { key: key.clone(), counts: self.counts.clone() })
    }

    pub fn count(&self, key: &K) -> usize {
        self.counts.lock().expect("places lock").get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone> Default for Places<K> {
    fn default() -> Self {
        Places::new()
    }
}

impl<K: Eq + Hash> Drop for Place<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("places lock");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_per_key_come_back_when_dropped() {
        let places = Places::new();
        let first = places.take(&"a", 2).unwrap();
        let _second = places.take(&"a", 2).unwrap();
        assert!(places.take(&"a", 2).is_none());
        assert!(places.take(&"b", 2).is_some(), "keys are counted apart");
        assert_eq!(places.count(&"a"), 2);
        drop(first);
        assert_eq!(places.count(&"a"), 1);
        assert!(places.take(&"a", 2).is_some());
    }
}
