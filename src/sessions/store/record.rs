//! The on-disk encoding of what the durable session store keeps: one record per stored value
//! (a session, a message body, a queue entry, an in-flight packet, an inbound QoS 2 packet id,
//! a retained message, a revoked user). Plain data: the records know nothing of brokk's live
//! types, so the store can convert at its edge and this format stays stable on its own.
//!
//! Every record is framed the same way (integers little-endian):
//!
//! ```text
//! offset 0     format version (u8, now 1)
//! offset 1     record kind (u8, see RecordKind)
//! offset 2     body length (u32)
//! offset 6     body
//! end - 4      CRC-32C (Castagnoli) of every byte before it
//! ```
//!
//! Decoding checks the checksum before it reads anything else, so a flipped bit or byte
//! anywhere in a record is reported as [`FormatError::Checksum`] (CRC-32C detects every error
//! burst of up to 32 bits); the declared length must match the bytes given, so a truncated or
//! extended record fails even where its tail happens to look like a checksum. The body is read
//! with every length checked against the bytes left, so hostile input can neither panic the
//! decoder nor make it allocate more than the input's own size.
//!
//! Wall-clock deadlines are unix milliseconds (what survives a restart); `None` is "no deadline".
//! v5 properties are kept as the raw bytes of the property section (what the codec produced), so
//! new properties need no format change.

use bytes::Bytes;

/// The format version written by [`encode`]; [`decode`] reads this one.
pub const FORMAT_VERSION: u8 = 1;

const HEADER: usize = 6;
const TRAILER: usize = 4;

/// What a record holds, the second byte of every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Session = 1,
    Message = 2,
    QueueEntry = 3,
    Inflight = 4,
    InboundQos2 = 5,
    Retained = 6,
    RevokedUser = 7,
    Subscription = 8,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        Some(match b {
            1 => RecordKind::Session,
            2 => RecordKind::Message,
            3 => RecordKind::QueueEntry,
            4 => RecordKind::Inflight,
            5 => RecordKind::InboundQos2,
            6 => RecordKind::Retained,
            7 => RecordKind::RevokedUser,
            8 => RecordKind::Subscription,
            _ => return None,
        })
    }
}

/// Why a record could not be read (or, for [`FormatError::FieldTooLong`], written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("record truncated: {len} bytes, a record has at least {min}")]
    Truncated { len: usize, min: usize },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("expected a {expected:?} record, found {found:?}")]
    WrongKind {
        expected: RecordKind,
        found: RecordKind,
    },
    #[error("record body is {declared} bytes by its header, {actual} by its size")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("{field}: needs {needed} bytes, {left} left in the record")]
    Overrun {
        field: &'static str,
        needed: u64,
        left: usize,
    },
    #[error("{field}: not valid UTF-8")]
    Utf8 { field: &'static str },
    #[error("{field}: invalid value {value}")]
    InvalidValue { field: &'static str, value: u64 },
    #[error("{0} bytes left over after the record body")]
    Trailing(usize),
    #[error("{field}: {len} bytes do not fit a record")]
    FieldTooLong { field: &'static str, len: usize },
}

/// A persistent session's state apart from its queue: what a restart needs to take it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub client_id: String,
    /// The user name the session's client logged in with (a revoke ends that user's sessions).
    pub username: Option<String>,
    /// The CONNECT's protocol level: 4 (3.1.1) or 5 (5.0).
    pub protocol_version: u8,
    /// Session Expiry Interval in seconds, as granted.
    pub expiry_interval: u32,
    /// When the session ends if no client takes it back (set while it has no connection).
    pub expires_at_ms: Option<u64>,
    pub will: Option<WillRecord>,
    pub subscriptions: Vec<SubscriptionRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WillRecord {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// v5 will properties, raw.
    pub properties: Bytes,
    /// Will Delay Interval in seconds (0 for 3.1.1).
    pub delay_interval: u32,
    /// When a pending (delayed) will is published; `None` while its connection is open.
    pub publish_at_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The filter as subscribed (`$share/group/...` included).
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 send at subscribe, 1 only if new, 2 never (kept for a faithful restore).
    pub retain_handling: u8,
    pub subscription_identifier: Option<u32>,
}

/// A published message's body, stored once and referenced by every queue entry that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    pub topic: String,
    pub payload: Bytes,
    /// The publisher's QoS.
    pub qos: u8,
    /// The publisher's RETAIN flag.
    pub retain: bool,
    /// v5 message properties, raw.
    pub properties: Bytes,
    /// Message expiry deadline.
    pub expires_at_ms: Option<u64>,
}

/// One message in one session's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntryRecord {
    /// The session's sequence number: consecutive per session, so a gap is a lost message.
    pub seq: u64,
    /// The key of the [`MessageRecord`] this entry refers to.
    pub message_id: u64,
    /// The delivery QoS: min(publish QoS, granted QoS).
    pub qos: u8,
    /// The RETAIN flag to send.
    pub retain: bool,
    pub subscription_identifiers: Vec<u32>,
}

