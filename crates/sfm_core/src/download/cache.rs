//! The owner's chunk cache, shared by every receiver of every source.
//!
//! Single-flight: the first receiver to ask for a chunk produces it, the others wait for the same result; different
//! chunks are produced concurrently. The map's lock is held only to look up, insert or drop entries, never while a
//! chunk is being produced. Produced bytes are kept within a budget: a chunk is dropped once every expected
//! receiver has been served it, when nobody asked for it within the TTL, or, least recently used first, when the
//! budget is exceeded. A dropped chunk asked for again is simply produced again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// (source number, chunk key): the key is a byte offset or an item index, depending on the source.
pub(crate) type ChunkKey = (u64, u64);

type Produced = Result<Bytes, String>;

struct Entry {
    value: Arc<OnceCell<Produced>>,
    /// Bytes counted against the budget (0 while pending).
    size: u64,
    last_used: Instant,
    served: HashSet<String>,
}

#[derive(Default)]
struct State {
    entries: HashMap<ChunkKey, Entry>,
    used: u64,
    /// Chunks every expected receiver was served: a late prefetch must not make them again.
    retired: HashSet<ChunkKey>,
}

pub(crate) struct ChunkCache {
    budget: u64,
    ttl: Duration,
    state: Mutex<State>,
}

impl ChunkCache {
    pub fn new(budget: u64, ttl: Duration) -> Self {
        ChunkCache {
            budget,
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    /// The chunk at `key`, produced by `produce` unless another caller already did or is doing it.
    pub async fn get<F>(&self, key: ChunkKey, produce: F) -> Produced
    where
        F: Future<Output = Produced>,
    {
        self.fetch(key, produce, false).await.expect("a get always fetches")
    }

    /// Makes the chunk at `key` ahead of the receivers, unless it is cached, being made, or already retired.
    pub async fn prefetch<F>(&self, key: ChunkKey, produce: F)
    where
        F: Future<Output = Produced>,
    {
        let _ = self.fetch(key, produce, true).await;
    }

    async fn fetch<F>(&self, key: ChunkKey, produce: F, prefetch: bool) -> Option<Produced>
    where
        F: Future<Output = Produced>,
    {
        let value = {
            let mut state = self.state.lock().expect("cache lock");
            if prefetch && (state.retired.contains(&key) || state.entries.contains_key(&key)) {
                return None;
            }
            let entry = state.entries.entry(key).or_insert_with(|| Entry {
                value: Arc::new(OnceCell::new()),
                size: 0,
                last_used: Instant::now(),
                served: HashSet::new(),
            });
            entry.last_used = Instant::now();
            entry.value.clone()
        };
        let produced = value.get_or_init(|| produce).await.clone();

        let mut state = self.state.lock().expect("cache lock");
        let State { entries, used, .. } = &mut *state;
        let Some(entry) = entries.get_mut(&key).filter(|e| Arc::ptr_eq(&e.value, &value)) else {
            // Dropped while we produced or waited: the caller still gets its bytes.
            return Some(produced);
        };
        match &produced {
            Err(_) => {
                // Not cached: the next ask tries again.
                let gone = entries.remove(&key).expect("present");
                *used -= gone.size;
            }
            Ok(bytes) if entry.size == 0 && !bytes.is_empty() => {
                entry.size = bytes.len() as u64;
                *used += entry.size;
                Self::enforce_budget(&mut state, self.budget);
            }
            Ok(_) => {}
        }
        Some(produced)
    }

    /// `receiver` was sent the chunk at `key`; once `expected` receivers (if known) were, the chunk goes.
    pub fn served(&self, key: ChunkKey, receiver: &str, expected: usize) {
        let mut state = self.state.lock().expect("cache lock");
        let State { entries, used, retired } = &mut *state;
        let Some(entry) = entries.get_mut(&key) else { return };
        entry.served.insert(receiver.to_string());
        if expected > 0 && entry.served.len() >= expected {
            let gone = entries.remove(&key).expect("present");
            *used -= gone.size;
            retired.insert(key);
        }
    }

    /// Drops produced chunks, least recently used first, until the budget holds.
    fn enforce_budget(state: &mut State, budget: u64) {
        while state.used > budget {
            let victim = state
                .entries
                .iter()
                .filter(|(_, e)| e.size > 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k);
            let Some(key) = victim else { break };
            let gone = state.entries.remove(&key).expect("present");
            state.used -= gone.size;
        }
    }

    /// Drops produced chunks nobody asked for within the TTL.
    pub fn sweep(&self, now: Instant) {
        let mut state = self.state.lock().expect("cache lock");
        let ttl = self.ttl;
        let mut freed = 0;
        state.entries.retain(|_, e| {
            let keep = e.size == 0 || now.saturating_duration_since(e.last_used) < ttl;
            if !keep {
                freed += e.size;
            }
            keep
        });
        state.used -= freed;
    }

    /// Drops every chunk of a source (its transaction ended).
    pub fn drop_source(&self, source: u64) {
        let mut state = self.state.lock().expect("cache lock");
        let mut freed = 0;
        state.entries.retain(|(s, _), e| {
            if *s == source {
                freed += e.size;
            }
            *s != source
        });
        state.used -= freed;
        state.retired.retain(|(s, _)| *s != source);
    }

    /// Bytes of produced chunks held now.
    pub fn used(&self) -> u64 {
        self.state.lock().expect("cache lock").used
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn chunk(n: usize) -> Produced {
        Ok(Bytes::from(vec![7u8; n]))
    }

    #[tokio::test]
    async fn concurrent_asks_for_one_chunk_produce_it_once() {
        let cache = Arc::new(ChunkCache::new(1 << 30, Duration::from_secs(60)));
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get((1, 0), async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            chunk(10)
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().len(), 10);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn chunk_goes_once_every_expected_receiver_was_served() {
        let cache = ChunkCache::new(1 << 30, Duration::from_secs(60));
        cache.get((1, 0), async { chunk(10) }).await.unwrap();
        cache.served((1, 0), "a", 2);
        assert_eq!(cache.used(), 10);
        cache.served((1, 0), "a", 2);
        assert_eq!(cache.used(), 10, "the same receiver twice is one receiver");
        cache.served((1, 0), "b", 2);
        assert_eq!(cache.used(), 0);
    }

    #[tokio::test]
    async fn prefetch_never_remakes_a_chunk_every_receiver_had() {
        let cache = ChunkCache::new(1 << 30, Duration::from_secs(60));
        cache.get((1, 0), async { chunk(10) }).await.unwrap();
        cache.served((1, 0), "a", 1);
        let calls = AtomicUsize::new(0);
        let counted = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            chunk(10)
        };
        cache.prefetch((1, 0), counted()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        cache.prefetch((1, 1), counted()).await;
        cache.prefetch((1, 1), counted()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "made once, then cached");
        cache.drop_source(1);
        cache.prefetch((1, 0), counted()).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "a dropped source forgets what it retired"
        );
    }

    #[tokio::test]
    async fn budget_drops_least_recently_used_first() {
        let cache = ChunkCache::new(25, Duration::from_secs(60));
        for k in 0..3 {
            cache.get((1, k), async { chunk(10) }).await.unwrap();
        }
        assert_eq!(cache.used(), 20);
        // Chunk 0 was the least recently used; asking for it again produces it again.
        let calls = AtomicUsize::new(0);
        cache
            .get((1, 0), async {
                calls.fetch_add(1, Ordering::SeqCst);
                chunk(10)
            })
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(cache.used() <= 25);
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_sources_drop_whole() {
        let cache = ChunkCache::new(1 << 30, Duration::from_secs(60));
        assert!(cache.get((1, 0), async { Err("boom".into()) }).await.is_err());
        assert!(cache.get((1, 0), async { chunk(4) }).await.is_ok());
        cache.get((2, 0), async { chunk(6) }).await.unwrap();
        assert_eq!(cache.used(), 10);
        cache.drop_source(1);
        assert_eq!(cache.used(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_drops_chunks_idle_past_the_ttl() {
        let cache = ChunkCache::new(1 << 30, Duration::from_secs(60));
        cache.get((1, 0), async { chunk(4) }).await.unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        cache.get((1, 1), async { chunk(6) }).await.unwrap();
        tokio::time::advance(Duration::from_secs(31)).await;
        cache.sweep(Instant::now());
        assert_eq!(cache.used(), 6);
    }
}
