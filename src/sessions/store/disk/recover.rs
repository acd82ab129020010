//! Opening the databases, the committer's state, reading stored queues back, and recovery at
//! start: what can be read is restored, what cannot is reported (never a silent resume).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::oneshot;

use super::super::record::{
    self, InboundQos2Record, InflightRecord, InflightState, MessageRecord, QueueEntryRecord,
    RetainedRecord, RevokedUserRecord, SubscriptionRecord,
};
use super::super::{
    Change, LoadedQueue, QueueSpan, Recovered, RecoveredSession, StoreError, StoredDelivery,
};
use super::writer::{Head, Writer, Writes};
use super::{Databases, Keyspaces, convert, keys};

/// What opening found wrong with the databases.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `sessions/` could not be opened and was started empty: nothing stored can be restored.
    pub sessions_damaged: Option<String>,
    /// `queues/` could not be opened and was started empty: every stored session lost its queue.
    pub queues_damaged: Option<String>,
}

fn io(e: fjall::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn open_db(path: &Path) -> Result<(fjall::Database, Option<String>), StoreError> {
    let open = || {
        fjall::Database::builder(path)
            .max_journaling_size(64 << 20)
            .worker_threads(1)
            .cache_size(16 << 20)
            .open()
    };
    match open() {
        Ok(db) => Ok((db, None)),
        Err(error) => {
            let aside =
                path.with_extension(format!("damaged-{}", convert::unix_ms(SystemTime::now())));
            tracing::error!(store = %path.display(), %error, moved_to = %aside.display(), "store database damaged: moved aside, starting it empty");
            std::fs::rename(path, &aside)
                .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
            let db = open().map_err(io)?;
            Ok((db, Some(error.to_string())))
        }
    }
}

fn keyspace(
    db: &fjall::Database,
    name: &str,
    memtable: u64,
) -> Result<fjall::Keyspace, StoreError> {
    db.keyspace(name, || {
        fjall::KeyspaceCreateOptions::default().max_memtable_size(memtable)
    })
    .map_err(io)
}

/// Opens both databases under `path` (moving a damaged one aside).
pub fn open(path: &Path) -> Result<(Databases, Outcome), StoreError> {
    let (sessions, sessions_damaged) = open_db(&path.join("sessions"))?;
    let (queues, queues_damaged) = open_db(&path.join("queues"))?;
    let small = 4 << 20;
    let hot = 16 << 20;
    let ks = Keyspaces {
        sessions: keyspace(&sessions, "sessions", small)?,
        subscriptions: keyspace(&sessions, "subscriptions", small)?,
        inbound_qos2: keyspace(&sessions, "inbound_qos2", small)?,
        retained: keyspace(&sessions, "retained", small)?,
        revoked: keyspace(&sessions, "revoked", small)?,
        meta_sessions: keyspace(&sessions, "meta", small)?,
        queue: keyspace(&queues, "queue", hot)?,
        inflight: keyspace(&queues, "inflight", hot)?,
        messages: keyspace(&queues, "messages", hot)?,
        meta_queues: keyspace(&queues, "meta", small)?,
    };
    let outcome = Outcome {
        sessions_damaged,
        queues_damaged,
    };
    Ok((
        Databases {
            sessions,
            queues,
            ks,
        },
        outcome,
    ))
}

const COUNTER_KEY: &[u8] = b"commit";

/// The committer thread's state.
pub struct State {
    dbs: Databases,
    writer: Writer,
    outcome: Outcome,
    commits_file: PathBuf,
    /// Commits so far, per database (written with each commit that touches it).
    counters: [u64; 2],
    /// What `commits_file` says was durable.
    marked: [u64; 2],
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

impl State {
    pub fn new(dbs: Databases, outcome: Outcome, commits_file: PathBuf) -> State {
        let read = |ks: &fjall::Keyspace| {
            ks.get(COUNTER_KEY)
                .ok()
                .flatten()
                .and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?)))
                .unwrap_or(0)
        };
        let counters = [read(&dbs.ks.meta_sessions), read(&dbs.ks.meta_queues)];
        let writer = Writer::new(dbs.ks.clone());
        State {
            dbs,
            writer,
            outcome,
            commits_file,
            counters,
            marked: [0, 0],
        }
    }

    /// Writes a group of batches, one batch (and fsync) per database touched, and completes
    /// their commits.
    pub fn commit(
        &mut self,
        batches: Vec<(Vec<Change>, Reply)>,
        mode: Option<fjall::PersistMode>,
        fsync: &metrics::Histogram,
    ) {
        if batches.is_empty() {
            return;
        }
        self.writer.begin();
        let mut writes = Writes::default();
        let mut result = Ok(());
        let mut replies = Vec::with_capacity(batches.len());
        for (changes, reply) in batches {
            for change in changes {
                if let Err(error) = self.writer.apply(change, &mut writes) {
                    tracing::error!(%error, "a change could not be stored");
                    result = Err(error.to_string());
                }
            }
            replies.push(reply);
        }
        let started = Instant::now();
        if let Err(error) = self.write(writes, mode) {
            tracing::error!(%error, "store commit failed");
            result = Err(error.to_string());
        }
        fsync.record(started.elapsed().as_secs_f64());
        metrics::gauge!(crate::metrics::STORE_MESSAGES).set(self.writer.refcounts.len() as f64);
        for reply in replies {
            drop(reply.send(result.clone().map_err(StoreError::Io)));
        }
    }

    fn write(
        &mut self,
        writes: Writes,
        mode: Option<fjall::PersistMode>,
    ) -> Result<(), StoreError> {
        // Sessions first: a crash between the two leaves at worst queue entries without a
        // session (removed at recovery), never a session whose subscription was not stored
        // while its messages were.
        let parts = [
            (
                &self.dbs.sessions,
                &self.dbs.ks.meta_sessions,
                writes.sessions,
                0,
            ),
            (&self.dbs.queues, &self.dbs.ks.meta_queues, writes.queues, 1),
        ];
        for (db, meta, ops, i) in parts {
            if ops.is_empty() {
                continue;
            }
            let mut batch = db.batch().durability(mode);
            for (ks, key, value) in ops {
                match value {
                    Some(value) => batch.insert(&ks, key, value),
                    None => batch.remove(&ks, key),
                }
            }
            self.counters[i] += 1;
            batch.insert(meta, COUNTER_KEY, self.counters[i].to_be_bytes().to_vec());
            batch.commit().map_err(io)?;
        }
        Ok(())
    }

    /// Records the committed counters beside the databases (fsynced): a later start that finds
    /// a database behind them knows it lost acknowledged writes.
    pub fn mark_durable(&mut self) {
        if self.marked == self.counters {
            return;
        }
        let text = format!("{} {}\n", self.counters[0], self.counters[1]);
        let tmp = self.commits_file.with_extension("tmp");
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            use std::io::Write;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
        match written.and_then(|()| std::fs::rename(&tmp, &self.commits_file)) {
            Ok(()) => self.marked = self.counters,
            Err(error) => {
                tracing::warn!(%error, file = %self.commits_file.display(), "commit mark not written")
            }
        }
        if let Some(dir) = self.commits_file.parent() {
            metrics::gauge!(crate::metrics::STORE_BYTES).set(dir_size(dir) as f64);
        }
    }

    fn marked_on_disk(&self) -> [u64; 2] {
        let text = std::fs::read_to_string(&self.commits_file).unwrap_or_default();
        let mut parts = text
            .split_whitespace()
            .map(|p| p.parse::<u64>().unwrap_or(0));
        [parts.next().unwrap_or(0), parts.next().unwrap_or(0)]
    }

    /// Reads up to `limit` entries of a stored queue from `from` on, checking that they follow
    /// one another (a hole is a loss) and that their messages are there.
    pub fn load(
        &self,
        client_id: &Arc<str>,
        from: u64,
        limit: usize,
    ) -> Result<LoadedQueue, StoreError> {
        let ks = &self.dbs.ks;
        let first = self
            .writer
            .heads
            .get(client_id)
            .map_or(from, |h| h.first.max(from));
        let end = keys::prefix_end(&keys::client(client_id));
        let mut loaded = LoadedQueue {
            deliveries: Vec::new(),
            next: from,
        };
        let mut expected = first;
        let mut bodies: HashMap<u64, Arc<crate::message::Message>> = HashMap::new();
        for item in ks.queue.range(keys::entry(client_id, first)..end) {
            if loaded.deliveries.len() >= limit {
                break;
            }
            let (key, value) = item
                .into_inner()
                .map_err(|e| lost(client_id, expected, e))?;
            let seq = keys::split(&key)
                .and_then(|(_, rest)| keys::seq_of(rest))
                .ok_or_else(|| lost(client_id, expected, "a key that is not a queue entry"))?;
            if seq != expected {
                return Err(StoreError::Lost(format!(
                    "{}: entries {expected}..{seq} are missing",
                    crate::logsafe::LogId(client_id)
                )));
            }
            expected = seq + 1;
            loaded.next = expected;
            let entry: QueueEntryRecord =
                record::decode(&value).map_err(|e| lost(client_id, seq, e))?;
            let inflight = match ks.inflight.get(&key).map_err(|e| lost(client_id, seq, e))? {
                Some(bytes) => {
                    let r: InflightRecord =
                        record::decode(&bytes).map_err(|e| lost(client_id, seq, e))?;
                    match convert::outbound_state(r.state) {
                        Some(state) => Some((r.packet_id, state)),
                        None => continue,
                    }
                }
                None => None,
            };
            let message = match bodies.get(&entry.message_id) {
                Some(m) => m.clone(),
                None => {
                    let bytes = ks
                        .messages
                        .get(keys::message(entry.message_id))
                        .map_err(|e| lost(client_id, seq, e))?
                        .ok_or_else(|| lost(client_id, seq, "its message is missing"))?;
                    let r: MessageRecord =
                        record::decode(&bytes).map_err(|e| lost(client_id, seq, e))?;
                    let m = convert::message(Some(entry.message_id), r);
                    bodies.insert(entry.message_id, m.clone());
                    m
                }
            };
            loaded.deliveries.push(StoredDelivery {
                seq,
                message,
                qos: convert::qos(entry.qos),
                retain: entry.retain,
                subscription_identifiers: entry.subscription_identifiers,
                inflight,
            });
        }
        Ok(loaded)
    }

    /// Reads everything back at start; ends (and deletes) what cannot be restored whole.
    pub fn recover(&mut self) -> Result<Recovered, StoreError> {
        let started = Instant::now();
        let mut scan = Scan::default();
        if let Some(why) = &self.outcome.sessions_damaged {
            tracing::error!(why, "stored sessions could not be read: none are restored");
        }
        self.scan_sessions(&mut scan)?;
        self.scan_queues(&mut scan)?;
        if let Some(why) = &self.outcome.queues_damaged {
            let ids: Vec<Arc<str>> = scan.sessions.keys().cloned().collect();
            for client_id in &ids {
                scan.lose(client_id, format!("the queue store was damaged ({why})"));
            }
        }
        let marked = self.marked_on_disk();
        if self.counters[0] < marked[0] || self.counters[1] < marked[1] {
            let why = format!(
                "the store is behind its last commit mark ({:?} < {marked:?}): acknowledged writes were lost",
                self.counters
            );
            let ids: Vec<Arc<str>> = scan.sessions.keys().cloned().collect();
            for client_id in &ids {
                scan.lose(client_id, why.clone());
            }
        }
        let recovered = self.finish(scan)?;
        metrics::gauge!(crate::metrics::STORE_RECOVERY_SECONDS)
            .set(started.elapsed().as_secs_f64());
        Ok(recovered)
    }
}

