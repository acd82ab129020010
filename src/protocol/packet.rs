//! brokk's own, version-neutral packet model.
//!
//! Everything outside `src/protocol/` speaks these types; the codec crate's types never leave
//! this module. Fields carry MQTT 5.0 meaning; for 3.1.1 the codec maps them (a v5 reason code
//! in a CONNACK becomes the nearest 3.1.1 return code, v5-only properties are dropped).

use bytes::Bytes;

/// The protocol level chosen by the client's CONNECT (4 = 3.1.1, 5 = 5.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    /// The label used in metrics (`protocol` = `3.1.1` / `5.0`).
    pub fn label(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5.0",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            QoS::AtMostOnce => "0",
            QoS::AtLeastOnce => "1",
            QoS::ExactlyOnce => "2",
        }
    }
}

pub type UserProperties = Vec<(String, String)>;

/// The application-message properties of MQTT 5.0 that a broker passes through unchanged
/// from publisher to subscriber (and from a will to its subscribers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    /// Seconds; the broker counts it down while the message waits.
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 Will Delay Interval in seconds (0 for 3.1.1).
    pub delay_interval: u32,
    pub properties: MessageProperties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    /// May be empty: the broker assigns one (3.1.1 only with clean session).
    pub client_id: String,
    /// 3.1.1 Clean Session / v5 Clean Start.
    pub clean_start: bool,
    /// Seconds; 0 = no keep-alive.
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// v5 Session Expiry Interval, seconds; `None` when absent (means 0).
    pub session_expiry_interval: Option<u32>,
    /// v5 Receive Maximum; `None` when absent (means 65,535).
    pub receive_maximum: Option<u16>,
    /// v5 Maximum Packet Size the client accepts; `None` = no limit beyond the protocol's.
    pub maximum_packet_size: Option<u32>,
    /// v5 Topic Alias Maximum the client accepts from us; `None` = 0.
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<u8>,
    pub request_problem_information: Option<u8>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

impl Connect {
    /// A CONNECT with clean start, no keep-alive, no credentials, will or properties: the
    /// base that clients (tests, the load generator, the fuzzer) adjust.
    pub fn new(version: Version, client_id: &str) -> Connect {
        Connect {
            version,
            client_id: client_id.to_string(),
            clean_start: true,
            keep_alive: 0,
            username: None,
            password: None,
            will: None,
            session_expiry_interval: None,
            receive_maximum: None,
            maximum_packet_size: None,
            topic_alias_maximum: None,
            request_response_information: None,
            request_problem_information: None,
            authentication_method: None,
            authentication_data: None,
            user_properties: Vec::new(),
        }
    }
}

/// CONNACK properties the server sends (v5 only; ignored for 3.1.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    /// The CONNECT's Authentication Method, repeated on success (MQTT-4.12.0-5).
    pub authentication_method: Option<String>,
    pub user_properties: UserProperties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// A v5 CONNACK reason code (0x00 success, 0x80.. refusals). For 3.1.1 the codec maps it:
    /// 0x84 -> 1, 0x85 -> 2, 0x88/0x89/0x97/0x9F -> 3, 0x86 -> 4, 0x87 -> 5, others -> 3.
    pub reason_code: u8,
    pub properties: ConnAckProperties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty on an inbound v5 PUBLISH that uses a topic alias.
    pub topic: String,
    /// 0 for QoS 0.
    pub packet_id: u16,
    pub payload: Bytes,
    pub topic_alias: Option<u16>,
    /// v5 Subscription Identifiers (outbound only).
    pub subscription_identifiers: Vec<u32>,
    pub properties: MessageProperties,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    /// v5 reason code; 0x00 = success. Ignored for 3.1.1.
    pub reason_code: u8,
    pub reason_string: Option<String>,
}

impl Ack {
    pub fn success(packet_id: u16) -> Ack {
        Ack {
            packet_id,
            reason_code: 0,
            reason_string: None,
        }
    }
}

/// Retain Handling of a v5 subscription option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    SendAtSubscribe,
    /// 1: send them only if the subscription did not exist.
    SendIfNew,
    /// 2: never send them.
    DoNotSend,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRequest {
    pub filter: String,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<SubscriptionRequest>,
    /// v5 Subscription Identifier (1..=268,435,455).
    pub subscription_identifier: Option<u32>,
    pub user_properties: UserProperties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    /// v5 reason codes: 0/1/2 granted QoS, 0x80.. failures. For 3.1.1 every failure is 0x80.
    pub reason_codes: Vec<u8>,
    pub reason_string: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
    pub user_properties: UserProperties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// v5 reason codes (0x00 success, 0x11 no subscription existed, ...). Not sent for 3.1.1.
    pub reason_codes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// v5 reason code; 0x00 normal, 0x04 with will, 0x8E session taken over, ...
    pub reason_code: u8,
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<String>,
    pub server_reference: Option<String>,
}

impl Disconnect {
    pub fn with_reason(reason_code: u8, reason_string: Option<String>) -> Disconnect {
        Disconnect {
            reason_code,
            session_expiry_interval: None,
            reason_string,
            server_reference: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub reason_code: u8,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}
