//! The in-memory store: sessions live in the session table and nowhere else, so nothing
//! survives a restart (`[storage] backend = "memory"`).

use std::sync::Arc;

use super::{Change, Commit, Load, LoadedQueue, Recovered, SessionStore, StoreError};

#[derive(Debug, Default)]
pub struct MemoryStore;

impl SessionStore for MemoryStore {
    fn durable(&self) -> bool {
        false
    }

    fn submit(&self, _changes: Vec<Change>) -> Commit {
        Commit::done()
    }

    fn load(&self, _client_id: Arc<str>, _from: u64, _limit: usize) -> Load {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Nothing is ever stored, so nothing is ever on disk to read.
        drop(tx.send(Ok(LoadedQueue::default())));
        Load(rx)
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        Ok(Recovered::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commits_at_once_and_recovers_nothing() {
        let store = MemoryStore;
        assert!(!store.durable());
        let commit = store.submit(Vec::new());
        assert!(commit.is_done());
        commit.await.expect("done");
        let recovered = store.recover().expect("recover");
        assert!(recovered.sessions.is_empty() && recovered.lost.is_empty());
    }
}