fn lost(client_id: &str, seq: u64, why: impl std::fmt::Display) -> StoreError {
    StoreError::Lost(format!(
        "{}: entry {seq}: {why}",
        crate::logsafe::LogId(client_id)
    ))
}

/// What recovery reads, before it decides.
#[derive(Default)]
struct Scan {
    sessions: BTreeMap<Arc<str>, RecoveredSession>,
    lost: BTreeMap<Arc<str>, String>,
    /// Client ids that have stored data but no (readable) session record.
    orphans: HashSet<Arc<str>>,
    retained: Vec<Arc<crate::message::Message>>,
    revoked: Vec<Arc<str>>,
}

impl Scan {
    fn lose(&mut self, client_id: &Arc<str>, why: String) {
        self.lost.entry(client_id.clone()).or_insert(why);
    }

    /// The session a key belongs to, or an orphan.
    fn owner(&mut self, key: &[u8]) -> Option<Arc<str>> {
        let (id, _) = keys::split(key)?;
        match self.sessions.get_key_value(id) {
            Some((k, _)) => Some(k.clone()),
            None => {
                if !self.lost.contains_key(id) {
                    self.orphans.insert(Arc::from(id));
                }
                None
            }
        }
    }
}

impl State {
    fn scan_sessions(&mut self, scan: &mut Scan) -> Result<(), StoreError> {
        let ks = self.dbs.ks.clone();
        for item in ks.sessions.iter() {
            let (key, value) = item.into_inner().map_err(io)?;
            let Some((id, _)) = keys::split(&key) else {
                continue;
            };
            let client_id: Arc<str> = Arc::from(id);
            let parsed = record::decode::<record::SessionRecord>(&value)
                .map_err(|e| e.to_string())
                .and_then(|r| convert::session(r).map_err(|e| e.to_string()));
            match parsed {
                Ok(record) => {
                    scan.sessions.insert(
                        client_id.clone(),
                        RecoveredSession {
                            client_id,
                            record,
                            subscriptions: Vec::new(),
                            inbound_qos2: Vec::new(),
                            queue: QueueSpan::default(),
                        },
                    );
                }
                Err(why) => scan.lose(&client_id, format!("its session record is damaged: {why}")),
            }
        }
        for item in ks.subscriptions.iter() {
            let (key, value) = item.into_inner().map_err(io)?;
            let Some(owner) = scan.owner(&key) else {
                continue;
            };
            match record::decode::<SubscriptionRecord>(&value) {
                Ok(r) => {
                    if let Some(s) = scan.sessions.get_mut(&owner) {
                        s.subscriptions.push(convert::subscription(r));
                    }
                }
                Err(e) => scan.lose(&owner, format!("a subscription is damaged: {e}")),
            }
        }
        for item in ks.inbound_qos2.iter() {
            let (key, value) = item.into_inner().map_err(io)?;
            let Some(owner) = scan.owner(&key) else {
                continue;
            };
            match record::decode::<InboundQos2Record>(&value) {
                Ok(r) => {
                    if let Some(s) = scan.sessions.get_mut(&owner) {
                        s.inbound_qos2.push(r.packet_id);
                    }
                }
                Err(e) => scan.lose(&owner, format!("an inbound QoS 2 id is damaged: {e}")),
            }
        }
        for item in ks.retained.iter() {
            let (_, value) = item.into_inner().map_err(io)?;
            match record::decode::<RetainedRecord>(&value) {
                Ok(r) => scan.retained.push(convert::message(
                    None,
                    MessageRecord {
                        topic: r.topic,
                        payload: r.payload,
                        qos: r.qos,
                        retain: true,
                        properties: r.properties,
                        expires_at_ms: r.expires_at_ms,
                    },
                )),
                Err(e) => {
                    tracing::error!(error = %e, "a retained message is damaged and is not restored")
                }
            }
        }
        for item in ks.revoked.iter() {
            let (_, value) = item.into_inner().map_err(io)?;
            match record::decode::<RevokedUserRecord>(&value) {
                Ok(r) => scan.revoked.push(Arc::from(r.username)),
                Err(e) => {
                    tracing::error!(error = %e, "a revoked user is damaged and is not restored")
                }
            }
        }
        Ok(())
    }

