//! The replicated session store: on a cluster node, every change to a persistent session also
//! goes to the `brokk_sessions` JetStream KV bucket (a file stream replicated on up to three
//! NATS servers), and a commit resolves only when JetStream has acknowledged it. A QoS 1/2
//! acknowledgement waits for its commit, so an acknowledged message queued for a persistent
//! session here is on the NATS cluster before its publisher hears of it; when this node dies,
//! the node that takes the session over reads it back ([`read_session`]).
//!
//! Keys, under the session's key `<k>` (its client id in base64url, see `wire::kv_key`):
//!
//! | key | value |
//! |---|---|
//! | `<k>.s` | the session's record (expiry, will, user, protocol version) |
//! | `<k>.sub.<filter in base64url>` | a subscription |
//! | `<k>.m.<seq>.q` | a queued message (its body, delivery QoS, RETAIN, subscription ids) |
//! | `<k>.m.<seq>.f` | that message's packet id and state while it is in flight |
//! | `<k>.i.<packet id>` | an inbound QoS 2 packet id awaiting PUBREL |
//!
//! A message done with is purged (its subjects removed from the stream, no tombstone), as is
//! everything of a session that ends. The node's own store (in memory, or on disk) still takes
//! every change too: this store wraps it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::kv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::message::Delivery;
use crate::sessions::store::disk::convert;
use crate::sessions::store::record::{self, SubscriptionRecord};
use crate::sessions::store::{
    Change, Commit, Load, LoadedQueue, Recovered, SessionStore, StoreError, StoredDelivery,
};
use crate::sessions::{Handover, OutboundState};

use super::wire;

/// The bucket that holds the cluster's persistent sessions.
pub const SESSIONS: &str = "brokk_sessions";
/// How long a read of one session's keys may take before it is given up.
const SCAN_TIMEOUT: Duration = Duration::from_secs(10);

enum Job {
    Batch(Vec<Change>, oneshot::Sender<Result<(), StoreError>>),
    Load {
        client_id: Arc<str>,
        from: u64,
        limit: usize,
        reply: oneshot::Sender<Result<LoadedQueue, StoreError>>,
    },
}

/// The node's store, with every session change replicated to JetStream.
pub struct ReplicaStore {
    inner: Arc<dyn SessionStore>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Until the cluster connects: the jobs submitted meanwhile wait here.
    pending: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
}

impl ReplicaStore {
    pub fn new(inner: Arc<dyn SessionStore>) -> Arc<ReplicaStore> {
        let (jobs, pending) = mpsc::unbounded_channel();
        Arc::new(ReplicaStore {
            inner,
            jobs,
            pending: Mutex::new(Some(pending)),
        })
    }

    /// Starts writing to `bucket` (once the cluster is connected); later calls do nothing.
    pub(super) fn start(
        &self,
        bucket: kv::Store,
        client: async_nats::Client,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let jobs = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        Some(tokio::spawn(writer(bucket, client, jobs)))
    }
}

impl SessionStore for ReplicaStore {
    fn durable(&self) -> bool {
        true
    }

    fn waits(&self) -> bool {
        true
    }

    fn submit(&self, changes: Vec<Change>) -> Commit {
        let local = self
            .inner
            .durable()
            .then(|| self.inner.submit(changes.clone()));
        let (replicated, done) = Commit::pending();
        // A send that fails (the writer is gone) drops `done`: the commit fails.
        let _ = self.jobs.send(Job::Batch(changes, done));
        match local {
            Some(local) => local.and(replicated),
            None => replicated,
        }
    }

    fn load(&self, client_id: Arc<str>, from: u64, limit: usize) -> Load {
        if self.inner.durable() {
            return self.inner.load(client_id, from, limit);
        }
        let (reply, rx) = oneshot::channel();
        let _ = self.jobs.send(Job::Load {
            client_id,
            from,
            limit,
            reply,
        });
        Load(rx)
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        if self.inner.durable() {
            self.inner.recover()
        } else {
            Ok(Recovered::default())
        }
    }

    fn close(&self) {
        self.inner.close();
    }
}

/// Applies batches in the order they were submitted; reads see every batch before them.
async fn writer(
    bucket: kv::Store,
    client: async_nats::Client,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Batch(changes, done) => {
                let mut result = Ok(());
                for change in changes {
                    if let Err(error) = apply(&bucket, change).await {
                        result = Err(error);
                    }
                }
                if let Err(error) = &result {
                    tracing::error!(%error, "cluster: a session change was not replicated");
                }
                let _ = done.send(result);
            }
            Job::Load {
                client_id,
                from,
                limit,
                reply,
            } => {
                let _ = reply.send(load(&bucket, &client, &client_id, from, limit).await);
            }
        }
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("JetStream: {e}"))
}

