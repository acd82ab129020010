//! The store seam: what must survive a restart (or move to another node) and where it goes.
//!
//! The sessions module is the only code that changes session state, so it is the one place
//! that describes each change as a [`Change`] and hands batches of them to a [`SessionStore`].
//! The shape is chosen for the stores brokk has or plans:
//!
//! - in memory ([`MemoryStore`]): nothing survives; `durable()` is false, so callers do not even
//!   build changes and the hot path pays nothing;
//! - an embedded on-disk store: changes arrive in batches from many connections and are
//!   written together, one fsync for every batch that arrived meanwhile (group commit); a
//!   QoS 1/2 acknowledgement waits for the [`Commit`] of the batch that holds the message;
//! - a replicated store (NATS JetStream for the cluster): the same batches become messages on
//!   a stream, and the commit resolves when the stream acknowledges them.
//!
//! Deadlines that are stored are wall-clock times (`SystemTime`): a monotonic instant means
//! nothing to another process or node. In-process deadlines stay `tokio::time::Instant`.

pub mod disk;
mod memory;
pub mod record;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::message::Message;
use crate::protocol::{QoS, Version, Will};
use crate::router::SubscriptionOptions;

pub use disk::DiskStore;
pub use memory::MemoryStore;

use super::state::OutboundState;

/// A persistent session's own record (its queue, subscriptions and in-flight messages are
/// stored as separate changes).
#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub version: Version,
    pub expiry_interval: u32,
    /// While the session waits for its client: when it ends.
    pub expires_at: Option<SystemTime>,
    pub will: Option<Will>,
    /// A delayed will still pending: when it fires.
    pub will_at: Option<SystemTime>,
    pub user: Option<Arc<str>>,
}

/// One change to stored state, in the order it happened.
#[derive(Clone, Debug)]
pub enum Change {
    /// A persistent session was created or its record changed.
    Session {
        client_id: Arc<str>,
        record: SessionRecord,
    },
    /// A session ended: everything stored for it goes.
    SessionGone {
        client_id: Arc<str>,
    },
    /// A session moved to another cluster node: this node's copy goes, the cluster's
    /// replicated copy stays (the node it went to writes it).
    SessionLeft {
        client_id: Arc<str>,
    },
    Subscribed {
        client_id: Arc<str>,
        filter: String,
        options: SubscriptionOptions,
    },
    Unsubscribed {
        client_id: Arc<str>,
        filter: String,
    },
    /// A message entered a session's queue at sequence number `seq` (per session, gap-free:
    /// a gap found when the queue is read back is a loss, and the session ends with
    /// `lost_messages`). The message itself is stored once, however many queues refer to it.
    Queued {
        client_id: Arc<str>,
        seq: u64,
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_identifiers: Vec<u32>,
    },
    /// A queued message went out with `packet_id`, or moved on in its QoS 2 exchange.
    InFlight {
        client_id: Arc<str>,
        seq: u64,
        packet_id: u16,
        state: OutboundState,
    },
    /// A queued message is done with (acknowledged, expired, dropped by policy, conflated).
    Delivered {
        client_id: Arc<str>,
        seq: u64,
    },
    /// An inbound QoS 2 packet id awaits PUBREL (`pending`), or got it.
    InboundQos2 {
        client_id: Arc<str>,
        packet_id: u16,
        pending: bool,
    },
    /// A retained message was set (or cleared, with `None`).
    Retained {
        topic: Arc<str>,
        message: Option<Arc<Message>>,
    },
    /// A user was revoked (or restored).
    Revoked {
        user: Arc<str>,
        revoked: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O: {0}")]
    Io(String),
    #[error("stored data is damaged: {0}")]
    Damaged(String),
    #[error("messages are missing: {0}")]
    Lost(String),
    #[error("the store is closed")]
    Closed,
}

/// A stored session as recovery finds it. Its queue stays on disk: only where it starts and
/// ends is known, and the connection that resumes it reads it back in pieces.
#[derive(Clone, Debug)]
pub struct RecoveredSession {
    pub client_id: Arc<str>,
    pub record: SessionRecord,
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
    pub inbound_qos2: Vec<u16>,
    pub queue: QueueSpan,
}

/// Where a stored queue is: entries `first..next` (those marked done included), how many are
/// still to deliver and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSpan {
    pub first: u64,
    pub next: u64,
    pub pending: usize,
    pub bytes: usize,
}

