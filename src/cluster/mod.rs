//! A brokk cluster on NATS JetStream: nodes that share one NATS cluster form one broker.
//!
//! - Liveness: every node puts its MQTT address under its name in the `brokk_nodes` bucket
//!   every [`HEARTBEAT`]; the bucket's entries age out after [`NODE_TTL`] (NATS 2.9 has no
//!   per-key TTL, so the whole bucket has that max age). A node with no entry is dead.
//! - Routing: each publish goes to NATS under its topic's subject (see [`topic_subject`]), tagged with
//!   its origin node and a sequence number; a node holds one NATS subscription per distinct
//!   subject its local subscriptions need (counted), drops its own messages coming back
//!   (they were delivered locally already) and duplicates (a message matching two of its
//!   subscriptions arrives twice), and routes the rest through its own index.
//!   That is for QoS 0. QoS 1/2 messages go to every other live node directly (request and
//!   answer, `Cluster::confirm`), and the publisher's acknowledgement waits until each has
//!   routed and stored them.
//! - Persistent sessions are replicated in the `brokk_sessions` bucket ([`ReplicaStore`]); the
//!   node that takes a session from a dead node reads it back from there, and the live nodes
//!   adopt a dead node's waiting sessions.
//! - Retained messages live in the `brokk_retained` bucket (key: the topic), loaded at start
//!   and watched.
//! - Ownership: the `brokk_owners` bucket names each client id's node, taken with
//!   compare-and-set on the entry's revision. A CONNECT for an id another live node owns asks
//!   it for the session (request/reply on `brokk.node.<name>.handover`); the old node closes
//!   its connection with `session_taken_over` and replies with the session's state. A node
//!   whose connected session's entry names another node (the owner bucket is watched, and
//!   looked at again after the node was paused) closes it with `failed_over`.
//! - Draining: on shutdown, each connected session moves to a live node (`adopt`), and its
//!   client gets DISCONNECT 0x9C with that node as Server Reference.
//!
//! The JetStream KV buckets' streams are created here directly (`KV_<bucket>`): async-nats's
//! `create_key_value` cannot read the account info Debian's nats-server 2.9 sends.

