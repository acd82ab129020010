//! Target `websocket`: the WebSocket adapter (`brokk::transport::websocket::WsStream`, the
//! server side of an upgraded connection with a 1,024-byte frame and message limit) fed a
//! client's bytes over `tokio::io::duplex`, on a current-thread runtime with paused time.
//!
//! Input: a flags byte, then either raw bytes (flag bit 0 clear: whatever a hostile client
//! might send), or (bit 0 set) chunks `[control] [length] [length bytes]` that the target turns
//! into well-formed masked frames: control % 4 = 0 one binary frame, 1 a ping (payload cut to
//! 125 bytes), 2 one binary message in two fragments, 3 a text frame (which must end the
//! stream with the text-frame violation).
//!
//! Checked: no panic; the stream always ends (EOF or an error) once the client's bytes are
//! in; it never yields more bytes than the client sent; for well-formed frames it yields
//! exactly the binary payloads in order, and a text frame ends it with
//! `Violation::TextFrame` after the payloads before it.

use std::time::Duration;

use brokk::transport::websocket::{self, Violation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The frame limit the target's stream runs with.
const MAX: usize = 1024;

/// One masked client frame.
pub fn frame(fin: bool, opcode: u8, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Well-formed frames from chunks: the bytes to send, the payload the stream must yield, and
/// whether a text frame ends it.
pub fn structured(mut data: &[u8]) -> (Vec<u8>, Vec<u8>, bool) {
    let (mut wire, mut expected) = (Vec::new(), Vec::new());
    while let [control, len, rest @ ..] = data {
        let len = usize::from(*len).min(rest.len());
        let (payload, tail) = rest.split_at(len);
        data = tail;
        let key = [*control, control.wrapping_mul(7), 0x5a, len as u8];
        match control % 4 {
            0 => {
                wire.extend(frame(true, 2, key, payload));
                expected.extend_from_slice(payload);
            }
            1 => wire.extend(frame(true, 9, key, &payload[..payload.len().min(125)])),
            2 => {
                let (a, b) = payload.split_at(payload.len() / 2);
                wire.extend(frame(false, 2, key, a));
                wire.extend(frame(true, 0, key, b));
                expected.extend_from_slice(payload);
            }
            _ => {
                wire.extend(frame(true, 1, key, b"text"));
                return (wire, expected, true);
            }
        }
    }
    (wire, expected, false)
}

pub fn websocket_target(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (input, expected) = if flags & 1 == 1 {
        let (wire, payload, text) = structured(rest);
        (wire, Some((payload, text)))
    } else {
        (rest.to_vec(), None)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut ws = websocket::over_upgraded(server, websocket::frame_config(MAX)).await;
        let sent = input.len();
        let client_task = tokio::spawn(async move {
            let (mut reader, mut writer) = tokio::io::split(client);
            let _ = writer.write_all(&input).await;
            let _ = writer.shutdown().await;
            // Take whatever the server sends (pongs, a close frame) so it never blocks.
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink).await;
        });
        let mut out = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match ws.read_buf(&mut out).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => assert!(out.len() <= sent, "more bytes out than the client sent"),
                    Err(error) => return Err(error),
                }
            }
        })
        .await
        .expect("the stream ends once the client's bytes are in");
        if let Some((payload, text)) = expected {
            assert_eq!(out, payload, "the binary payloads, in order");
            match (&ended, text) {
                (Ok(()), false) => {}
                (Err(error), true) => assert!(
                    matches!(Violation::of(error), Some(Violation::TextFrame)),
                    "a text frame ends the stream as such: {error}"
                ),
                _ => panic!("text frame {text}, stream ended with {ended:?}"),
            }
        }
        // The broker's side of a close: the close frame goes out, or the peer is gone.
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.shutdown()).await;
        drop(ws);
        let _ = client_task.await;
    });
}
