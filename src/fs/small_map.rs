//! A map for the few entries a file's node table holds (one, nearly always): a sorted vector.
//! A `BTreeMap` allocates a whole leaf (11 slots) for the first entry and a `HashMap` a table;
//! with a node table per file the kernel caches, that was most of the daemon's memory at a
//! million files.

#[derive(Debug, Clone)]
pub struct SmallMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap { entries: Vec::new() }
    }
}

impl<K: Ord + Copy, V> SmallMap<K, V> {
    fn position(&self, key: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.position(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.position(key).ok().map(move |i| &mut self.entries[i].1)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.position(key).is_ok()
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                self.entries.shrink_to_fit();
                None
            }
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.position(key).ok()?;
        let (_, v) = self.entries.remove(i);
        self.entries.shrink_to_fit();
        Some(v)
    }

    /// Keys in ascending order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// The first key (in ascending order) whose value satisfies `pred`.
    pub fn find(&self, pred: impl Fn(&V) -> bool) -> Option<K> {
        self.entries.iter().find(|(_, v)| pred(v)).map(|(k, _)| *k)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::SmallMap;

    #[test]
    fn behaves_as_an_ordered_map() {
        let mut m = SmallMap::default();
        assert!(m.is_empty());
        for k in [5u32, 1, 3] {
            assert_eq!(m.insert(k, k * 10), None);
        }
        assert_eq!(m.insert(3, 33), Some(30));
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 3, 5]);
        assert_eq!(m.get(&3), Some(&33));
        *m.get_mut(&1).unwrap() += 1;
        assert_eq!(m.remove(&5), Some(50));
        assert!(!m.contains_key(&5) && m.contains_key(&1));
        assert_eq!(m.find(|v| *v > 20), Some(3));
        m.iter_mut().for_each(|(_, v)| *v += 1);
        assert_eq!(m.get(&1), Some(&12));
        m.remove(&1);
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [34]);
        assert_eq!(m.len(), 1);
    }
}
