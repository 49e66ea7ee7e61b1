//! Peer frames: a 4-byte big-endian length, then one JSON message.
//!
//! JSON keeps the heartbeat readable across protocol versions: a peer of another major
//! version still decodes the fields both know (role, term, liveness), which R13 relies on.
//! The size limit is checked before anything is allocated.

use crate::engine::{Heartbeat, NodeId, ProtocolVersion};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted by default; a heartbeat is about 500 bytes.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// What a connection is for; heartbeats get a connection of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Heartbeats (the election).
    Control,
    /// The configuration store's replication.
    Replication,
    /// One request for the node's own status report, answered with one `Status` frame
    /// (protocol 1.3; only asked of a peer whose heartbeats say it speaks 1.3 or newer).
    Status,
    /// Cluster mode, `keep-if-peers-confirm` (protocol 1.4): one confirmation request of the
    /// active member, answered with one `ConfirmAnswer` frame. Never used between a pair.
    Confirm,
}

/// One message on the peer link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerMessage {
    /// First frame of every connection.
    Hello {
        /// The sender's protocol version.
        version: ProtocolVersion,
        /// The sender's node id.
        node_id: NodeId,
        /// What the connection carries.
        channel: Channel,
    },
    /// A heartbeat for the receiver's engine.
    Heartbeat(Heartbeat),
    /// A replication message for the receiver's store.
    Replication(crate::store::replica::ReplMessage),
    /// The answer on a `Status` connection: the sender's own status report (protocol 1.3).
    /// JSON the link does not look into; the admin API shows it beside the receiver's own.
    Status {
        /// The report, or `{"error": "..."}` when the sender could not make one.
        report: serde_json::Value,
    },
    /// On a `Confirm` connection, from the active member: "I act as active in `term`; do
    /// you confirm?" (protocol 1.4).
    ConfirmAsk {
        /// The asker's term (its leader key's create revision).
        term: u64,
        /// How long the asker may still act as active, in milliseconds: the member vouches
        /// for it to its own clients no longer than that.
        #[serde(default)]
        acting_ms: Option<u64>,
    },
    /// The answer: a promise not to take over for `promised_ms` from when the ask was read,
    /// or why not (`promised_ms` 0).
    ConfirmAnswer {
        /// How long the answering member will not campaign, in milliseconds.
        promised_ms: u64,
        /// Why it does not confirm.
        #[serde(default)]
        refused: Option<String>,
    },
}

/// Why a frame was refused. Any of these closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix exceeds the limit.
    #[error("frame of {length} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// The payload is not a message we understand.
    #[error("garbled frame: {0}")]
    Garbled(#[from] serde_json::Error),
}

/// Encodes `message` as one frame.
pub fn encode(message: &PeerMessage) -> Vec<u8> {
    // Serializing these plain structs cannot fail; an empty payload would be refused by the
    // peer as garbled rather than crash here.
    let payload = serde_json::to_vec(message).unwrap_or_default();
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&payload);
    frame
}

/// Decodes one payload (without its length prefix).
pub fn decode(payload: &[u8]) -> Result<PeerMessage, FrameError> {
    Ok(serde_json::from_slice(payload)?)
}

/// Reads one frame, refusing it before allocation if it is larger than `limit`.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> Result<PeerMessage, FrameError> {
    let mut prefix = [0u8; 4];
    reader.read_exact(&mut prefix).await?;
    let length = u32::from_be_bytes(prefix) as usize;
    if length > limit {
        return Err(FrameError::TooLarge { length, limit });
    }
    buffer.resize(length, 0);
    reader.read_exact(buffer).await?;
    decode(buffer)
}

/// Writes one message and flushes it.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &PeerMessage,
) -> std::io::Result<()> {
    writer.write_all(&encode(message)).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> PeerMessage {
        PeerMessage::Hello {
            version: ProtocolVersion::CURRENT,
            node_id: NodeId::from("a"),
            channel: Channel::Control,
        }
    }

    #[tokio::test]
    async fn a_message_survives_the_round_trip() {
        let frame = encode(&hello());
        let mut buffer = Vec::new();
        let decoded = read_message(&mut frame.as_slice(), &mut buffer, DEFAULT_MAX_FRAME)
            .await
            .expect("decodes");
        assert_eq!(decoded, hello());
    }

    #[tokio::test]
    async fn a_replication_message_survives_the_round_trip() {
        use crate::store::replica::ReplMessage;
        let message = PeerMessage::Replication(ReplMessage::Fork { common: 7 });
        let frame = encode(&message);
        let mut buffer = Vec::new();
        let decoded = read_message(&mut frame.as_slice(), &mut buffer, DEFAULT_MAX_FRAME)
            .await
            .expect("decodes");
        assert_eq!(decoded, message);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_reading_it() {
        let mut frame = (u32::MAX).to_be_bytes().to_vec();
        frame.extend_from_slice(b"{}");
        let mut buffer = Vec::new();
        let error = read_message(&mut frame.as_slice(), &mut buffer, DEFAULT_MAX_FRAME)
            .await
            .expect_err("refused");
        assert!(matches!(error, FrameError::TooLarge { .. }), "{error}");
        assert!(buffer.capacity() < 1024, "allocated for a refused frame");
    }

    #[tokio::test]
    async fn garbage_is_refused_not_panicked_on() {
        for payload in [
            &b"not json"[..],
            b"{\"type\":\"nonsense\"}",
            b"",
            b"\xff\xfe",
        ] {
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(payload);
            let mut buffer = Vec::new();
            let result = read_message(&mut frame.as_slice(), &mut buffer, DEFAULT_MAX_FRAME).await;
            assert!(matches!(result, Err(FrameError::Garbled(_))), "{payload:?}");
        }
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_io_error() {
        let frame = encode(&hello());
        let mut buffer = Vec::new();
        let result = read_message(
            &mut &frame[..frame.len() - 3],
            &mut buffer,
            DEFAULT_MAX_FRAME,
        )
        .await;
        assert!(matches!(result, Err(FrameError::Io(_))));
    }
}
