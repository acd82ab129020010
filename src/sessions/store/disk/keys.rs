//! Keys in the store: big-endian integers so that byte order is numeric order, and a session's
//! keys under one prefix (`u16 length ++ client id`) so that no client id's range contains
//! another's.

/// The prefix of every key that belongs to `client_id`.
pub fn client(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + client_id.len() + 8);
    let len = u16::try_from(client_id.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(client_id.as_bytes());
    key
}

/// A queue (or in-flight) entry: the client's prefix and the sequence number.
pub fn entry(client_id: &str, seq: u64) -> Vec<u8> {
    let mut key = client(client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A subscription: the client's prefix and the filter.
pub fn subscription(client_id: &str, filter: &str) -> Vec<u8> {
    let mut key = client(client_id);
    key.extend_from_slice(filter.as_bytes());
    key
}

/// An inbound QoS 2 packet id awaiting PUBREL.
pub fn inbound(client_id: &str, packet_id: u16) -> Vec<u8> {
    let mut key = client(client_id);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

pub fn message(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Splits a key into its client id and the rest (`None` for a key that is not one of ours).
pub fn split(key: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes(key.get(..2)?.try_into().ok()?));
    let id = std::str::from_utf8(key.get(2..2 + len)?).ok()?;
    Some((id, &key[2 + len..]))
}

pub fn seq_of(rest: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// The end (exclusive) of every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xFF: no finite end; an empty end means "to the end of the keyspace".
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_and_order_numerically() {
        let k = entry("sensor/1", 258);
        let (id, rest) = split(&k).expect("ours");
        assert_eq!((id, seq_of(rest)), ("sensor/1", Some(258)));
        assert!(entry("a", 255) < entry("a", 256));
        // "a" and "ab" never share a range.
        let a_end = prefix_end(&client("a"));
        assert!(entry("ab", 0) >= a_end || entry("ab", 0) < client("a"));
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
    }
}