/// What a store hands back at start.
#[derive(Debug, Default)]
pub struct Recovered {
    pub sessions: Vec<RecoveredSession>,
    pub retained: Vec<Arc<Message>>,
    pub revoked: Vec<Arc<str>>,
    /// Client ids whose stored state could not be kept whole, with what is missing: they end
    /// with `lost_messages`, never resumed silently.
    pub lost: Vec<(Arc<str>, String)>,
}

/// A queue entry read back from the store.
#[derive(Clone, Debug)]
pub struct StoredDelivery {
    pub seq: u64,
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_identifiers: Vec<u32>,
    /// It was in flight: resent with its packet id (PUBLISH with DUP, or PUBREL).
    pub inflight: Option<(u16, OutboundState)>,
}

impl StoredDelivery {
    /// The delivery it stands for, with its sequence number (in-flight state is the caller's:
    /// a resumed queue keeps it, a session moved to another node starts it afresh).
    pub fn into_delivery(self) -> crate::message::Delivery {
        let mut delivery = crate::message::Delivery::new(
            self.message,
            self.qos,
            self.retain,
            self.subscription_identifiers,
        );
        delivery.seq = self.seq;
        delivery
    }
}

/// A piece of a stored queue, and where the next piece starts.
#[derive(Debug, Default)]
pub struct LoadedQueue {
    pub deliveries: Vec<StoredDelivery>,
    /// Sequence numbers read, done ones included: the next read starts at `from + read`.
    pub next: u64,
}

/// A destination for changes. Implementations are shared by every connection task.
pub trait SessionStore: Send + Sync + 'static {
    /// Whether anything survives a restart. When false, callers skip building changes.
    fn durable(&self) -> bool;
    /// Whether a commit waits for the disk, so that acknowledgements wait for their commit.
    fn waits(&self) -> bool {
        false
    }
    /// Takes a batch of changes, in order. The returned commit resolves once they are as
    /// durable as the store makes them.
    fn submit(&self, changes: Vec<Change>) -> Commit;
    /// Reads up to `limit` entries of `client_id`'s stored queue from `from`, after every
    /// batch submitted before it.
    fn load(&self, client_id: Arc<str>, from: u64, limit: usize) -> Load;
    /// Reads back everything stored (once, at start).
    fn recover(&self) -> Result<Recovered, StoreError>;
    /// Writes what was submitted and lets go of the store (at shutdown).
    fn close(&self) {}
}

/// The answer to [`SessionStore::load`].
pub struct Load(pub oneshot::Receiver<Result<LoadedQueue, StoreError>>);

impl Future for Load {
    type Output = Result<LoadedQueue, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}

/// The completion of a submitted batch: ready at once for a store that does not persist. Commits
/// join ([`Commit::and`]): the joined one resolves when all have, with the first error.
#[must_use = "a commit says when the changes are durable"]
pub struct Commit(Vec<oneshot::Receiver<Result<(), StoreError>>>);

impl Commit {
    pub fn done() -> Commit {
        Commit(Vec::new())
    }

    /// A commit that the store completes later through `sender`.
    pub fn pending() -> (Commit, oneshot::Sender<Result<(), StoreError>>) {
        let (tx, rx) = oneshot::channel();
        (Commit(vec![rx]), tx)
    }

    pub fn is_done(&self) -> bool {
        self.0.is_empty()
    }

    /// Resolves once both `self` and `other` have.
    pub fn and(mut self, mut other: Commit) -> Commit {
        self.0.append(&mut other.0);
        self
    }
}

impl Future for Commit {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        while let Some(rx) = self.0.last_mut() {
            match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    self.0.pop();
                    result.unwrap_or(Err(StoreError::Closed))?;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}
