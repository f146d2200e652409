//! The ten frames of one handoff, built once as our [`Message`] and once as
//! the reference's, with the same field values, so the codec benchmark
//! compares the same bytes.
//!
//! The values are what a real handoff carries: a 40-character git hash as
//! the build id, a random id, 16 shards whose revisions are in the millions
//! (3- and 4-byte varints), one `ip:port` address, and a Unix time in
//! milliseconds for the heartbeat.

use handoff::protocol::{
    Capabilities as RefCapabilities, HandoffId as RefHandoffId, Message as RefMessage,
    Side as RefSide,
};
use handoff_core::{Capabilities, HandoffId, Message, Revisions, Side, Strings, encode_frame};
use uuid::Uuid;

/// The protocol version the frames carry.
pub const VERSION: u16 = 1;

/// The frames, in the order a handoff sends them.
pub const NAMES: [&str; 10] = [
    "Hello",
    "HelloAck",
    "PrepareHandoff",
    "Drained",
    "SealRequest",
    "SealComplete",
    "Begin",
    "Ready",
    "Commit",
    "Heartbeat",
];

/// The handoff id.
pub const ID: [u8; 16] = [
    0x3f, 0x9a, 0x1c, 0xe2, 0x07, 0xb4, 0x4d, 0x81, 0x95, 0x6e, 0x20, 0xd3, 0xff, 0x00, 0x58, 0xc7,
];

/// A git commit hash, as a daemon would announce its build.
pub const BUILD_ID: &[u8] = b"3f9a1ce207b44d81956e20d3ff0058c7a1b2c3d4";

/// Sixteen shard revisions, from a hundred thousand to a few hundred million.
pub const REVISIONS: [u64; 16] = [
    104_729,
    1_299_709,
    15_485_863,
    179_424_673,
    2_038_074_743,
    982_451_653,
    32_452_843,
    49_979_687,
    86_028_121,
    122_949_823,
    141_650_939,
    160_481_183,
    179_424_691,
    198_491_317,
    217_645_177,
    236_887_691,
];

/// The one address the successor reports.
pub const ADDRESS: &str = "127.0.0.1:8080";

/// The sealed data directory's fingerprint.
pub const FINGERPRINT: [u8; 32] = [
    0x9e, 0x37, 0x79, 0xb9, 0x7f, 0x4a, 0x7c, 0x15, 0xf3, 0x9c, 0xc0, 0x60, 0x5c, 0xed, 0xc8, 0x34,
    0x10, 0x82, 0x27, 0x6b, 0xf3, 0xa2, 0x72, 0x51, 0xf8, 0x6c, 0x6a, 0x11, 0xd0, 0xc1, 0x8e, 0x95,
];

const ADDRESSES: [&str; 1] = [ADDRESS];

/// Our ten messages, in [`NAMES`] order.
pub fn ours() -> [Message<'static>; 10] {
    let id = HandoffId::from_bytes(ID);
    [
        Message::Hello {
            role: Side::Incumbent,
            pid: 48_213,
            build_id: BUILD_ID,
            proto_min: 1,
            proto_max: 1,
            capabilities: Capabilities::NONE,
        },
        Message::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        },
        Message::PrepareHandoff {
            handoff_id: id,
            successor_pid: 48_377,
            deadline_ms: 59_994,
            drain_grace_ms: 25_000,
        },
        Message::Drained {
            open_conns_remaining: 3,
            accept_closed: true,
        },
        Message::SealRequest { handoff_id: id },
        Message::SealComplete {
            handoff_id: id,
            last_revision_per_shard: Revisions::from_slice(&REVISIONS),
            data_dir_fingerprint: FINGERPRINT,
        },
        Message::Begin { handoff_id: id },
        Message::Ready {
            handoff_id: id,
            listening_on: Strings::from_slice(&ADDRESSES),
            healthz_ok: true,
            advertised_revision_per_shard: Revisions::from_slice(&REVISIONS),
        },
        Message::Commit { handoff_id: id },
        Message::Heartbeat {
            ts_ms: 1_767_225_600_123,
        },
    ]
}

/// The reference's ten messages, in [`NAMES`] order.
pub fn reference() -> Vec<RefMessage> {
    let id = RefHandoffId(Uuid::from_bytes(ID));
    vec![
        RefMessage::Hello {
            role: RefSide::Incumbent,
            pid: 48_213,
            build_id: BUILD_ID.to_vec(),
            proto_min: 1,
            proto_max: 1,
            capabilities: RefCapabilities { reserved: 0 },
        },
        RefMessage::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        },
        RefMessage::PrepareHandoff {
            handoff_id: id,
            successor_pid: 48_377,
            deadline_ms: 59_994,
            drain_grace_ms: 25_000,
        },
        RefMessage::Drained {
            open_conns_remaining: 3,
            accept_closed: true,
        },
        RefMessage::SealRequest { handoff_id: id },
        RefMessage::SealComplete {
            handoff_id: id,
            last_revision_per_shard: REVISIONS.to_vec(),
            data_dir_fingerprint: FINGERPRINT,
        },
        RefMessage::Begin { handoff_id: id },
        RefMessage::Ready {
            handoff_id: id,
            listening_on: vec![ADDRESS.to_owned()],
            healthz_ok: true,
            advertised_revision_per_shard: REVISIONS.to_vec(),
        },
        RefMessage::Commit { handoff_id: id },
        RefMessage::Heartbeat {
            ts_ms: 1_767_225_600_123,
        },
    ]
}

/// Each frame encoded by us, after checking that the reference encodes the
/// very same bytes (otherwise the comparison would be meaningless).
///
/// # Panics
///
/// If the two encodings differ, or a frame does not fit 4 KiB.
pub fn encoded() -> Vec<Vec<u8>> {
    ours()
        .iter()
        .zip(reference())
        .zip(NAMES)
        .map(|((msg, theirs), name)| {
            let mut buf = [0u8; 4096];
            let n = encode_frame(VERSION, msg, &mut buf).expect("a frame fits 4 KiB");
            let mut reference = Vec::new();
            handoff::frame::write_message(&mut reference, VERSION, &theirs)
                .expect("the reference encodes");
            assert_eq!(
                &buf[..n],
                &reference[..],
                "{name}: ours and the reference encode different bytes"
            );
            buf[..n].to_vec()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::FrameDecoder;

    #[test]
    fn both_implementations_encode_the_same_bytes_and_ours_decodes_them() {
        let frames = encoded();
        assert_eq!(frames.len(), NAMES.len());
        let mut decoder: FrameDecoder = FrameDecoder::new();
        for ((bytes, msg), name) in frames.iter().zip(ours()).zip(NAMES) {
            let (used, frame) = decoder.decode(bytes);
            assert_eq!(used, bytes.len(), "{name}");
            assert_eq!(frame.unwrap().unwrap().message, msg, "{name}");
            assert_eq!(msg.kind().name(), name);
        }
    }
}
