//! A map keyed by a string for the router's tries: a vector of exactly its length while small
//! (most trie nodes have one child, most filters one subscriber), a hash map once it grows.
//! A one-entry hash map allocates room for four plus its control bytes; a one-entry vector
//! here allocates one entry. This is most of what a subscription costs in memory.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Entries kept in the vector before switching to a hash map (a linear scan of this many short
/// keys is as fast as hashing one).
const FEW_MAX: usize = 8;

#[allow(clippy::box_collection)] // boxed: the common one-entry case stays 24 bytes, not 48
pub(super) enum SmallMap<K, V> {
    Few(Vec<(K, V)>),
    Many(Box<HashMap<K, V>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Few(Vec::new())
    }
}

impl<K: Borrow<str> + Eq + Hash, V> SmallMap<K, V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        match self {
            SmallMap::Few(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, x)| x),
            SmallMap::Many(m) => m.get(key),
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        match self {
            SmallMap::Few(v) => v
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, x)| x),
            SmallMap::Many(m) => m.get_mut(key),
        }
    }

    /// The value at `key`, inserted first (key made by `make_key`) if missing.
    pub fn get_or_insert_with(
        &mut self,
        key: &str,
        make_key: impl FnOnce() -> K,
        value: impl FnOnce() -> V,
    ) -> &mut V {
        if let SmallMap::Few(v) = self
            && v.len() == FEW_MAX
            && !v.iter().any(|(k, _)| k.borrow() == key)
        {
            let map: HashMap<K, V> = std::mem::take(v).into_iter().collect();
            *self = SmallMap::Many(Box::new(map));
        }
        match self {
            SmallMap::Few(v) => {
                let i = match v.iter().position(|(k, _)| k.borrow() == key) {
                    Some(i) => i,
                    None => {
                        // Exact growth: these vectors are short, and most stay at one entry.
                        v.reserve_exact(1);
                        v.push((make_key(), value()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            SmallMap::Many(m) => {
                if !m.contains_key(key) {
                    m.insert(make_key(), value());
                }
                m.get_mut(key).expect("inserted above")
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        match self {
            SmallMap::Few(v) => {
                let i = v.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, value) = v.swap_remove(i);
                if v.is_empty() {
                    *v = Vec::new();
                }
                Some(value)
            }
            SmallMap::Many(m) => {
                let value = m.remove(key);
                if m.is_empty() {
                    *self = SmallMap::default();
                }
                value
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            SmallMap::Few(v) => v.len(),
            SmallMap::Many(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
            SmallMap::Few(v) => v.iter().for_each(|(k, x)| f(k, x)),
            SmallMap::Many(m) => m.iter().for_each(|(k, x)| f(k, x)),
        }
    }

    pub fn iter(&self) -> Iter<'_, K, V> {
        match self {
            SmallMap::Few(v) => Iter::Few(v.iter()),
            SmallMap::Many(m) => Iter::Many(m.iter()),
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Takes every value out, leaving the map empty (for dropping trees without recursion).
    pub fn drain_values(&mut self) -> Vec<V> {
        match std::mem::take(self) {
            SmallMap::Few(v) => v.into_iter().map(|(_, x)| x).collect(),
            SmallMap::Many(m) => m.into_values().collect(),
        }
    }
}

pub(super) enum Iter<'a, K, V> {
    Few(std::slice::Iter<'a, (K, V)>),
    Many(std::collections::hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(it) => it.next().map(|(k, v)| (k, v)),
            Iter::Many(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_map_and_back() {
        let mut m: SmallMap<Box<str>, usize> = SmallMap::default();
        for i in 0..100 {
            *m.get_or_insert_with(&i.to_string(), || i.to_string().into(), || 0) += i;
        }
        assert!(matches!(m, SmallMap::Many(_)));
        assert_eq!(m.len(), 100);
        assert_eq!(m.get("42"), Some(&42));
        *m.get_or_insert_with("42", || "42".into(), || 0) += 1;
        assert_eq!(m.get("42"), Some(&43));
        for i in 0..100 {
            assert!(m.remove(&i.to_string()).is_some());
        }
        assert!(m.is_empty());
        assert!(matches!(m, SmallMap::Few(_)));
        assert_eq!(m.remove("x"), None);
    }
}