fn damaged(e: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged(format!("replicated session: {e}"))
}

fn entry_key(client_id: &str, seq: u64, part: &str) -> String {
    format!("{}.m.{seq}.{part}", wire::kv_key(client_id))
}

async fn put(bucket: &kv::Store, key: String, value: Vec<u8>) -> Result<(), StoreError> {
    bucket.put(key, Bytes::from(value)).await.map_err(io)?;
    Ok(())
}

/// Removes every message of the keys `filter` matches (no tombstone is left).
async fn purge(bucket: &kv::Store, filter: String) -> Result<(), StoreError> {
    bucket
        .stream
        .purge()
        .filter(format!("$KV.{SESSIONS}.{filter}"))
        .await
        .map_err(io)?;
    Ok(())
}

async fn apply(bucket: &kv::Store, change: Change) -> Result<(), StoreError> {
    match change {
        Change::Session { client_id, record } => {
            let r = convert::session_record(&client_id, &record)?;
            let bytes = record::encode(&r).map_err(damaged)?;
            put(bucket, format!("{}.s", wire::kv_key(&client_id)), bytes).await
        }
        Change::SessionGone { client_id } => {
            purge(bucket, format!("{}.>", wire::kv_key(&client_id))).await
        }
        Change::Subscribed {
            client_id,
            filter,
            options,
        } => {
            let r = convert::subscription_record(&filter, &options);
            let bytes = record::encode(&r).map_err(damaged)?;
            let key = format!("{}.sub.{}", wire::kv_key(&client_id), B64.encode(&filter));
            put(bucket, key, bytes).await
        }
        Change::Unsubscribed { client_id, filter } => {
            let key = format!("{}.sub.{}", wire::kv_key(&client_id), B64.encode(&filter));
            purge(bucket, key).await
        }
        Change::Queued {
            client_id,
            seq,
            message,
            qos,
            retain,
            subscription_identifiers,
        } => {
            let delivery = Delivery::new(message, qos, retain, subscription_identifiers);
            let bytes = wire::encode_delivery(&delivery).map_err(damaged)?;
            put(bucket, entry_key(&client_id, seq, "q"), bytes).await
        }
        Change::InFlight {
            client_id,
            seq,
            packet_id,
            state,
        } => {
            let value = format!("{packet_id} {}", wire::outbound_code(state));
            put(bucket, entry_key(&client_id, seq, "f"), value.into_bytes()).await
        }
        Change::Delivered { client_id, seq } => {
            purge(bucket, entry_key(&client_id, seq, ">")).await
        }
        Change::InboundQos2 {
            client_id,
            packet_id,
            pending,
        } => {
            let key = format!("{}.i.{packet_id}", wire::kv_key(&client_id));
            if pending {
                put(bucket, key, Vec::new()).await
            } else {
                purge(bucket, key).await
            }
        }
        // Retained messages have their own bucket (the cluster's); revoked users stay with
        // the node's own store; a session that left is stored by the node it went to.
        Change::Retained { .. } | Change::Revoked { .. } | Change::SessionLeft { .. } => Ok(()),
    }
}

/// The current value of every key under `prefix` (`<k>.` or `<k>.m.`), deleted ones left out.
async fn scan(
    bucket: &kv::Store,
    client: &async_nats::Client,
    prefix: &str,
) -> Result<Vec<(String, Bytes)>, StoreError> {
    let subject_prefix = format!("$KV.{SESSIONS}.");
    let consumer = bucket
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{subject_prefix}{prefix}>"),
            replay_policy: ReplayPolicy::Instant,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(io)?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(io)?;
    let read = async {
        while let Some(message) = messages.next().await {
            let message = message.map_err(io)?;
            let pending = message.info().map(|i| i.pending).unwrap_or(0);
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() != "PUT");
            if !deleted && let Some(key) = message.subject.strip_prefix(subject_prefix.as_str()) {
                out.push((key.to_string(), message.payload.clone()));
            }
            if pending == 0 {
                break;
            }
        }
        Ok::<(), StoreError>(())
    };
    tokio::time::timeout(SCAN_TIMEOUT, read)
        .await
        .map_err(|_| io("reading a session's keys timed out"))??;
    Ok(out)
}