/// Where an outbound QoS 1/2 delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InflightState {
    /// QoS 1 PUBLISH sent, PUBACK awaited (resent with DUP after a restart).
    AwaitingPubAck = 0,
    /// QoS 2 PUBLISH sent, PUBREC awaited (resent with DUP after a restart).
    AwaitingPubRec = 1,
    /// PUBREL sent, PUBCOMP awaited (PUBREL resent after a restart).
    AwaitingPubComp = 2,
    /// Acknowledged (or dropped, or expired) out of order: the entry stays, marked, until the
    /// entries before it are done too, so a stored queue never has holes and a missing entry
    /// always means a loss.
    Done = 3,
}

/// An outbound packet id in use: the delivery it carries is the queue entry `seq`, kept until
/// the acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InflightRecord {
    pub packet_id: u16,
    pub state: InflightState,
    pub seq: u64,
}

/// An inbound QoS 2 packet id that got PUBREC and awaits PUBREL (a PUBLISH reusing it is a
/// duplicate, not routed again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundQos2Record {
    pub packet_id: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedRecord {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// v5 message properties, raw.
    pub properties: Bytes,
    pub expires_at_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedUserRecord {
    pub username: String,
    pub revoked_at_ms: u64,
}

/// Any record, as [`decode_any`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Session(SessionRecord),
    Message(MessageRecord),
    QueueEntry(QueueEntryRecord),
    Inflight(InflightRecord),
    InboundQos2(InboundQos2Record),
    Retained(RetainedRecord),
    RevokedUser(RevokedUserRecord),
    Subscription(SubscriptionRecord),
}

/// A record type: its kind byte and its body.
pub trait StoredRecord: Sized {
    const KIND: RecordKind;
    #[doc(hidden)]
    fn write_body(&self, w: &mut Writer) -> Result<(), FormatError>;
    #[doc(hidden)]
    fn read_body(r: &mut Reader<'_>) -> Result<Self, FormatError>;
}

/// Encodes `record` with its frame and checksum. Fails on what [`decode`] would refuse: a QoS or
/// Retain Handling above 2, a protocol level other than 4 or 5, packet id 0, a field of 4 GiB
/// or more, a list of 2^32 items or more.
pub fn encode<R: StoredRecord>(record: &R) -> Result<Vec<u8>, FormatError> {
    let mut w = Writer(Vec::with_capacity(64));
    record.write_body(&mut w)?;
    Ok(seal(FORMAT_VERSION, R::KIND as u8, &w.0))
}

/// Decodes a record of type `R`: any damage, or another kind of record, is an error.
pub fn decode<R: StoredRecord>(bytes: &[u8]) -> Result<R, FormatError> {
    let (kind, body) = open(bytes)?;
    if kind != R::KIND {
        return Err(FormatError::WrongKind {
            expected: R::KIND,
            found: kind,
        });
    }
    read_all(body)
}

/// Decodes a record of any kind.
pub fn decode_any(bytes: &[u8]) -> Result<Record, FormatError> {
    let (kind, body) = open(bytes)?;
    Ok(match kind {
        RecordKind::Session => Record::Session(read_all(body)?),
        RecordKind::Message => Record::Message(read_all(body)?),
        RecordKind::QueueEntry => Record::QueueEntry(read_all(body)?),
        RecordKind::Inflight => Record::Inflight(read_all(body)?),
        RecordKind::InboundQos2 => Record::InboundQos2(read_all(body)?),
        RecordKind::Retained => Record::Retained(read_all(body)?),
        RecordKind::RevokedUser => Record::RevokedUser(read_all(body)?),
        RecordKind::Subscription => Record::Subscription(read_all(body)?),
    })
}

impl Record {
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        match self {
            Record::Session(r) => encode(r),
            Record::Message(r) => encode(r),
            Record::QueueEntry(r) => encode(r),
            Record::Inflight(r) => encode(r),
            Record::InboundQos2(r) => encode(r),
            Record::Retained(r) => encode(r),
            Record::RevokedUser(r) => encode(r),
            Record::Subscription(r) => encode(r),
        }
    }
}

