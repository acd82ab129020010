//! What a connection travels over besides plain TCP and TLS (`crate::tls`): WebSocket
//! ([`websocket`]) and the PROXY protocol header a load balancer puts in front ([`proxy`]).

pub mod proxy;
pub mod websocket;
