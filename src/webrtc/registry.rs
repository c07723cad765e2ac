//! Every viewer and every stream's places and totals, under one lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::stats::StreamTotals;
use super::viewer::Viewer;

#[derive(Default)]
struct Stream {
    /// Viewers holding a place, from their offer until they are gone.
    places: usize,
    totals: Arc<StreamTotals>,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<String, Stream>,
    viewers: HashMap<String, Arc<Viewer>>,
}

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

/// A viewer's place in its stream, given back when dropped.
pub struct Place {
    stream: String,
    registry: Registry,
}

/// How many viewers a stream has, by how they were signalled and what their media goes over.
pub type ViewerCounts = HashMap<(&'static str, &'static str), usize>;

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("registry lock")
    }

    /// A place in `stream` if it has fewer than `max` viewers.
    pub fn take_place(&self, stream: &str, max: usize) -> Option<Place> {
        let mut inner = self.lock();
        let entry = inner.streams.entry(stream.to_owned()).or_default();
        if entry.places >= max {
            return None;
        }
        entry.places += 1;
        Some(Place { stream: stream.to_owned(), registry: self.clone() })
    }

    pub fn places(&self, stream: &str) -> usize {
        self.lock().streams.get(stream).map_or(0, |s| s.places)
    }

    /// What every viewer the stream ever had was sent and asked for.
    pub fn totals(&self, stream: &str) -> Arc<StreamTotals> {
        self.lock().streams.entry(stream.to_owned()).or_default().totals.clone()
    }

    pub fn insert(&self, viewer: Arc<Viewer>) {
        self.lock().viewers.insert(viewer.id.clone(), viewer);
    }

    pub fn remove(&self, id: &str) {
        let removed = self.lock().viewers.remove(id);
        // Dropped after the lock: the last reference drops its `Place`, which takes the lock.
        drop(removed);
    }

    pub fn viewer(&self, id: &str) -> Option<Arc<Viewer>> {
        self.lock().viewers.get(id).cloned()
    }

    pub fn viewers(&self) -> Vec<Arc<Viewer>> {
        self.lock().viewers.values().cloned().collect()
    }

    /// The stream's viewers by (signalling, transport).
    pub fn counts(&self, stream: &str) -> ViewerCounts {
        let mut counts = ViewerCounts::new();
        for viewer in self.lock().viewers.values().filter(|v| v.stream == stream) {
            *counts.entry((viewer.signalling, viewer.transport())).or_default() += 1;
        }
        counts
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(stream) = self.registry.lock().streams.get_mut(&self.stream) {
            stream.places -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_per_stream_and_given_back() {
        let registry = Registry::default();
        let a = registry.take_place("a", 2).unwrap();
        let _b = registry.take_place("a", 2).unwrap();
        assert!(registry.take_place("a", 2).is_none());
        assert!(registry.take_place("other", 2).is_some(), "each stream has its own");
        drop(a);
        assert_eq!(registry.places("a"), 1);
        assert!(registry.take_place("a", 2).is_some());
        assert!(Arc::ptr_eq(&registry.totals("a"), &registry.totals("a")), "one totals per stream");
    }
}