/// Frames `body` as a record of `version` and `kind` with a valid checksum, whatever the bytes.
/// For tests and the fuzzer, which need well-framed records with arbitrary bodies.
#[doc(hidden)]
pub fn seal(version: u8, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len() + TRAILER);
    out.push(version);
    out.push(kind);
    // A body over 4 GiB cannot come from `encode` (its fields are checked); saturating keeps
    // this total, and such a record fails its length check when read.
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the frame: size, checksum, version, kind, length. Returns the kind and the body.
fn open(bytes: &[u8]) -> Result<(RecordKind, &[u8]), FormatError> {
    let min = HEADER + TRAILER;
    if bytes.len() < min {
        return Err(FormatError::Truncated {
            len: bytes.len(),
            min,
        });
    }
    let (framed, trailer) = bytes.split_at(bytes.len() - TRAILER);
    let stored = u32::from_le_bytes(array(trailer)?);
    let computed = crc32c::crc32c(framed);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    let (header, body) = framed.split_at(HEADER);
    if header[0] != FORMAT_VERSION {
        return Err(FormatError::UnknownVersion(header[0]));
    }
    let kind = RecordKind::from_u8(header[1]).ok_or(FormatError::UnknownKind(header[1]))?;
    let declared = u32::from_le_bytes(array(&header[2..])?);
    if u64::from(declared) != body.len() as u64 {
        return Err(FormatError::LengthMismatch {
            declared: declared.into(),
            actual: body.len() as u64,
        });
    }
    Ok((kind, body))
}

fn read_all<R: StoredRecord>(body: &[u8]) -> Result<R, FormatError> {
    let mut r = Reader(body);
    let record = R::read_body(&mut r)?;
    if !r.0.is_empty() {
        return Err(FormatError::Trailing(r.0.len()));
    }
    Ok(record)
}

fn array<const N: usize>(b: &[u8]) -> Result<[u8; N], FormatError> {
    b.get(..N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(FormatError::Overrun {
            field: "integer",
            needed: N as u64,
            left: b.len(),
        })
}

/// Appends the fields of a record body.
#[doc(hidden)]
pub struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A value at most `max` (QoS, Retain Handling): what the reader accepts, so that every
    /// record `encode` produces decodes.
    fn small(&mut self, field: &'static str, v: u8, max: u8) -> Result<(), FormatError> {
        check_small(field, v, max)?;
        self.u8(v);
        Ok(())
    }
    fn packet_id(&mut self, v: u16) -> Result<(), FormatError> {
        self.u16(nonzero_packet_id(v)?);
        Ok(())
    }
    fn len(&mut self, field: &'static str, len: usize) -> Result<(), FormatError> {
        let n = u32::try_from(len).map_err(|_| FormatError::FieldTooLong { field, len })?;
        self.u32(n);
        Ok(())
    }
    fn bytes(&mut self, field: &'static str, v: &[u8]) -> Result<(), FormatError> {
        self.len(field, v.len())?;
        self.0.extend_from_slice(v);
        Ok(())
    }
    fn str(&mut self, field: &'static str, v: &str) -> Result<(), FormatError> {
        self.bytes(field, v.as_bytes())
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.u32(v);
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.u64(v);
        }
    }
    fn opt_str(&mut self, field: &'static str, v: Option<&str>) -> Result<(), FormatError> {
        self.bool(v.is_some());
        match v {
            Some(v) => self.str(field, v),
            None => Ok(()),
        }
    }
}