mod replica;
mod subject;
mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, stream};
use async_nats::{HeaderMap, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::logsafe::LogId;
use crate::message::Message;
use crate::protocol::QoS;
use crate::routing::FilterChange;
use crate::sessions::store::{Commit, StoreError};
use crate::sessions::{Forward, Sessions, Surrender};

pub use replica::ReplicaStore;
pub use subject::{filter_subjects, subject_topic, topic_subject};

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node is taken for alive after its last heartbeat (a busy machine may delay a
/// heartbeat or two; a node taken for dead loses its sessions' state).
pub const NODE_TTL: Duration = Duration::from_secs(5);
/// How long a node waits for another to hand a session over before taking the entry anyway.
const HANDOVER_WAIT: Duration = Duration::from_secs(2);
/// How long a node gives a handover in progress before it takes a foreign owner entry as a
/// sign that its copy of a session is stale.
const STALE_GRACE: Duration = Duration::from_millis(1500);
/// How many times a CONNECT tries to take a client id's entry before it is refused.
const CLAIM_ATTEMPTS: usize = 8;
/// Publish batches waiting to go to NATS, at most.
const FORWARD_QUEUE: usize = 65_536;
/// Message ids remembered per origin node, to drop duplicates.
const SEEN_WINDOW: usize = 4096;
/// QoS 1/2 messages sent to the other nodes in one request, at most (what queued meanwhile).
const CONFIRM_BATCH: usize = 512;
/// How long a node keeps asking a live node to take a QoS 1/2 batch before the publisher's
/// acknowledgement fails (its connection closes; the client sends the message again).
const CONFIRM_WAIT: Duration = Duration::from_secs(5);

const NODES: &str = "brokk_nodes";
const OWNERS: &str = "brokk_owners";
const RETAINED: &str = "brokk_retained";
const ORIGIN: &str = "Brokk-Origin";
const SEQ: &str = "Brokk-Seq";
const PUBLISHER: &str = "Brokk-Publisher";

pub const MEMBERS: &str = "brokk_cluster_members";
pub const REMOTE_DELIVERIES: &str = "brokk_cluster_remote_deliveries_total";
pub const HANDOVERS: &str = "brokk_cluster_handovers_total";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.nats: cannot connect to {urls}: {why}")]
    Connect { urls: String, why: String },
    #[error("cluster.nats: JetStream bucket {bucket}: {why}")]
    Bucket { bucket: &'static str, why: String },
    #[error("cluster: {0}")]
    Nats(String),
}

fn nats_error(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

/// A client id could not be taken: CONNACK Server unavailable.
#[derive(Debug, thiserror::Error)]
#[error("cluster: {0}")]
pub struct ClaimError(String);

pub struct Cluster {
    node: String,
    /// This node's MQTT address, for Server References.
    address: String,
    client: async_nats::Client,
    nodes: kv::Store,
    owners: kv::Store,
    retained: kv::Store,
    /// The persistent sessions' replicated copies (see [`ReplicaStore`]).
    stored: kv::Store,
    sessions: Arc<Sessions>,
    seq: AtomicU64,
    /// To the forwarding task; bounded, so a NATS outage cannot grow it without limit.
    outbound: mpsc::Sender<Outbound>,
    /// The live nodes' names, as the last heartbeat round saw them.
    live: Mutex<Vec<String>>,
    /// Batches not forwarded because the queue to NATS was full.
    unforwarded: AtomicU64,
    /// A drain under way: the Server Reference its clients are sent.
    drain_reference: OnceLock<String>,
    /// Sessions a drain is moving: their state once taken from their connection, until the
    /// node they go to adopts it or their client, reconnected there first, asks for it.
    moving: Mutex<HashMap<String, Option<Bytes>>>,
    /// Client ids being taken on this node (a CONNECT, or a drained session adopted): one at
    /// a time per id, so an adoption and its client's CONNECT do not pass each other.
    claiming: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    members: metrics::Gauge,
    remote: metrics::Counter,
    handovers: metrics::Counter,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct HandoverRequest {
    client_id: String,
    /// Wall-clock unix ms after which the asker no longer waits (a node resumed after a
    /// pause must not give up a session nobody is waiting for).
    deadline_ms: u64,
}

/// A publish batch on its way to the forwarding task, with the commit its QoS 1/2 messages
/// complete once every other live node took them.
type Outbound = (
    Vec<Arc<Message>>,
    Arc<str>,
    Option<oneshot::Sender<Result<(), StoreError>>>,
);

/// QoS 1/2 messages sent to one node, which answers once it routed and stored them.
#[derive(serde::Serialize, serde::Deserialize)]
struct RouteBatch {
    origin: String,
    seq: u64,
    /// (publisher's client id as a KV key, message record in base64url).
    items: Vec<(String, String)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AdoptRequest {
    client_id: String,
}

/// This node's hold on a client id while it takes it (see [`Cluster::lock_client`]).
pub struct ClaimGuard {
    cluster: Arc<Cluster>,
    client_id: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut claiming = self
            .cluster
            .claiming
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if claiming
            .get(&self.client_id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            claiming.remove(&self.client_id);
        }
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Cluster {
    /// Connects to NATS, opens the buckets, loads the retained messages and starts the
    /// node's tasks. `filters` is the routing index's change feed (see
    /// `Routing::watch_filters`).
    pub async fn start(
        config: &ClusterConfig,
        address: String,
        sessions: Arc<Sessions>,
        replica: &ReplicaStore,
        filters: mpsc::UnboundedReceiver<FilterChange>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let node = config.node_name();
        let urls = config.nats.join(", ");
        let options = async_nats::ConnectOptions::new()
            .name(format!("brokk {node}"))
            .connection_timeout(Duration::from_secs(3))
            .request_timeout(Some(Duration::from_secs(5)));
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            async_nats::connect_with_options(config.nats.clone(), options),
        )
        .await
        .map_err(|_| ClusterError::Connect {
            urls: urls.clone(),
            why: "timed out".to_string(),
        })?
        .map_err(|e| ClusterError::Connect {
            urls: urls.clone(),
            why: e.to_string(),
        })?;
        let js = jetstream::new(client.clone());
        let nodes = bucket(&js, NODES, NODE_TTL).await?;
        let owners = bucket(&js, OWNERS, Duration::ZERO).await?;
        let retained = bucket(&js, RETAINED, Duration::ZERO).await?;
        let stored = bucket(&js, replica::SESSIONS, Duration::ZERO).await?;
        let writer = replica.start(stored.clone(), client.clone());
        let (outbound, outbound_rx) = mpsc::channel(FORWARD_QUEUE);
        let cluster = Arc::new(Cluster {
            node: node.clone(),
            address,
            client,
            nodes,
            owners,
            retained,
            stored,
            sessions: sessions.clone(),
            seq: AtomicU64::new(0),
            outbound,
            live: Mutex::new(Vec::new()),
            unforwarded: AtomicU64::new(0),
            drain_reference: OnceLock::new(),
            moving: Mutex::new(HashMap::new()),
            claiming: Mutex::new(HashMap::new()),
            members: metrics::gauge!(MEMBERS),
            remote: metrics::counter!(REMOTE_DELIVERIES),
            handovers: metrics::counter!(HANDOVERS),
            tasks: Mutex::new(Vec::new()),
        });
        // A stream just created may not take messages until its leader is elected.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while let Err(error) = cluster.heartbeat_once().await {
            if tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let retained_watch = cluster
            .retained
            .watch_with_history(">")
            .await
            .map_err(|e| ClusterError::Bucket {
                bucket: RETAINED,
                why: e.to_string(),
            })?;
        let owners_watch = cluster
            .owners
            .watch_all()
            .await
            .map_err(|e| ClusterError::Bucket {
                bucket: OWNERS,
                why: e.to_string(),
            })?;
        let handover_requests = cluster.subscribe_own("handover").await?;
        let adopt_requests = cluster.subscribe_own("adopt").await?;
        let route_requests = cluster.subscribe_own("route").await?;
        // A node that joins is a target of QoS 1/2 batches from its first heartbeat on.
        let nodes_watch = cluster
            .nodes
            .watch_all()
            .await
            .map_err(|e| ClusterError::Bucket {
                bucket: NODES,
                why: e.to_string(),
            })?;
        cluster.refresh_live().await;
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let mut tasks = vec![
            tokio::spawn(cluster.clone().heartbeats()),
            tokio::spawn(cluster.clone().watch_retained(retained_watch)),
            tokio::spawn(cluster.clone().watch_owners(owners_watch)),
            tokio::spawn(cluster.clone().serve_handovers(handover_requests)),
            tokio::spawn(cluster.clone().serve_adoptions(adopt_requests)),
            tokio::spawn(cluster.clone().serve_routes(route_requests)),
            tokio::spawn(cluster.clone().watch_nodes(nodes_watch)),
            tokio::spawn(cluster.clone().forward_loop(outbound_rx)),
            tokio::spawn(cluster.clone().subscriptions(filters, inbound_tx)),
            tokio::spawn(cluster.clone().deliver_loop(inbound_rx)),
        ];
        tasks.extend(writer);
        *cluster.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        sessions.set_forward(cluster.clone());
        tracing::info!(node = %node, nats = %urls, "cluster node joined");
        Ok(cluster)
    }

    /// Subscribes to one of this node's own request subjects (`brokk.node.<name>.<what>`).
    async fn subscribe_own(&self, what: &str) -> Result<Subscriber, ClusterError> {
        self.client
            .subscribe(format!("brokk.node.{}.{what}", self.node))
            .await
            .map_err(nats_error)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The Server Reference a draining node sends its clients.
    pub fn drain_reference(&self) -> Option<&str> {
        self.drain_reference.get().map(String::as_str)
    }

    async fn heartbeat_once(&self) -> Result<(), ClusterError> {
        self.nodes
            .put(&self.node, Bytes::from(self.address.clone()))
            .await
            .map_err(|e| ClusterError::Bucket {
                bucket: NODES,
                why: e.to_string(),
            })?;
        Ok(())
    }

    /// Live nodes and their MQTT addresses.
    async fn live_nodes(&self) -> Result<Vec<(String, String)>, ClusterError> {
        let mut keys = self.nodes.keys().await.map_err(nats_error)?;
        // A heartbeat put while the keys are listed lists its key twice.
        let mut names = std::collections::BTreeSet::new();
        while let Some(key) = keys.next().await {
            names.insert(key.map_err(nats_error)?);
        }
        let mut live = Vec::new();
        for name in names {
            if let Ok(Some(address)) = self.nodes.get(&name).await {
                live.push((name, String::from_utf8_lossy(&address).into_owned()));
            }
        }
        Ok(live)
    }

    /// Looks the live nodes up again (the list QoS 1/2 batches go to); `None` when NATS did
    /// not answer.
    async fn refresh_live(&self) -> Option<Vec<String>> {
        let live: Vec<String> = self
            .live_nodes()
            .await
            .ok()?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        self.members.set(live.len() as f64);
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = live.clone();
        Some(live)
    }

    /// Adds a node to the live list at its first heartbeat (the list is looked up again, and
    /// nodes gone left out, every other heartbeat).
    async fn watch_nodes(self: Arc<Self>, mut watch: kv::Watch) {
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { continue };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            if !live.contains(&entry.key) {
                live.push(entry.key);
            }
        }
    }

    async fn alive(&self, node: &str) -> bool {
        matches!(self.nodes.get(node).await, Ok(Some(_)))
    }

    async fn heartbeats(self: Arc<Self>) {
        let mut last = tokio::time::Instant::now();
        let mut ticks: u32 = 0;
        let mut known: HashSet<String> = HashSet::new();
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let now = tokio::time::Instant::now();
            let paused = now.duration_since(last) > HEARTBEAT * 3;
            last = now;
            if let Err(error) = self.heartbeat_once().await {
                tracing::warn!(%error, "cluster: heartbeat failed");
            }
            if paused {
                // This node was stopped (or starved) long enough to be taken for dead: other
                // nodes may have taken its sessions.
                tracing::warn!("cluster: this node missed its heartbeats; checking its sessions");
                self.recheck_all().await;
            }
            ticks = ticks.wrapping_add(1);
            if ticks % 2 == 1
                && let Some(live) = self.refresh_live().await
            {
                let now: HashSet<String> = live.into_iter().collect();
                for dead in known.difference(&now) {
                    if *dead != self.node && !paused {
                        tokio::spawn(self.clone().adopt_orphans(dead.clone()));
                    }
                }
                known = now;
            }
        }
    }

    /// Closes with `failed_over` every connected session here whose owner entry names
    /// another node.
    async fn recheck_all(&self) {
        for client_id in self.sessions.connected_ids() {
            if let Ok(Some(entry)) = self.owners.entry(wire::kv_key(&client_id)).await
                && entry.operation == kv::Operation::Put
                && entry.value != self.node.as_bytes()
            {
                self.fail_over(&client_id);
            }
        }
    }

    fn fail_over(&self, client_id: &str) {
        if self.sessions.fail_over(client_id) {
            tracing::info!(client_id = %LogId(client_id), "cluster: session moved to another node; this copy ends (failed_over)");
        }
    }

    /// Waits until no other CONNECT or adoption on this node is taking `client_id`; held
    /// until the session is in the table.
    pub async fn lock_client(self: &Arc<Self>, client_id: &str) -> ClaimGuard {
        let lock = self
            .claiming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(client_id.to_string())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        ClaimGuard {
            cluster: self.clone(),
            client_id: client_id.to_string(),
            guard: Some(guard),
        }
    }

    /// Whether this node's owner entry for `client_id` still names it (checked after a
    /// CONNECT took the session: a concurrent CONNECT elsewhere may have won meanwhile).
    pub async fn still_owner(&self, client_id: &str) -> bool {
        match self.owners.entry(wire::kv_key(client_id)).await {
            Ok(Some(entry)) => entry.value == self.node.as_bytes(),
            Ok(None) => false,
            // NATS unreachable: the connection stays; the watch catches up later.
            Err(_) => true,
        }
    }

    /// Makes this node the owner of `client_id` (compare-and-set on the entry's revision) and
    /// fetches the session from the node that owned it, if that node is alive and has one.
    pub async fn claim(
        &self,
        client_id: &str,
    ) -> Result<Option<crate::sessions::Handover>, ClaimError> {
        let key = wire::kv_key(client_id);
        let me = Bytes::from(self.node.clone());
        let mut last_error = String::new();
        for _ in 0..CLAIM_ATTEMPTS {
            let entry = match self.owners.entry(key.clone()).await {
                Ok(entry) => entry,
                Err(e) => {
                    last_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let previous = match entry {
                None => match self.owners.create(&key, me.clone()).await {
                    Ok(_) => return Ok(None),
                    Err(e) => {
                        last_error = e.to_string();
                        continue;
                    }
                },
                Some(entry) => entry,
            };
            let owner = (previous.operation == kv::Operation::Put)
                .then(|| String::from_utf8_lossy(&previous.value).into_owned());
            if owner.as_deref() == Some(self.node.as_str()) {
                // Ours: here, unless this node restarted since (then the cluster's copy is it).
                if self.sessions.info(client_id).is_some() {
                    return Ok(None);
                }
                return self.stored_session(client_id).await;
            }
            if let Err(e) = self
                .owners
                .update(&key, me.clone(), previous.revision)
                .await
            {
                // Another CONNECT took it first: look again (and ask that one).
                last_error = e.to_string();
                continue;
            }
            let Some(owner) = owner else {
                return self.stored_session(client_id).await;
            };
            if !self.alive(&owner).await {
                tracing::info!(client_id = %LogId(client_id), node = %owner, "cluster: owner node is dead; session taken from the cluster's copy");
                return self.stored_session(client_id).await;
            }
            return match self.request_handover(&owner, client_id).await {
                Ok(handover) => Ok(handover),
                Err(()) => self.stored_session(client_id).await,
            };
        }
        Err(ClaimError(format!(
            "could not take the client id's entry: {last_error}"
        )))
    }

    /// The session as `owner` hands it over (`None`: it has none); `Err` when it did not
    /// answer (the cluster's stored copy is then the session).
    async fn request_handover(
        &self,
        owner: &str,
        client_id: &str,
    ) -> Result<Option<crate::sessions::Handover>, ()> {
        let request = HandoverRequest {
            client_id: client_id.to_string(),
            deadline_ms: unix_ms(SystemTime::now() + HANDOVER_WAIT),
        };
        let payload = serde_json::to_vec(&request).map_err(|_| ())?;
        let reply = tokio::time::timeout(
            HANDOVER_WAIT,
            self.client
                .request(format!("brokk.node.{owner}.handover"), payload.into()),
        )
        .await;
        match reply {
            Ok(Ok(message)) if message.payload.is_empty() => Ok(None),
            Ok(Ok(message)) => match wire::decode_handover(&message.payload) {
                Ok(handover) => {
                    self.handovers.increment(1);
                    Ok(Some(handover))
                }
                Err(error) => {
                    tracing::warn!(client_id = %LogId(client_id), %error, "cluster: handover unreadable; taking the cluster's copy");
                    Err(())
                }
            },
            Ok(Err(error)) => {
                tracing::warn!(client_id = %LogId(client_id), node = %owner, %error, "cluster: handover request failed; taking the cluster's copy");
                Err(())
            }
            Err(_) => {
                tracing::warn!(client_id = %LogId(client_id), node = %owner, "cluster: owner did not hand over in time; taking the cluster's copy");
                Err(())
            }
        }
    }

    /// The cluster's stored copy of `client_id`'s persistent session (its owner is gone, or
    /// did not answer). An unreadable copy refuses the CONNECT (Server unavailable, the client
    /// tries again) rather than start it afresh: a session is never lost silently.
    async fn stored_session(
        &self,
        client_id: &str,
    ) -> Result<Option<crate::sessions::Handover>, ClaimError> {
        match replica::read_session(&self.stored, &self.client, client_id).await {
            Ok(Some(handover)) => {
                tracing::info!(client_id = %LogId(client_id), queued = handover.queued.len() + handover.inflight.len(), "cluster: session taken from the cluster's copy");
                self.handovers.increment(1);
                Ok(Some(handover))
            }
            Ok(None) => Ok(None),
            Err(crate::sessions::store::StoreError::Damaged(why)) => {
                // What is there cannot be read back whole: the session ends, said.
                tracing::error!(client_id = %LogId(client_id), %why, "cluster: the stored session is damaged");
                self.sessions.lost(client_id);
                Ok(None)
            }
            Err(error) => Err(ClaimError(format!(
                "the cluster's copy of the session cannot be read: {error}"
            ))),
        }
    }

    /// Sessions of a node taken for dead: every live node tries each of its stored sessions
    /// (compare-and-set on the owner entry); the one that takes it keeps it waiting for its
    /// client, so the messages published meanwhile are queued for it. Sessions without a
    /// stored copy (they ended with their connection) are left: a CONNECT takes their id.
    async fn adopt_orphans(self: Arc<Self>, dead: String) {
        // A node missing from one listing may only have been slow (or the listing raced its
        // heartbeat): it is looked up directly, after one more heartbeat period.
        tokio::time::sleep(HEARTBEAT).await;
        if self.alive(&dead).await {
            return;
        }
        let mut keys = match self.owners.keys().await {
            Ok(keys) => keys,
            Err(error) => {
                tracing::warn!(%error, node = %dead, "cluster: the dead node's sessions could not be listed");
                return;
            }
        };
        let mut ids = Vec::new();
        while let Some(key) = keys.next().await {
            if let Ok(key) = key {
                ids.push(key);
            }
        }
        let me = Bytes::from(self.node.clone());
        let mut adopted = 0usize;
        for key in ids {
            let Some(client_id) = wire::from_kv_key(&key) else {
                continue;
            };
            let _claim = self.lock_client(&client_id).await;
            let entry = match self.owners.entry(key.clone()).await {
                Ok(Some(entry))
                    if entry.operation == kv::Operation::Put && entry.value == dead.as_bytes() =>
                {
                    entry
                }
                _ => continue,
            };
            let Ok(Some(handover)) =
                replica::read_session(&self.stored, &self.client, &client_id).await
            else {
                continue;
            };
            if self.alive(&dead).await {
                // It came back: its sessions stay with it.
                return;
            }
            if self
                .owners
                .update(&key, me.clone(), entry.revision)
                .await
                .is_err()
            {
                continue;
            }
            if let Err(error) = self
                .sessions
                .adopt(Arc::from(client_id.as_str()), handover)
                .await
            {
                tracing::error!(client_id = %LogId(&client_id), %error, "cluster: an adopted session was not stored");
            }
            adopted += 1;
        }
        if adopted > 0 {
            self.handovers.increment(adopted as u64);
            tracing::info!(node = %dead, sessions = adopted, "cluster: took over the sessions of a dead node");
        }
    }

    /// Waits until every change this node submitted so far is stored (a session that leaves
    /// for another node must not have a write of this node land after the new owner's).
    async fn flush_store(&self) {
        if let Err(error) = self.sessions.store().submit(Vec::new()).await {
            tracing::warn!(%error, "cluster: the store did not flush");
        }
    }

    async fn serve_handovers(self: Arc<Self>, mut requests: Subscriber) {
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let Ok(request) = serde_json::from_slice::<HandoverRequest>(&message.payload) else {
                continue;
            };
            if unix_ms(SystemTime::now()) > request.deadline_ms {
                // Nobody waits for it any more (this node was paused): the asker took the
                // session without its state, and the watch ends this node's copy.
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                if let Some(moved) = this.take_moving(&request.client_id).await {
                    if let Err(error) = this.client.publish(reply, moved).await {
                        tracing::warn!(%error, "cluster: handover reply failed");
                    }
                    return;
                }
                let handover = this
                    .sessions
                    .surrender(&request.client_id, Surrender::TakenOver)
                    .await;
                this.flush_store().await;
                let payload = match handover.map(|h| wire::encode_handover(&h)) {
                    Some(Ok(bytes)) => Bytes::from(bytes),
                    Some(Err(error)) => {
                        tracing::error!(client_id = %LogId(&request.client_id), %error, "cluster: session could not be encoded for handover");
                        Bytes::new()
                    }
                    None => Bytes::new(),
                };
                if let Err(error) = this.client.publish(reply, payload).await {
                    tracing::warn!(%error, "cluster: handover reply failed");
                }
            });
        }
    }

    fn moving(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Bytes>>> {
        self.moving.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of a session a drain is moving, waiting (briefly) for its connection to
    /// give it up; `None` when no drain is moving it.
    async fn take_moving(&self, client_id: &str) -> Option<Bytes> {
        let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
        loop {
            {
                let mut moving = self.moving();
                match moving.get(client_id) {
                    None => return None,
                    Some(Some(_)) => return moving.remove(client_id).flatten(),
                    Some(None) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A draining node asks this one to take a session: taken like a CONNECT would (the
    /// entry by compare-and-set, the state from the draining node), and left waiting for its
    /// client. If the client came here first, its CONNECT took the session already.
    async fn serve_adoptions(self: Arc<Self>, mut requests: Subscriber) {
        while let Some(message) = requests.next().await {
            let Ok(request) = serde_json::from_slice::<AdoptRequest>(&message.payload) else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let adopted = {
                    let _claim = this.lock_client(&request.client_id).await;
                    match this.claim(&request.client_id).await {
                        Ok(Some(handover)) => {
                            let stored = this
                                .sessions
                                .adopt(Arc::from(request.client_id.as_str()), handover);
                            if let Err(error) = stored.await {
                                tracing::error!(client_id = %LogId(&request.client_id), %error, "cluster: an adopted session was not stored");
                            }
                            true
                        }
                        _ => false,
                    }
                };
                if let Some(reply) = message.reply {
                    let answer = if adopted { "ok" } else { "" };
                    let _ = this.client.publish(reply, Bytes::from(answer)).await;
                }
            });
        }
    }

    async fn watch_owners(self: Arc<Self>, mut watch: kv::Watch) {
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { continue };
            if entry.operation != kv::Operation::Put || entry.value == self.node.as_bytes() {
                continue;
            }
            let Some(client_id) = wire::from_kv_key(&entry.key) else {
                continue;
            };
            if self.sessions.info(&client_id).is_none() {
                continue;
            }
            // A handover may be under way (the new owner asks right after taking the entry):
            // give it time to take the session, then end what is left here.
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(STALE_GRACE).await;
                if this.sessions.info(&client_id).is_some() && !this.still_owner(&client_id).await {
                    this.fail_over(&client_id);
                }
            });
        }
        tracing::warn!("cluster: the owner watch ended");
    }

    async fn watch_retained(self: Arc<Self>, mut watch: kv::Watch) {
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { continue };
            let Some(topic) = wire::from_kv_key(&entry.key) else {
                continue;
            };
            match entry.operation {
                kv::Operation::Put => match wire::decode_message(&entry.value) {
                    Ok(message) => self.sessions.remote_retained(&topic, Some(message)),
                    Err(error) => {
                        tracing::warn!(topic = %LogId(&topic), %error, "cluster: retained message unreadable")
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => {
                    self.sessions.remote_retained(&topic, None)
                }
            }
        }
        tracing::warn!("cluster: the retained watch ended");
    }

    /// Sends what the node's clients publish to the other nodes, in the order they published:
    /// QoS 0 on the topics' subjects (at most once), QoS 1/2 straight to every other live
    /// node, which answers once it routed and stored them; the publishers' commits complete
    /// then (see `Cluster::confirm`).
    async fn forward_loop(self: Arc<Self>, mut outbound: mpsc::Receiver<Outbound>) {
        let (retained, retained_rx) = mpsc::unbounded_channel();
        let store = tokio::spawn(self.clone().store_retained(retained_rx));
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(store);
        while let Some(first) = outbound.recv().await {
            let mut batches = vec![first];
            let mut confirmed = Vec::new();
            let mut waiting = Vec::new();
            while let Some((messages, publisher, done)) = batches.pop() {
                waiting.extend(done);
                for message in messages {
                    let payload = match wire::encode_message(&message) {
                        Ok(bytes) => Bytes::from(bytes),
                        Err(error) => {
                            tracing::warn!(%error, "cluster: message not forwarded");
                            continue;
                        }
                    };
                    if message.retain {
                        // Stored by its own task: a JetStream leader election must not hold
                        // up the messages behind it.
                        let _ = retained.send((message.topic.clone(), payload.clone()));
                    }
                    if message.qos == QoS::AtMostOnce {
                        self.publish_routed(&message.topic, &publisher, payload)
                            .await;
                    } else {
                        confirmed.push((wire::kv_key(&publisher), base64_url(&payload)));
                    }
                }
                // What else queued meanwhile goes in the same request.
                if confirmed.len() < CONFIRM_BATCH
                    && let Ok(next) = outbound.try_recv()
                {
                    batches.push(next);
                }
            }
            let result = if confirmed.is_empty() {
                Ok(())
            } else {
                self.confirm(confirmed).await
            };
            for done in waiting {
                let _ = done.send(result.clone().map_err(StoreError::Io));
            }
        }
    }

    async fn publish_routed(&self, topic: &str, publisher: &str, payload: Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, self.node.as_str());
        headers.insert(
            SEQ,
            self.seq
                .fetch_add(1, Ordering::Relaxed)
                .to_string()
                .as_str(),
        );
        headers.insert(PUBLISHER, wire::kv_key(publisher).as_str());
        if let Err(error) = self
            .client
            .publish_with_headers(topic_subject(topic), headers, payload)
            .await
        {
            tracing::warn!(%error, "cluster: message not forwarded");
        }
    }

    /// Sends QoS 1/2 messages to every other live node and waits until each has routed and
    /// stored them. A node that does not answer is asked again until [`CONFIRM_WAIT`]; one
    /// found dead meanwhile is left out (its sessions are taken from their stored copies).
    async fn confirm(&self, items: Vec<(String, String)>) -> Result<(), String> {
        let n = items.len();
        let batch = RouteBatch {
            origin: self.node.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            items,
        };
        let payload = Bytes::from(serde_json::to_vec(&batch).map_err(|e| e.to_string())?);
        let targets: Vec<String> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|name| **name != self.node)
            .cloned()
            .collect();
        let answers = futures_util::future::join_all(
            targets
                .iter()
                .map(|target| self.confirm_at(target, payload.clone())),
        )
        .await;
        for (target, answer) in targets.iter().zip(answers) {
            if let Err(why) = answer {
                tracing::warn!(node = %target, messages = n, %why, "cluster: QoS 1/2 messages not taken by a live node; their publishers are not acknowledged");
                return Err(format!(
                    "cluster node {target} did not take the messages: {why}"
                ));
            }
        }
        Ok(())
    }

    async fn confirm_at(&self, target: &str, payload: Bytes) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + CONFIRM_WAIT;
        loop {
            let answer = tokio::time::timeout(
                HANDOVER_WAIT,
                self.client
                    .request(format!("brokk.node.{target}.route"), payload.clone()),
            )
            .await;
            let why = match answer {
                Ok(Ok(reply)) if &reply.payload[..] == b"ok" => return Ok(()),
                Ok(Ok(_)) => "it could not store them".to_string(),
                Ok(Err(error)) => error.to_string(),
                Err(_) => "no answer in time".to_string(),
            };
            if !self.alive(target).await {
                tracing::warn!(node = %target, "cluster: a node taken for dead did not take QoS 1/2 messages; its sessions resume from their stored copies");
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes QoS 1/2 batches from the other nodes, one at a time: routes them here, and
    /// answers `ok` once what they queued is stored (a batch asked for again is answered as
    /// the first time, not routed twice).
    async fn serve_routes(self: Arc<Self>, mut requests: Subscriber) {
        let mut seen: HashMap<String, (HashMap<u64, bool>, VecDeque<u64>)> = HashMap::new();
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let outcome = match serde_json::from_slice::<RouteBatch>(&message.payload) {
                Ok(batch) => {
                    let (done, order) = seen.entry(batch.origin.clone()).or_default();
                    match done.get(&batch.seq) {
                        Some(ok) => *ok,
                        None => {
                            let ok = self.route_confirmed(batch.items).await;
                            done.insert(batch.seq, ok);
                            order.push_back(batch.seq);
                            if order.len() > SEEN_WINDOW
                                && let Some(old) = order.pop_front()
                            {
                                done.remove(&old);
                            }
                            ok
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cluster: routed batch unreadable");
                    false
                }
            };
            let answer = if outcome { "ok" } else { "failed" };
            if let Err(error) = self.client.publish(reply, Bytes::from(answer)).await {
                tracing::warn!(%error, "cluster: route answer failed");
            }
        }
    }

    async fn route_confirmed(&self, items: Vec<(String, String)>) -> bool {
        let mut commit = Commit::done();
        for (publisher, encoded) in items {
            let publisher = wire::from_kv_key(&publisher).unwrap_or_default();
            let decoded = base64_decode(&encoded)
                .ok_or_else(|| "not base64".to_string())
                .and_then(|bytes| wire::decode_message(&bytes).map_err(|e| e.to_string()));
            match decoded {
                Ok(routed) => {
                    self.remote.increment(1);
                    commit = commit.and(self.sessions.publish_remote(&[routed], &publisher));
                }
                Err(error) => tracing::warn!(%error, "cluster: routed message unreadable"),
            }
        }
        match commit.await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "cluster: messages from another node not stored");
                false
            }
        }
    }

    /// Puts retained messages in their bucket (an empty payload clears the topic), in order.
    async fn store_retained(
        self: Arc<Self>,
        mut retained: mpsc::UnboundedReceiver<(Arc<str>, Bytes)>,
    ) {
        while let Some((topic, payload)) = retained.recv().await {
            let key = wire::kv_key(&topic);
            let empty = decode_is_empty(&payload);
            let stored = if empty {
                self.retained.delete(&key).await.map_err(|e| e.to_string())
            } else {
                self.retained
                    .put(&key, payload)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            if let Err(error) = stored {
                tracing::warn!(topic = %LogId(&topic), %error, "cluster: retained message not stored");
            }
        }
    }

    /// Keeps one NATS subscription per subject the node's subscriptions need.
    async fn subscriptions(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<FilterChange>,
        inbound: mpsc::UnboundedSender<async_nats::Message>,
    ) {
        let mut held: HashMap<String, (i64, Option<JoinHandle<()>>)> = HashMap::new();
        while let Some(change) = changes.recv().await {
            let (filter, delta) = match change {
                FilterChange::Added(f) => (f, 1),
                FilterChange::Removed(f) => (f, -1),
            };
            for subject in filter_subjects(&filter) {
                let slot = held.entry(subject.clone()).or_insert((0, None));
                slot.0 += delta;
                if slot.0 > 0 && slot.1.is_none() {
                    match self.client.subscribe(subject.clone()).await {
                        Ok(subscriber) => {
                            slot.1 = Some(tokio::spawn(pump(subscriber, inbound.clone())));
                        }
                        Err(error) => {
                            tracing::error!(subject = %LogId(&subject), %error, "cluster: cannot subscribe")
                        }
                    }
                } else if slot.0 <= 0 {
                    if let Some(task) = slot.1.take() {
                        task.abort();
                    }
                    if slot.0 == 0 {
                        held.remove(&subject);
                    }
                }
            }
        }
    }

    /// Routes what other nodes published into this node's sessions.
    async fn deliver_loop(
        self: Arc<Self>,
        mut inbound: mpsc::UnboundedReceiver<async_nats::Message>,
    ) {
        let mut seen: HashMap<String, (HashSet<u64>, VecDeque<u64>)> = HashMap::new();
        while let Some(message) = inbound.recv().await {
            let Some(headers) = &message.headers else {
                continue;
            };
            let (Some(origin), Some(seq)) = (headers.get(ORIGIN), headers.get(SEQ)) else {
                continue;
            };
            if origin.as_str() == self.node {
                // Delivered locally when it was published.
                continue;
            }
            let Ok(seq) = seq.as_str().parse::<u64>() else {
                continue;
            };
            let (set, order) = seen.entry(origin.as_str().to_string()).or_default();
            if !set.insert(seq) {
                continue;
            }
            order.push_back(seq);
            if order.len() > SEEN_WINDOW
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
            let publisher = headers
                .get(PUBLISHER)
                .and_then(|p| wire::from_kv_key(p.as_str()))
                .unwrap_or_default();
            match wire::decode_message(&message.payload) {
                Ok(routed) => {
                    self.remote.increment(1);
                    // QoS 0: nothing waits for it.
                    drop(self.sessions.publish_remote(&[routed], &publisher));
                }
                Err(error) => tracing::warn!(%error, "cluster: routed message unreadable"),
            }
        }
    }

    /// Moves every connected session to a live node before this one stops: the session goes
    /// there (waiting for its client), the owner entry names that node, and the client gets
    /// DISCONNECT 0x9C with that node's address as Server Reference. Returns how many moved.
    pub async fn drain(&self) -> usize {
        let live = match self.live_nodes().await {
            Ok(live) => live,
            Err(error) => {
                tracing::warn!(%error, "cluster: drain: no node list; sessions stay");
                return 0;
            }
        };
        let Some((target, address)) = live.into_iter().find(|(name, _)| *name != self.node) else {
            tracing::warn!("cluster: drain: no other live node; sessions stay");
            return 0;
        };
        let _ = self.drain_reference.set(address.clone());
        let mut moved = 0;
        for client_id in self.sessions.connected_ids() {
            let key = wire::kv_key(&client_id);
            match self.owners.entry(key.clone()).await {
                Ok(Some(entry)) if entry.value == self.node.as_bytes() => {}
                _ => continue,
            }
            self.moving().insert(client_id.to_string(), None);
            let encoded = self
                .sessions
                .surrender(&client_id, Surrender::Drained)
                .await
                .and_then(|h| wire::encode_handover(&h).ok());
            self.flush_store().await;
            let Some(bytes) = encoded else {
                self.moving().remove(&*client_id);
                continue;
            };
            if let Some(slot) = self.moving().get_mut(&*client_id) {
                *slot = Some(Bytes::from(bytes));
            }
            // The node asked to adopt it takes it from here (`take_moving`), unless its
            // client, reconnected somewhere first, did.
            let request = AdoptRequest {
                client_id: client_id.to_string(),
            };
            let Ok(payload) = serde_json::to_vec(&request) else {
                continue;
            };
            match tokio::time::timeout(
                HANDOVER_WAIT,
                self.client
                    .request(format!("brokk.node.{target}.adopt"), payload.into()),
            )
            .await
            {
                Ok(Ok(reply)) if !reply.payload.is_empty() => moved += 1,
                _ if !self.moving().contains_key(&*client_id) => moved += 1,
                _ => {
                    self.moving().remove(&*client_id);
                    tracing::warn!(client_id = %LogId(&client_id), node = %target, "cluster: drain: the session was not adopted")
                }
            }
        }
        tracing::info!(sessions = moved, node = %target, "cluster: drained");
        moved
    }

    /// Stops the node's tasks and flushes what it published.
    pub async fn stop(&self) {
        let _ = self.client.flush().await;
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        let _ = self.nodes.delete(&self.node).await;
    }
}

impl Forward for Cluster {
    fn forward(&self, messages: &[Arc<Message>], publisher: &str) -> Commit {
        // `$` topics ($SYS) are each node's own.
        let messages: Vec<Arc<Message>> = messages
            .iter()
            .filter(|m| !m.topic.starts_with('$'))
            .cloned()
            .collect();
        if messages.is_empty() {
            return Commit::done();
        }
        let (commit, done) = if messages.iter().any(|m| m.qos != QoS::AtMostOnce) {
            let (commit, done) = Commit::pending();
            (commit, Some(done))
        } else {
            (Commit::done(), None)
        };
        // A full queue drops the batch: its QoS 1/2 messages' commit fails (the publisher's
        // connection closes unacknowledged and its client sends them again).
        if self
            .outbound
            .try_send((messages, Arc::from(publisher), done))
            .is_err()
        {
            let n = self.unforwarded.fetch_add(1, Ordering::Relaxed);
            if (n + 1).is_power_of_two() {
                tracing::warn!(
                    batches = n + 1,
                    "cluster: NATS is not keeping up; publishes not forwarded to other nodes"
                );
            }
        }
        commit
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// Whether an encoded message has an empty payload (it clears its topic's retained message).
fn decode_is_empty(encoded: &[u8]) -> bool {
    wire::decode_message(encoded).is_ok_and(|m| m.payload.is_empty())
}

async fn pump(mut subscriber: Subscriber, inbound: mpsc::UnboundedSender<async_nats::Message>) {
    while let Some(message) = subscriber.next().await {
        if inbound.send(message).is_err() {
            return;
        }
    }
}

/// Opens a KV bucket, creating its stream (replicated on up to 3 NATS servers) if it does
/// not exist. JetStream may still be electing its leaders right after the servers start:
/// tried again for a few seconds.
async fn bucket(
    js: &jetstream::Context,
    name: &'static str,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut replicas = 3;
    loop {
        let config = stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            allow_rollup: true,
            deny_delete: true,
            // Reads from the stream leader: a replica may not have the latest entry yet, and
            // ownership checks must see it.
            allow_direct: false,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let created = match js.get_stream(format!("KV_{name}")).await {
            Ok(_) => Ok(()),
            Err(_) => js
                .create_stream(config)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        let error = match created {
            Ok(()) => match js.get_key_value(name).await {
                // Readable: its stream has a leader.
                Ok(store) => match store.entry("probe").await {
                    Ok(_) => return Ok(store),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if error.contains("insufficient resources") || error.contains("replicas") {
            // Fewer than 3 NATS servers: as many copies as there are.
            replicas = if replicas == 3 { 1 } else { replicas };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ClusterError::Bucket {
                bucket: name,
                why: error,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