/// A stored queue's entries, by sequence number: the message, and its in-flight state.
type Entries = std::collections::BTreeMap<u64, (Option<Delivery>, Option<(u16, OutboundState)>)>;

fn add_entry(entries: &mut Entries, rest: &str, value: &[u8]) -> Result<(), StoreError> {
    let Some((seq, part)) = rest.split_once('.') else {
        return Ok(());
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return Ok(());
    };
    let entry = entries.entry(seq).or_default();
    match part {
        "q" => entry.0 = Some(wire::decode_delivery(value).map_err(damaged)?),
        "f" => {
            let text = std::str::from_utf8(value).map_err(damaged)?;
            let mut parts = text.split(' ');
            let packet_id = parts.next().and_then(|p| p.parse::<u16>().ok());
            let state = parts
                .next()
                .and_then(|s| s.parse::<u8>().ok())
                .and_then(wire::outbound_state);
            if let (Some(packet_id), Some(state)) = (packet_id, state)
                && packet_id != 0
            {
                entry.1 = Some((packet_id, state));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Up to `limit` queue entries of `client_id` from `from` on.
async fn load(
    bucket: &kv::Store,
    client: &async_nats::Client,
    client_id: &str,
    from: u64,
    limit: usize,
) -> Result<LoadedQueue, StoreError> {
    let prefix = format!("{}.m.", wire::kv_key(client_id));
    let mut entries = Entries::new();
    for (key, value) in scan(bucket, client, &prefix).await? {
        if let Some(rest) = key.strip_prefix(prefix.as_str()) {
            add_entry(&mut entries, rest, &value)?;
        }
    }
    let mut loaded = LoadedQueue {
        deliveries: Vec::new(),
        next: from,
    };
    for (seq, (delivery, inflight)) in entries.range(from..) {
        if loaded.deliveries.len() >= limit {
            break;
        }
        loaded.next = seq + 1;
        let Some(delivery) = delivery else { continue };
        loaded.deliveries.push(StoredDelivery {
            seq: *seq,
            message: delivery.message.clone(),
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_identifiers: delivery.subscription_identifiers.clone(),
            inflight: *inflight,
        });
    }
    Ok(loaded)
}

/// `client_id`'s persistent session as the cluster last stored it, ready to be taken in by
/// another node; `None` when none is stored (or it has expired).
pub async fn read_session(
    bucket: &kv::Store,
    client: &async_nats::Client,
    client_id: &str,
) -> Result<Option<Handover>, StoreError> {
    let prefix = format!("{}.", wire::kv_key(client_id));
    let mut record = None;
    // A key written while it is read comes twice: the later value counts.
    let mut subscriptions = std::collections::BTreeMap::new();
    let mut inbound_qos2 = std::collections::BTreeSet::new();
    let mut entries = Entries::new();
    for (key, value) in scan(bucket, client, &prefix).await? {
        let Some(rest) = key.strip_prefix(prefix.as_str()) else {
            continue;
        };
        if rest == "s" {
            let r: record::SessionRecord = record::decode(&value).map_err(damaged)?;
            record = Some(convert::session(r)?);
        } else if let Some(filter) = rest.strip_prefix("sub.") {
            let r: SubscriptionRecord = record::decode(&value).map_err(damaged)?;
            if B64.decode(filter).is_ok() {
                let (filter, options) = convert::subscription(r);
                subscriptions.insert(filter, options);
            }
        } else if let Some(rest) = rest.strip_prefix("m.") {
            add_entry(&mut entries, rest, &value)?;
        } else if let Some(Ok(packet_id)) = rest.strip_prefix("i.").map(str::parse::<u16>) {
            inbound_qos2.insert(packet_id);
        }
    }
    let Some(record) = record else {
        return Ok(None);
    };
    if record.expires_at.is_some_and(|at| at <= SystemTime::now()) {
        return Ok(None);
    }
    let mut handover = Handover {
        version: record.version,
        expiry_interval: record.expiry_interval,
        subscriptions: subscriptions.into_iter().collect(),
        inflight: Vec::new(),
        queued: Vec::new(),
        inbound_qos2: inbound_qos2.into_iter().collect(),
    };
    for (_, (delivery, inflight)) in entries {
        let Some(delivery) = delivery else { continue };
        match inflight {
            Some((packet_id, state)) => handover.inflight.push((packet_id, state, delivery)),
            None => handover.queued.push(delivery),
        }
    }
    Ok(Some(handover))
}