/// Reads the fields of a record body, each checked against the bytes left.
#[doc(hidden)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, n: u64) -> Result<&'a [u8], FormatError> {
        let left = self.0.len();
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or(FormatError::Overrun {
                field,
                needed: n,
                left,
            })?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn fixed<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FormatError> {
        array(self.take(field, N as u64)?)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, FormatError> {
        Ok(self.fixed::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.fixed(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.fixed(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.fixed(field)?))
    }
    /// A byte that must be 0 or 1 (anything else is damage, and would not re-encode the same).
    fn bool(&mut self, field: &'static str) -> Result<bool, FormatError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(FormatError::InvalidValue {
                field,
                value: v.into(),
            }),
        }
    }
    /// A value at most `max` (QoS, Retain Handling).
    fn small(&mut self, field: &'static str, max: u8) -> Result<u8, FormatError> {
        let v = self.u8(field)?;
        check_small(field, v, max)?;
        Ok(v)
    }
    fn slice(&mut self, field: &'static str) -> Result<&'a [u8], FormatError> {
        let len = self.u32(field)?;
        self.take(field, len.into())
    }
    fn bytes(&mut self, field: &'static str) -> Result<Bytes, FormatError> {
        Ok(Bytes::copy_from_slice(self.slice(field)?))
    }
    fn string(&mut self, field: &'static str) -> Result<String, FormatError> {
        let raw = self.slice(field)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| FormatError::Utf8 { field })
    }
    fn opt_u32(&mut self, field: &'static str) -> Result<Option<u32>, FormatError> {
        Ok(if self.bool(field)? {
            Some(self.u32(field)?)
        } else {
            None
        })
    }
    fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, FormatError> {
        Ok(if self.bool(field)? {
            Some(self.u64(field)?)
        } else {
            None
        })
    }
    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, FormatError> {
        Ok(if self.bool(field)? {
            Some(self.string(field)?)
        } else {
            None
        })
    }
    /// A list's item count, refused when even items of `min_item` bytes could not fit in what
    /// is left: the capacity reserved for the list is bounded by the input's size.
    fn count(&mut self, field: &'static str, min_item: usize) -> Result<usize, FormatError> {
        let n = u64::from(self.u32(field)?);
        let needed = n.saturating_mul(min_item as u64);
        if needed > self.0.len() as u64 {
            return Err(FormatError::Overrun {
                field,
                needed,
                left: self.0.len(),
            });
        }
        usize::try_from(n).map_err(|_| FormatError::InvalidValue { field, value: n })
    }
}

/// Bytes of the smallest encoded subscription: filter length, QoS, three flags, id tag.
const MIN_SUBSCRIPTION: usize = 4 + 1 + 1 + 1 + 1 + 1;

