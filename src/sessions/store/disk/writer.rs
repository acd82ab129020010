//! The committer's side of the disk store: turns batches of [`Change`]s into one write batch
//! per database, keeps each stored queue free of holes, and counts stored messages.
//!
//! Invariants kept here, which recovery checks:
//! - a session's stored queue is a run of consecutive sequence numbers `head..next`; an entry
//!   done out of order is marked `Done` (an in-flight record) and deleted only when every
//!   entry before it is done too, so a missing entry always means a loss;
//! - a message body is stored once and deleted when no queue entry refers to it.

use crate::message::Message;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::super::record::{
    self, InboundQos2Record, InflightRecord, InflightState, QueueEntryRecord, RetainedRecord,
    RevokedUserRecord, StoredRecord,
};
use super::super::{Change, StoreError};
use super::{Keyspaces, convert, keys};

/// A stored queue's head: the lowest sequence number still stored, and the entries after it
/// already done.
#[derive(Debug, Default)]
pub struct Head {
    pub first: u64,
    pub done: BTreeSet<u64>,
}

/// Writes of one group, per database.
#[derive(Default)]
pub struct Writes {
    pub sessions: Vec<(fjall::Keyspace, Vec<u8>, Option<Vec<u8>>)>,
    pub queues: Vec<(fjall::Keyspace, Vec<u8>, Option<Vec<u8>>)>,
}

/// What the committer remembers between groups.
pub struct Writer {
    pub ks: Keyspaces,
    /// Queue entries referring to each stored message.
    pub refcounts: HashMap<u64, u32>,
    pub next_message_id: u64,
    pub heads: HashMap<Arc<str>, Head>,
    /// Entries written in the group being built: (client, seq) -> message id, so an entry
    /// queued and acknowledged within one group is found without reading the store.
    pending: HashMap<(Arc<str>, u64), u64>,
}

fn encode<R: StoredRecord>(r: &R) -> Result<Vec<u8>, StoreError> {
    record::encode(r).map_err(|e| StoreError::Damaged(e.to_string()))
}

