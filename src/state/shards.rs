//! A hash map split into a fixed number of shared shards: the state's maps and indexes.
//!
//! Cloning a [`Shards`] copies one pointer per shard, and a change copies only the shard it
//! touches (copy on write), so a new snapshot that differs from the last one in a few entries
//! costs a few shard copies, not a copy of every map. Readers of a published snapshot never
//! see a change: a shard shared with another snapshot is copied before it is written.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use foldhash::fast::RandomState;

/// Enough shards that a 100,000-entry map copies ~400 entries per touched shard, few enough
/// that a clone (one pointer each) stays negligible.
const SHARDS: usize = 256;

/// The map. Keys are placed by a per-map seeded hash, which the clones share.
pub(super) struct Shards<K, V> {
    hasher: RandomState,
    shards: Box<[Arc<HashMap<K, V, RandomState>>]>,
}

impl<K, V> Clone for Shards<K, V> {
    fn clone(&self) -> Self {
        Shards {
            hasher: self.hasher,
            shards: self.shards.clone(),
        }
    }
}

impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        // One empty map shared by every shard: a fresh map allocates one shard, not 256.
        let empty = Arc::new(HashMap::default());
        Shards {
            hasher: RandomState::default(),
            shards: (0..SHARDS).map(|_| empty.clone()).collect(),
        }
    }
}

impl<K, V> std::fmt::Debug for Shards<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").field("len", &self.len()).finish()
    }
}

impl<K, V> Shards<K, V> {
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

impl<K: Hash + Eq, V> Shards<K, V> {
    fn index<Q: Hash + ?Sized>(&self, k: &Q) -> usize {
        // The top bits: the shard's own map hashes the key with another seed, so its buckets
        // do not all share the low bits that chose the shard.
        (self.hasher.hash_one(k) >> (64 - SHARDS.trailing_zeros())) as usize
    }

    pub(super) fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.index(k)].get(k)
    }

    pub(super) fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(k).is_some()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Shards<K, V> {
    /// The shard holding `k`, made private to this map first.
    fn shard_mut<Q: Hash + ?Sized>(&mut self, k: &Q) -> &mut HashMap<K, V, RandomState> {
        let i = self.index(k);
        Arc::make_mut(&mut self.shards[i])
    }

    pub(super) fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.shard_mut(&k).insert(k, v)
    }

    pub(super) fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Look before copying: removing an absent key must not copy a shared shard.
        if !self.contains_key(k) {
            return None;
        }
        self.shard_mut(k).remove(k)
    }

    pub(super) fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.contains_key(k) {
            return None;
        }
        self.shard_mut(k).get_mut(k)
    }

    /// The value at `k`, inserted as `V::default()` first if missing; `key` makes the owned
    /// key only then.
    pub(super) fn slot<Q>(&mut self, k: &Q, key: impl FnOnce() -> K) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Default,
    {
        let shard = self.shard_mut(k);
        if !shard.contains_key(k) {
            shard.insert(key(), V::default());
        }
        shard
            .get_mut(k)
            .unwrap_or_else(|| unreachable!("inserted just above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_its_entries_when_the_original_changes() {
        let mut a: Shards<String, u32> = Shards::default();
        for i in 0..1000 {
            a.insert(format!("k{i}"), i);
        }
        let b = a.clone();
        a.insert("k1".into(), 99);
        assert_eq!(a.remove("k2"), Some(2));
        *a.slot("k3", || "k3".into()) += 1;
        *a.slot("new", || "new".into()) += 7;

        assert_eq!(b.len(), 1000);
        assert_eq!(b.get("k1"), Some(&1));
        assert_eq!(b.get("k2"), Some(&2));
        assert_eq!(b.get("k3"), Some(&3));
        assert_eq!(b.get("new"), None);
        assert_eq!(a.len(), 1000);
        assert_eq!(a.get("k1"), Some(&99));
        assert_eq!(a.get("k2"), None);
        assert_eq!(a.get("k3"), Some(&4));
        assert_eq!(a.get("new"), Some(&7));
        let mut all: Vec<u32> = b.values().copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_change_copies_only_the_touched_shard() {
        let mut a: Shards<u64, u64> = Shards::default();
        for i in 0..10_000 {
            a.insert(i, i);
        }
        let b = a.clone();
        a.insert(5, 6);
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(shared, SHARDS - 1);
        assert_eq!(a.remove(&10_001), None);
        assert_eq!(
            a.shards
                .iter()
                .zip(b.shards.iter())
                .filter(|(x, y)| Arc::ptr_eq(x, y))
                .count(),
            SHARDS - 1,
            "removing an absent key copies nothing"
        );
    }
}