impl StoredRecord for SessionRecord {
    const KIND: RecordKind = RecordKind::Session;
    fn write_body(&self, w: &mut Writer) -> Result<(), FormatError> {
        w.str("client_id", &self.client_id)?;
        w.opt_str("username", self.username.as_deref())?;
        w.u8(check_protocol_version(self.protocol_version)?);
        w.u32(self.expiry_interval);
        w.opt_u64(self.expires_at_ms);
        w.bool(self.will.is_some());
        if let Some(will) = &self.will {
            will.write(w)?;
        }
        w.len("subscriptions", self.subscriptions.len())?;
        for s in &self.subscriptions {
            s.write(w)?;
        }
        Ok(())
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        let client_id = r.string("client_id")?;
        let username = r.opt_string("username")?;
        let protocol_version = check_protocol_version(r.u8("protocol_version")?)?;
        let expiry_interval = r.u32("expiry_interval")?;
        let expires_at_ms = r.opt_u64("expires_at_ms")?;
        let will = if r.bool("will")? {
            Some(WillRecord::read(r)?)
        } else {
            None
        };
        let n = r.count("subscriptions", MIN_SUBSCRIPTION)?;
        let mut subscriptions = Vec::with_capacity(n);
        for _ in 0..n {
            subscriptions.push(SubscriptionRecord::read(r)?);
        }
        Ok(SessionRecord {
            client_id,
            username,
            protocol_version,
            expiry_interval,
            expires_at_ms,
            will,
            subscriptions,
        })
    }
}

impl WillRecord {
    fn write(&self, w: &mut Writer) -> Result<(), FormatError> {
        w.str("will.topic", &self.topic)?;
        w.bytes("will.payload", &self.payload)?;
        w.small("will.qos", self.qos, 2)?;
        w.bool(self.retain);
        w.bytes("will.properties", &self.properties)?;
        w.u32(self.delay_interval);
        w.opt_u64(self.publish_at_ms);
        Ok(())
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        Ok(WillRecord {
            topic: r.string("will.topic")?,
            payload: r.bytes("will.payload")?,
            qos: r.small("will.qos", 2)?,
            retain: r.bool("will.retain")?,
            properties: r.bytes("will.properties")?,
            delay_interval: r.u32("will.delay_interval")?,
            publish_at_ms: r.opt_u64("will.publish_at_ms")?,
        })
    }
}

impl SubscriptionRecord {
    fn write(&self, w: &mut Writer) -> Result<(), FormatError> {
        w.str("subscription.filter", &self.filter)?;
        w.small("subscription.qos", self.qos, 2)?;
        w.bool(self.no_local);
        w.bool(self.retain_as_published);
        w.small("subscription.retain_handling", self.retain_handling, 2)?;
        w.opt_u32(self.subscription_identifier);
        Ok(())
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        Ok(SubscriptionRecord {
            filter: r.string("subscription.filter")?,
            qos: r.small("subscription.qos", 2)?,
            no_local: r.bool("subscription.no_local")?,
            retain_as_published: r.bool("subscription.retain_as_published")?,
            retain_handling: r.small("subscription.retain_handling", 2)?,
            subscription_identifier: r.opt_u32("subscription.identifier")?,
        })
    }
}

/// A subscription on its own, keyed by its session and filter (a session with thousands of
/// subscriptions is not rewritten whole for each one).
impl StoredRecord for SubscriptionRecord {
    const KIND: RecordKind = RecordKind::Subscription;
    fn write_body(&self, w: &mut Writer) -> Result<(), FormatError> {
        self.write(w)
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        SubscriptionRecord::read(r)
    }
}

impl StoredRecord for MessageRecord {
    const KIND: RecordKind = RecordKind::Message;
    fn write_body(&self, w: &mut Writer) -> Result<(), FormatError> {
        w.str("topic", &self.topic)?;
        w.bytes("payload", &self.payload)?;
        w.small("qos", self.qos, 2)?;
        w.bool(self.retain);
        w.bytes("properties", &self.properties)?;
        w.opt_u64(self.expires_at_ms);
        Ok(())
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        Ok(MessageRecord {
            topic: r.string("topic")?,
            payload: r.bytes("payload")?,
            qos: r.small("qos", 2)?,
            retain: r.bool("retain")?,
            properties: r.bytes("properties")?,
            expires_at_ms: r.opt_u64("expires_at_ms")?,
        })
    }
}

