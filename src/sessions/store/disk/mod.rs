//! The embedded store on disk (`[storage] backend = "disk"`), on fjall (an LSM-tree store in
//! pure Rust; bench/store-eval/README.md has the measurements that chose it over redb).
//!
//! Two databases under `[storage] path`, so damage to one loses as little as possible:
//! `sessions/` (session records, subscriptions, inbound QoS 2 ids, retained messages, revoked
//! users: small, rarely written) and `queues/` (queue entries, in-flight records, message
//! bodies: the hot part). If `queues/` cannot be opened, brokk still knows which sessions
//! existed and ends each of them with `lost_messages`.
//!
//! One committer thread takes every batch submitted since its last commit and writes them
//! together, one fsync for all (group commit), then completes their commits: a QoS 1/2
//! acknowledgement waits for the fsync of the batch that holds its message, and throughput
//! does not fall to one message per fsync. Reads of stored queues go through the same thread,
//! after every batch submitted before them.
//!
//! Every commit also writes a counter, and the last durable value goes to `commits` beside
//! the databases about once a second: a store whose counter is behind that file at start lost
//! acknowledged writes (a journal cut short), which a per-session sequence number cannot
//! show; every stored session then ends with `lost_messages`.

pub(crate) mod convert;
mod keys;
mod recover;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Change, Commit, Load, LoadedQueue, Recovered, SessionStore, StoreError};

pub use recover::Outcome;

/// How commits reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// fsync before a commit completes: acknowledged means on disk.
    Always,
    /// The OS writes when it likes: survives `kill -9`, not a power cut.
    Never,
}

#[derive(Clone)]
pub(crate) struct Keyspaces {
    sessions: fjall::Keyspace,
    subscriptions: fjall::Keyspace,
    inbound_qos2: fjall::Keyspace,
    retained: fjall::Keyspace,
    revoked: fjall::Keyspace,
    meta_sessions: fjall::Keyspace,
    queue: fjall::Keyspace,
    inflight: fjall::Keyspace,
    messages: fjall::Keyspace,
    meta_queues: fjall::Keyspace,
}

/// The two databases, opened.
pub(crate) struct Databases {
    sessions: fjall::Database,
    queues: fjall::Database,
    ks: Keyspaces,
}

enum Job {
    Batch(Vec<Change>, oneshot::Sender<Result<(), StoreError>>),
    Load {
        client_id: Arc<str>,
        from: u64,
        limit: usize,
        reply: oneshot::Sender<Result<LoadedQueue, StoreError>>,
    },
    Recover(oneshot::Sender<Result<Recovered, StoreError>>),
}

pub struct DiskStore {
    sync: Sync,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

const COMMITS_FILE: &str = "commits";
/// Batches committed together at most (they arrive while the previous fsync runs).
const MAX_GROUP: usize = 4096;

impl DiskStore {
    /// Opens (or creates) the store under `path`. A database that cannot be opened is moved
    /// aside (`NAME.damaged-UNIX_MS`) and started empty; what that loses, recovery reports.
    pub fn open(path: &Path, sync: Sync) -> Result<DiskStore, StoreError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        let (dbs, outcome) = recover::open(path)?;
        let (tx, rx) = mpsc::channel();
        let committer_path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("brokk-store".to_string())
            .spawn(move || committer(dbs, outcome, sync, committer_path, rx))
            .map_err(|e| StoreError::Io(format!("cannot start the store thread: {e}")))?;
        Ok(DiskStore {
            sync,
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, job: Job) -> bool {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    /// Commits what was submitted and stops the committer (also done on drop).
    pub fn shut(&self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take()
            && thread.join().is_err()
        {
            tracing::error!("the store thread panicked");
        }
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.shut();
    }
}

impl SessionStore for DiskStore {
    fn durable(&self) -> bool {
        true
    }

    fn waits(&self) -> bool {
        self.sync == Sync::Always
    }

    fn submit(&self, changes: Vec<Change>) -> Commit {
        if changes.is_empty() {
            return Commit::done();
        }
        let (commit, tx) = Commit::pending();
        if !self.send(Job::Batch(changes, tx)) {
            // The committer is gone (stopping): the commit fails rather than hangs.
            return commit;
        }
        commit
    }

    fn load(&self, client_id: Arc<str>, from: u64, limit: usize) -> Load {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Load {
            client_id,
            from,
            limit,
            reply,
        });
        Load(rx)
    }

    fn close(&self) {
        self.shut();
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Job::Recover(reply)) {
            return Err(StoreError::Closed);
        }
        rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }
}

/// The committer thread: groups batches, writes them, completes their commits; serves reads
/// in order with the writes.
fn committer(
    dbs: Databases,
    outcome: Outcome,
    sync: Sync,
    path: PathBuf,
    jobs: mpsc::Receiver<Job>,
) {
    let mut state = recover::State::new(dbs, outcome, path.join(COMMITS_FILE));
    let mode = match sync {
        Sync::Always => Some(fjall::PersistMode::SyncAll),
        Sync::Never => None,
    };
    let fsync = metrics::histogram!(crate::metrics::STORE_FSYNC_SECONDS);
    let mut last_mark = Instant::now();
    while let Ok(first) = jobs.recv() {
        let mut batches = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Batch(changes, reply) => batches.push((changes, reply)),
                Job::Load {
                    client_id,
                    from,
                    limit,
                    reply,
                } => {
                    // Reads see every batch submitted before them.
                    state.commit(std::mem::take(&mut batches), mode, &fsync);
                    drop(reply.send(state.load(&client_id, from, limit)));
                }
                Job::Recover(reply) => {
                    state.commit(std::mem::take(&mut batches), mode, &fsync);
                    drop(reply.send(state.recover()));
                }
            }
            if batches.len() < MAX_GROUP {
                next = jobs.try_recv().ok();
            }
        }
        state.commit(batches, mode, &fsync);
        if last_mark.elapsed() >= Duration::from_secs(1) {
            state.mark_durable();
            last_mark = Instant::now();
        }
    }
    state.commit(Vec::new(), mode, &fsync);
    state.mark_durable();
}

#[cfg(test)]
mod tests;