    /// Message sizes and ids, then every queue entry in key order: contiguity per session,
    /// messages present, in-flight marks.
    fn scan_queues(&mut self, scan: &mut Scan) -> Result<(), StoreError> {
        let sizes = self.scan_messages()?;
        let done = self.scan_done(scan)?;
        self.scan_entries(scan, &sizes)?;
        self.place_heads(scan, done);
        Ok(())
    }

    /// Every stored message body's cost in a queue's byte count, by id; the next message id
    /// follows the largest one found.
    fn scan_messages(&mut self) -> Result<HashMap<u64, usize>, StoreError> {
        let mut sizes: HashMap<u64, usize> = HashMap::new();
        let mut max_id = 0;
        for item in self.dbs.ks.messages.iter() {
            let (key, value) = item.into_inner().map_err(io)?;
            let Ok(id) = <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes) else {
                continue;
            };
            max_id = max_id.max(id);
            if let Ok(r) = record::decode::<MessageRecord>(&value) {
                sizes.insert(
                    id,
                    r.payload.len() + r.topic.len() + r.properties.len() + 96,
                );
            }
        }
        self.writer.next_message_id = max_id + 1;
        Ok(sizes)
    }

    /// The entries acknowledged out of order (marked done until those before them are), by
    /// session.
    fn scan_done(&mut self, scan: &mut Scan) -> Result<HashMap<Arc<str>, Vec<u64>>, StoreError> {
        let mut done: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        for item in self.dbs.ks.inflight.iter() {
            let (key, value) = item.into_inner().map_err(io)?;
            let Some(owner) = scan.owner(&key) else {
                continue;
            };
            if let Ok(r) = record::decode::<InflightRecord>(&value)
                && r.state == InflightState::Done
            {
                done.entry(owner).or_default().push(r.seq);
            }
        }
        Ok(done)
    }

    /// Walks every queue entry in order: a hole in a session's sequence, a damaged entry or a
    /// missing message loses that session; the rest count into its queue span.
    fn scan_entries(
        &mut self,
        scan: &mut Scan,
        sizes: &HashMap<u64, usize>,
    ) -> Result<(), StoreError> {
        let mut expected: HashMap<Arc<str>, u64> = HashMap::new();
        for item in self.dbs.ks.queue.iter() {
            let (key, value) = item.into_inner().map_err(io)?;
            let Some(owner) = scan.owner(&key) else {
                continue;
            };
            let Some(seq) = keys::split(&key).and_then(|(_, rest)| keys::seq_of(rest)) else {
                continue;
            };
            if let Some(want) = expected.get(&owner)
                && *want != seq
            {
                scan.lose(&owner, format!("queue entries {want}..{seq} are missing"));
            }
            expected.insert(owner.clone(), seq + 1);
            let entry = match record::decode::<QueueEntryRecord>(&value) {
                Ok(entry) => entry,
                Err(e) => {
                    scan.lose(&owner, format!("queue entry {seq} is damaged: {e}"));
                    continue;
                }
            };
            let Some(cost) = sizes.get(&entry.message_id).copied() else {
                scan.lose(
                    &owner,
                    format!("the message of queue entry {seq} is missing or damaged"),
                );
                continue;
            };
            *self.writer.refcounts.entry(entry.message_id).or_insert(0) += 1;
            if let Some(session) = scan.sessions.get_mut(&owner) {
                let span = &mut session.queue;
                if span.next == 0 {
                    span.first = seq;
                }
                span.next = seq + 1;
                span.pending += 1;
                span.bytes += cost;
            }
        }
        Ok(())
    }

    /// The writer's view of each stored queue's head, with the entries already done.
    fn place_heads(&mut self, scan: &mut Scan, done: HashMap<Arc<str>, Vec<u64>>) {
        for (owner, seqs) in done {
            if let Some(session) = scan.sessions.get_mut(&owner) {
                session.queue.pending = session.queue.pending.saturating_sub(seqs.len());
                if session.queue.next > 0 {
                    self.writer.heads.insert(
                        owner.clone(),
                        Head {
                            first: session.queue.first,
                            done: seqs.into_iter().collect(),
                        },
                    );
                }
            }
        }
        for session in scan.sessions.values() {
            if session.queue.next > 0 && !self.writer.heads.contains_key(&session.client_id) {
                self.writer.heads.insert(
                    session.client_id.clone(),
                    Head {
                        first: session.queue.first,
                        done: Default::default(),
                    },
                );
            }
        }
    }

    /// Deletes what is lost or orphaned, and hands back the rest.
    fn finish(&mut self, scan: Scan) -> Result<Recovered, StoreError> {
        let Scan {
            mut sessions,
            lost,
            orphans,
            retained,
            revoked,
        } = scan;
        let mut gone = Vec::new();
        for (client_id, why) in &lost {
            tracing::error!(client_id = %crate::logsafe::LogId(client_id), why, "stored session lost: it ends with lost_messages");
            sessions.remove(client_id);
            gone.push(Change::SessionGone {
                client_id: client_id.clone(),
            });
        }
        for client_id in orphans {
            tracing::warn!(client_id = %crate::logsafe::LogId(&client_id), "stored data without a session removed");
            gone.push(Change::SessionGone { client_id });
        }
        if !gone.is_empty() {
            let (reply, _) = oneshot::channel();
            let hist = metrics::Histogram::noop();
            self.commit(
                vec![(gone, reply)],
                Some(fjall::PersistMode::SyncAll),
                &hist,
            );
        }
        self.mark_durable();
        let on_disk: usize = self.writer.refcounts.len();
        metrics::gauge!(crate::metrics::STORE_MESSAGES).set(on_disk as f64);
        Ok(Recovered {
            sessions: sessions.into_values().collect(),
            retained,
            revoked,
            lost: lost.into_iter().collect(),
        })
    }
}

/// Bytes of the files under `dir` (a loop, not recursion).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}