impl StoredRecord for QueueEntryRecord {
    const KIND: RecordKind = RecordKind::QueueEntry;
    fn write_body(&self, w: &mut Writer) -> Result<(), FormatError> {
        w.u64(self.seq);
        w.u64(self.message_id);
        w.small("qos", self.qos, 2)?;
        w.bool(self.retain);
        w.len(
            "subscription_identifiers",
            self.subscription_identifiers.len(),
        )?;
        for id in &self.subscription_identifiers {
            w.u32(*id);
        }
        Ok(())
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        let seq = r.u64("seq")?;
        let message_id = r.u64("message_id")?;
        let qos = r.small("qos", 2)?;
        let retain = r.bool("retain")?;
        let n = r.count("subscription_identifiers", 4)?;
        let mut subscription_identifiers = Vec::with_capacity(n);
        for _ in 0..n {
            subscription_identifiers.push(r.u32("subscription_identifiers")?);
        }
        Ok(QueueEntryRecord {
            seq,
            message_id,
            qos,
            retain,
            subscription_identifiers,
        })
    }
}

impl StoredRecord for InflightRecord {
    const KIND: RecordKind = RecordKind::Inflight;
    fn write_body(&self, w: &mut Writer) -> Result<(), FormatError> {
        w.packet_id(self.packet_id)?;
        w.u8(self.state as u8);
        w.u64(self.seq);
        Ok(())
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        let packet_id = nonzero_packet_id(r.u16("packet_id")?)?;
        let state = match r.u8("state")? {
            0 => InflightState::AwaitingPubAck,
            1 => InflightState::AwaitingPubRec,
            2 => InflightState::AwaitingPubComp,
            3 => InflightState::Done,
            v => {
                return Err(FormatError::InvalidValue {
                    field: "state",
                    value: v.into(),
                });
            }
        };
        let seq = r.u64("seq")?;
        Ok(InflightRecord {
            packet_id,
            state,
            seq,
        })
    }
}

fn check_small(field: &'static str, v: u8, max: u8) -> Result<(), FormatError> {
    if v > max {
        return Err(FormatError::InvalidValue {
            field,
            value: v.into(),
        });
    }
    Ok(())
}

/// The protocol levels brokk speaks: 4 (3.1.1) and 5 (5.0).
fn check_protocol_version(v: u8) -> Result<u8, FormatError> {
    if !matches!(v, 4 | 5) {
        return Err(FormatError::InvalidValue {
            field: "protocol_version",
            value: v.into(),
        });
    }
    Ok(v)
}

fn nonzero_packet_id(id: u16) -> Result<u16, FormatError> {
    if id == 0 {
        return Err(FormatError::InvalidValue {
            field: "packet_id",
            value: 0,
        });
    }
    Ok(id)
}

impl StoredRecord for InboundQos2Record {
    const KIND: RecordKind = RecordKind::InboundQos2;
    fn write_body(&self, w: &mut Writer) -> Result<(), FormatError> {
        w.packet_id(self.packet_id)
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        Ok(InboundQos2Record {
            packet_id: nonzero_packet_id(r.u16("packet_id")?)?,
        })
    }
}

impl StoredRecord for RetainedRecord {
    const KIND: RecordKind = RecordKind::Retained;
    fn write_body(&self, w: &mut Writer) -> Result<(), FormatError> {
        w.str("topic", &self.topic)?;
        w.bytes("payload", &self.payload)?;
        w.small("qos", self.qos, 2)?;
        w.bytes("properties", &self.properties)?;
        w.opt_u64(self.expires_at_ms);
        Ok(())
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        Ok(RetainedRecord {
            topic: r.string("topic")?,
            payload: r.bytes("payload")?,
            qos: r.small("qos", 2)?,
            properties: r.bytes("properties")?,
            expires_at_ms: r.opt_u64("expires_at_ms")?,
        })
    }
}

impl StoredRecord for RevokedUserRecord {
    const KIND: RecordKind = RecordKind::RevokedUser;
    fn write_body(&self, w: &mut Writer) -> Result<(), FormatError> {
        w.str("username", &self.username)?;
        w.u64(self.revoked_at_ms);
        Ok(())
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        Ok(RevokedUserRecord {
            username: r.string("username")?,
            revoked_at_ms: r.u64("revoked_at_ms")?,
        })
    }
}

#[cfg(test)]
mod tests;
