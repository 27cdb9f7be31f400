//! A map split into shards, so that sweeping idle keys and making room at the
//! cap touch one shard at a time and never pause the limiter for long.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash, RandomState};

/// How many shards each map is split into; one is swept per tick.
pub const SHARDS: usize = 64;

pub struct Sharded<K, V> {
    shards: Vec<HashMap<K, V>>,
    /// Most entries per shard before the least recently seen are forgotten.
    cap: usize,
    hasher: RandomState,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    /// A map of about `max_keys` entries at most (never less than one per shard).
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            cap: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    fn index(&self, key: &K) -> usize {
        usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards.get(self.index(key))?.get(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.index(key);
        self.shards.get_mut(i)?.get_mut(key)
    }

    pub fn remove(&mut self, key: &K) {
        let i = self.index(key);
        if let Some(shard) = self.shards.get_mut(i) {
            shard.remove(key);
        }
    }

    /// The entry for `key`. A new key in a full shard first makes room: what
    /// is no longer `live` goes, and if that is not enough, the least recently
    /// seen tenth of what is not `protected`.
    pub fn entry(
        &mut self,
        key: K,
        live: impl Fn(&K, &V) -> bool,
        last_seen: impl Fn(&V) -> i64,
        protected: impl Fn(&V) -> bool,
    ) -> Entry<'_, K, V> {
        let i = self.index(&key);
        let cap = self.cap;
        // The index is always in range: SHARDS shards exist from the start.
        let shard = &mut self.shards[i % SHARDS];
        if shard.len() >= cap && !shard.contains_key(&key) {
            shard.retain(|k, v| live(k, v));
            if shard.len() >= cap {
                forget_least_recent_tenth(shard, last_seen, protected);
            }
        }
        shard.entry(key)
    }

    /// Keeps, in shard `n` (mod the shard count), only what `keep` says.
    pub fn retain_shard(&mut self, n: usize, keep: impl FnMut(&K, &mut V) -> bool) {
        if let Some(shard) = self.shards.get_mut(n % SHARDS) {
            shard.retain(keep);
            if shard.capacity() > 2 * shard.len().max(16) {
                shard.shrink_to_fit();
            }
        }
    }

    /// Entries held, across shards.
    pub fn count(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }
}

/// Forgets the least recently seen tenth (at least one) of the entries that
/// `keep` does not protect.
fn forget_least_recent_tenth<K, V>(
    map: &mut HashMap<K, V>,
    last_seen: impl Fn(&V) -> i64,
    keep: impl Fn(&V) -> bool,
) {
    let mut seen: Vec<i64> = map.values().filter(|v| !keep(v)).map(&last_seen).collect();
    if seen.is_empty() {
        return;
    }
    let cut = seen.len() / 10;
    let (_, &mut threshold, _) = seen.select_nth_unstable(cut);
    map.retain(|_, v| keep(v) || last_seen(v) > threshold);
}
