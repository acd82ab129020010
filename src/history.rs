//! The close history: the latest closes (client id, user, peer, reason, detail, time), so
//! "why did client X disconnect?" has an answer after the fact. Every close passes through
//! `connection::log_close`, which records it here.
//!
//! Bounded twice: by count (`admin.close_history`) and by bytes ([`MAX_BYTES`]; client ids
//! are the client's to choose, up to 64 KiB each). An index by client id keeps a query for
//! one client from scanning the whole ring: it visits that client's records only.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::close::CloseReason;

/// Bytes of strings (and per-record overhead) the history may hold, whatever its count.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;
/// A detail longer than this is cut (details are brokk's own words, but may quote an error).
const MAX_DETAIL: usize = 512;
/// What a record costs beyond its strings: the record, its index slot, the map entry.
const RECORD_OVERHEAD: usize = 160;

/// One close, as the history keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseRecord {
    /// Position in the history since the broker started: newer closes have larger numbers.
    pub seq: u64,
    /// `None`: the connection closed before a CONNECT named one.
    pub client_id: Option<Arc<str>>,
    /// The authenticated user; for a refused CONNECT, the user name it claimed.
    pub user: Option<Arc<str>>,
    pub peer: SocketAddr,
    pub reason: CloseReason,
    pub detail: Option<String>,
    pub at: SystemTime,
    pub duration_ms: u64,
}

impl CloseRecord {
    fn cost(&self) -> usize {
        RECORD_OVERHEAD
            + self.client_id.as_ref().map_or(0, |c| c.len())
            + self.user.as_ref().map_or(0, |u| u.len())
            + self.detail.as_ref().map_or(0, String::len)
    }
}

/// What a close passes to [`CloseHistory::record`].
pub struct Closed<'a> {
    pub client_id: Option<&'a str>,
    pub user: Option<&'a str>,
    pub peer: SocketAddr,
    pub reason: CloseReason,
    pub detail: Option<&'a str>,
    pub duration_ms: u64,
}

/// A query: newest first, at most `limit`, older than `before` (a `seq`) when set.
#[derive(Clone, Debug, Default)]
pub struct Query<'a> {
    pub client_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// The user the close record names (authenticated, or claimed by a refused CONNECT).
    pub user: Option<&'a str>,
    pub before: Option<u64>,
    pub limit: usize,
}

pub struct CloseHistory {
    capacity: usize,
    max_bytes: usize,
    /// Held for a push or a query only: no I/O, no `.await` under it.
    inner: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    records: VecDeque<CloseRecord>,
    /// `seq` of `records[0]`; records are contiguous in `seq`.
    first_seq: u64,
    /// Each client id's records, oldest first, by `seq`.
    by_client: HashMap<Arc<str>, VecDeque<u64>>,
    bytes: usize,
}

impl CloseHistory {
    pub fn new(capacity: usize) -> CloseHistory {
        CloseHistory::with_limits(capacity, MAX_BYTES)
    }

    pub fn with_limits(capacity: usize, max_bytes: usize) -> CloseHistory {
        CloseHistory {
            capacity,
            max_bytes,
            inner: Mutex::new(Ring::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Every change keeps the ring consistent before the next one starts: a panic cannot
        // leave it half-updated.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records one close, evicting the oldest ones past the count or byte bound.
    pub fn record(&self, closed: Closed<'_>) {
        if self.capacity == 0 {
            return;
        }
        let detail = closed.detail.map(|d| cut(d, MAX_DETAIL).to_string());
        let mut ring = self.lock();
        let seq = ring.first_seq + ring.records.len() as u64;
        let record = CloseRecord {
            seq,
            client_id: closed.client_id.map(Arc::from),
            user: closed.user.map(Arc::from),
            peer: closed.peer,
            reason: closed.reason,
            detail,
            at: SystemTime::now(),
            duration_ms: closed.duration_ms,
        };
        ring.bytes += record.cost();
        if let Some(client_id) = &record.client_id {
            ring.by_client
                .entry(client_id.clone())
                .or_default()
                .push_back(seq);
        }
        ring.records.push_back(record);
        while ring.records.len() > self.capacity
            || (ring.bytes > self.max_bytes && ring.records.len() > 1)
        {
            ring.evict_oldest();
        }
    }

    /// The closes `query` asks for, newest first.
    pub fn query(&self, query: &Query<'_>) -> Vec<CloseRecord> {
        let ring = self.lock();
        let end = query
            .before
            .map_or(u64::MAX, |b| b)
            .min(ring.first_seq + ring.records.len() as u64);
        let wanted = |r: &CloseRecord| {
            query.reason.is_none_or(|why| r.reason.label() == why)
                && query
                    .user
                    .is_none_or(|user| r.user.as_deref() == Some(user))
        };
        let mut found = Vec::new();
        match query.client_id {
            Some(client_id) => {
                let Some(seqs) = ring.by_client.get(client_id) else {
                    return found;
                };
                for &seq in seqs.iter().rev().filter(|&&s| s < end) {
                    if found.len() == query.limit {
                        break;
                    }
                    if let Some(record) = ring.get(seq).filter(|r| wanted(r)) {
                        found.push(record.clone());
                    }
                }
            }
            None => {
                let newest = end.saturating_sub(ring.first_seq) as usize;
                for record in ring.records.range(..newest).rev() {
                    if found.len() == query.limit {
                        break;
                    }
                    if wanted(record) {
                        found.push(record.clone());
                    }
                }
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Ring {
    fn get(&self, seq: u64) -> Option<&CloseRecord> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.records.get(index)
    }

    fn evict_oldest(&mut self) {
        let Some(record) = self.records.pop_front() else {
            return;
        };
        self.first_seq += 1;
        self.bytes = self.bytes.saturating_sub(record.cost());
        if let Some(client_id) = &record.client_id
            && let Some(seqs) = self.by_client.get_mut(client_id)
        {
            // The oldest record overall is the oldest of its client too.
            seqs.pop_front();
            if seqs.is_empty() {
                self.by_client.remove(client_id);
            }
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests;