fn io(e: fjall::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl Writer {
    pub fn new(ks: Keyspaces) -> Writer {
        Writer {
            ks,
            refcounts: HashMap::new(),
            next_message_id: 1,
            heads: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    pub fn begin(&mut self) {
        self.pending.clear();
    }

    /// Adds `change`'s writes to `w`.
    pub fn apply(&mut self, change: Change, w: &mut Writes) -> Result<(), StoreError> {
        match change {
            Change::Session { client_id, record } => {
                let value = encode(&convert::session_record(&client_id, &record)?)?;
                w.sessions.push((
                    self.ks.sessions.clone(),
                    keys::client(&client_id),
                    Some(value),
                ));
            }
            Change::SessionGone { client_id } | Change::SessionLeft { client_id } => {
                self.session_gone(&client_id, w)?
            }
            Change::Subscribed {
                client_id,
                filter,
                options,
            } => {
                let value = encode(&convert::subscription_record(&filter, &options))?;
                let key = keys::subscription(&client_id, &filter);
                w.sessions
                    .push((self.ks.subscriptions.clone(), key, Some(value)));
            }
            Change::Unsubscribed { client_id, filter } => {
                let key = keys::subscription(&client_id, &filter);
                w.sessions.push((self.ks.subscriptions.clone(), key, None));
            }
            Change::Queued {
                client_id,
                seq,
                message,
                qos,
                retain,
                subscription_identifiers,
            } => {
                let message_id = self.store_message(&message, w)?;
                let entry = QueueEntryRecord {
                    seq,
                    message_id,
                    qos: qos as u8,
                    retain,
                    subscription_identifiers,
                };
                self.queue_entry(client_id, entry, w)?;
            }
            Change::InFlight {
                client_id,
                seq,
                packet_id,
                state,
            } => {
                let value = encode(&InflightRecord {
                    packet_id,
                    state: convert::inflight_state(state),
                    seq,
                })?;
                w.queues.push((
                    self.ks.inflight.clone(),
                    keys::entry(&client_id, seq),
                    Some(value),
                ));
            }
            Change::Delivered { client_id, seq } => self.delivered(&client_id, seq, w)?,
            Change::InboundQos2 {
                client_id,
                packet_id,
                pending,
            } => {
                let key = keys::inbound(&client_id, packet_id);
                let value = if pending {
                    Some(encode(&InboundQos2Record { packet_id })?)
                } else {
                    None
                };
                w.sessions.push((self.ks.inbound_qos2.clone(), key, value));
            }
            Change::Retained { topic, message } => {
                let value = message.map(|m| retained_value(&m)).transpose()?;
                w.sessions
                    .push((self.ks.retained.clone(), topic.as_bytes().to_vec(), value));
            }
            Change::Revoked { user, revoked } => {
                let value = revoked.then(|| revoked_value(&user)).transpose()?;
                w.sessions
                    .push((self.ks.revoked.clone(), user.as_bytes().to_vec(), value));
            }
        }
        Ok(())
    }

    /// Gives `message` its store id (once, however many queues hold it) and writes its body
    /// when no pending entry refers to it yet; the id's reference count grows by one.
    fn store_message(&mut self, message: &Message, w: &mut Writes) -> Result<u64, StoreError> {
        let id = *message.stored.get_or_init(|| {
            let id = self.next_message_id;
            self.next_message_id += 1;
            id
        });
        let count = self.refcounts.entry(id).or_insert(0);
        if *count == 0 {
            let body = encode(&convert::message_record(message))?;
            w.queues.push((
                self.ks.messages.clone(),
                keys::message(id).to_vec(),
                Some(body),
            ));
        }
        *count += 1;
        Ok(id)
    }

    /// Writes one queue entry and remembers it until it is delivered.
    fn queue_entry(
        &mut self,
        client_id: Arc<str>,
        entry: QueueEntryRecord,
        w: &mut Writes,
    ) -> Result<(), StoreError> {
        let seq = entry.seq;
        let id = entry.message_id;
        w.queues.push((
            self.ks.queue.clone(),
            keys::entry(&client_id, seq),
            Some(encode(&entry)?),
        ));
        self.heads.entry(client_id.clone()).or_insert(Head {
            first: seq,
            done: BTreeSet::new(),
        });
        self.pending.insert((client_id, seq), id);
        Ok(())
    }

    /// The message an entry refers to: from this group's writes, or read from the store.
    fn message_of(&self, client_id: &Arc<str>, seq: u64) -> Result<Option<u64>, StoreError> {
        if let Some(id) = self.pending.get(&(client_id.clone(), seq)) {
            return Ok(Some(*id));
        }
        let Some(bytes) = self.ks.queue.get(keys::entry(client_id, seq)).map_err(io)? else {
            return Ok(None);
        };
        let entry: QueueEntryRecord =
            record::decode(&bytes).map_err(|e| StoreError::Damaged(e.to_string()))?;
        Ok(Some(entry.message_id))
    }

    /// Deletes an entry (and its in-flight record), and its message once no entry refers to it.
    fn delete_entry(
        &mut self,
        client_id: &Arc<str>,
        seq: u64,
        w: &mut Writes,
    ) -> Result<(), StoreError> {
        let key = keys::entry(client_id, seq);
        if let Some(id) = self.message_of(client_id, seq)? {
            self.release(id, w);
        }
        w.queues.push((self.ks.queue.clone(), key.clone(), None));
        w.queues.push((self.ks.inflight.clone(), key, None));
        Ok(())
    }

    fn release(&mut self, id: u64, w: &mut Writes) {
        if let Some(count) = self.refcounts.get_mut(&id) {
            *count -= 1;
            if *count == 0 {
                self.refcounts.remove(&id);
                w.queues
                    .push((self.ks.messages.clone(), keys::message(id).to_vec(), None));
            }
        }
    }

    /// An entry is done: deleted if it is the head (with every done entry right after it),
    /// else marked done until the entries before it are.
    fn delivered(
        &mut self,
        client_id: &Arc<str>,
        seq: u64,
        w: &mut Writes,
    ) -> Result<(), StoreError> {
        let Some(head) = self.heads.get_mut(client_id) else {
            return Ok(());
        };
        if seq < head.first || head.done.contains(&seq) {
            return Ok(());
        }
        if seq > head.first {
            head.done.insert(seq);
            let mark = encode(&InflightRecord {
                packet_id: 1,
                state: InflightState::Done,
                seq,
            })?;
            w.queues.push((
                self.ks.inflight.clone(),
                keys::entry(client_id, seq),
                Some(mark),
            ));
            return Ok(());
        }
        let mut next = seq;
        loop {
            self.delete_entry(client_id, next, w)?;
            next += 1;
            let Some(head) = self.heads.get_mut(client_id) else {
                break;
            };
            head.first = next;
            if !head.done.remove(&next) {
                break;
            }
        }
        Ok(())
    }

    /// Everything stored for `client_id` goes: its record, subscriptions, inbound ids, queue.
    fn session_gone(&mut self, client_id: &Arc<str>, w: &mut Writes) -> Result<(), StoreError> {
        let prefix = keys::client(client_id);
        let end = keys::prefix_end(&prefix);
        w.sessions
            .push((self.ks.sessions.clone(), prefix.clone(), None));
        for ks in [&self.ks.subscriptions, &self.ks.inbound_qos2] {
            for item in ks.range(prefix.clone()..end.clone()) {
                let (key, _) = item.into_inner().map_err(io)?;
                w.sessions.push((ks.clone(), key.to_vec(), None));
            }
        }
        let mut seqs = Vec::new();
        for item in self.ks.queue.range(prefix.clone()..end.clone()) {
            let (key, _) = item.into_inner().map_err(io)?;
            if let Some(seq) = keys::split(&key).and_then(|(_, rest)| keys::seq_of(rest)) {
                seqs.push(seq);
            }
        }
        // Entries queued in this very group are not in the store yet.
        seqs.extend(
            self.pending
                .keys()
                .filter(|(c, _)| c == client_id)
                .map(|(_, s)| *s),
        );
        seqs.sort_unstable();
        seqs.dedup();
        for seq in seqs {
            self.delete_entry(client_id, seq, w)?;
        }
        self.heads.remove(client_id);
        Ok(())
    }
}

/// A retained message's stored value.
fn retained_value(m: &Message) -> Result<Vec<u8>, StoreError> {
    let r = convert::message_record(m);
    encode(&RetainedRecord {
        topic: r.topic,
        payload: r.payload,
        qos: r.qos,
        properties: r.properties,
        expires_at_ms: r.expires_at_ms,
    })
}

/// A revoked user's stored value.
fn revoked_value(user: &str) -> Result<Vec<u8>, StoreError> {
    encode(&RevokedUserRecord {
        username: user.to_string(),
        revoked_at_ms: convert::unix_ms(std::time::SystemTime::now()),
    })
}
