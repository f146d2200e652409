//! Messages that own their fields.
//!
//! [`Message`] borrows its strings and lists, which is right for a codec
//! that must not allocate but awkward for generated test data: a strategy
//! has to produce a value that lives on its own. [`OwnedMessage`] is the same
//! fourteen messages and the project's extensions over `Vec` and `String`; a
//! test lends it out as a borrowed [`Message`] with
//! [`OwnedMessage::with_message`], and reads a decoded one back with
//! [`OwnedMessage::from_message`].

use handoff_core::{
    Capabilities, HandoffId, Message, ProtoVersion, Revisions, Side, Strings, encode_frame,
    encoded_frame_len,
};

/// One protocol message with owned fields, in wire order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are those of `handoff_core::Message`
pub enum OwnedMessage {
    Hello {
        role: Side,
        pid: u32,
        build_id: Vec<u8>,
        proto_min: ProtoVersion,
        proto_max: ProtoVersion,
        capabilities: u64,
    },
    HelloAck {
        proto_version_chosen: ProtoVersion,
        handoff_id: [u8; 16],
    },
    PrepareHandoff {
        handoff_id: [u8; 16],
        successor_pid: u32,
        deadline_ms: u64,
        drain_grace_ms: u64,
    },
    Drained {
        open_conns_remaining: u32,
        accept_closed: bool,
    },
    SealRequest {
        handoff_id: [u8; 16],
    },
    SealProgress {
        shards_sealed: u32,
        shards_total: u32,
        last_revision: u64,
    },
    SealComplete {
        handoff_id: [u8; 16],
        last_revision_per_shard: Vec<u64>,
        data_dir_fingerprint: [u8; 32],
    },
    SealFailed {
        handoff_id: [u8; 16],
        error: String,
        partial_state: String,
    },
    Begin {
        handoff_id: [u8; 16],
    },
    Ready {
        handoff_id: [u8; 16],
        listening_on: Vec<String>,
        healthz_ok: bool,
        advertised_revision_per_shard: Vec<u64>,
    },
    Commit {
        handoff_id: [u8; 16],
    },
    Abort {
        handoff_id: [u8; 16],
        reason: String,
    },
    ResumeAfterAbort {
        handoff_id: [u8; 16],
    },
    ListenersRequest {
        handoff_id: [u8; 16],
    },
    Listeners {
        handoff_id: [u8; 16],
        names: Vec<String>,
    },
    Probation {
        handoff_id: [u8; 16],
        window_ms: u64,
    },
    PassChannel {
        handoff_id: [u8; 16],
    },
    PassedConnection {
        handoff_id: [u8; 16],
        state: Vec<u8>,
    },
    PassDone {
        handoff_id: [u8; 16],
        count: u32,
    },
    ConnectionsTaken {
        handoff_id: [u8; 16],
    },
    ConnectionsPassed {
        handoff_id: [u8; 16],
        count: u32,
    },
    Heartbeat {
        ts_ms: u64,
    },
}

impl OwnedMessage {
    /// Calls `f` with this message borrowed as a [`Message`]. A closure
    /// rather than a return value, because `Ready`'s string list needs a
    /// slice of `&str` that has to live somewhere while it is lent.
    pub fn with_message<R>(&self, f: impl FnOnce(Message<'_>) -> R) -> R {
        let id = |b: &[u8; 16]| HandoffId::from_bytes(*b);
        match self {
            OwnedMessage::Hello {
                role,
                pid,
                build_id,
                proto_min,
                proto_max,
                capabilities,
            } => f(Message::Hello {
                role: *role,
                pid: *pid,
                build_id,
                proto_min: *proto_min,
                proto_max: *proto_max,
                capabilities: Capabilities::from_bits(*capabilities),
            }),
            OwnedMessage::HelloAck {
                proto_version_chosen,
                handoff_id,
            } => f(Message::HelloAck {
                proto_version_chosen: *proto_version_chosen,
                handoff_id: id(handoff_id),
            }),
            OwnedMessage::PrepareHandoff {
                handoff_id,
                successor_pid,
                deadline_ms,
                drain_grace_ms,
            } => f(Message::PrepareHandoff {
                handoff_id: id(handoff_id),
                successor_pid: *successor_pid,
                deadline_ms: *deadline_ms,
                drain_grace_ms: *drain_grace_ms,
            }),
            OwnedMessage::Drained {
                open_conns_remaining,
                accept_closed,
            } => f(Message::Drained {
                open_conns_remaining: *open_conns_remaining,
                accept_closed: *accept_closed,
            }),
            OwnedMessage::SealRequest { handoff_id } => f(Message::SealRequest {
                handoff_id: id(handoff_id),
            }),
            OwnedMessage::SealProgress {
                shards_sealed,
                shards_total,
                last_revision,
            } => f(Message::SealProgress {
                shards_sealed: *shards_sealed,
                shards_total: *shards_total,
                last_revision: *last_revision,
            }),
            OwnedMessage::SealComplete {
                handoff_id,
                last_revision_per_shard,
                data_dir_fingerprint,
            } => f(Message::SealComplete {
                handoff_id: id(handoff_id),
                last_revision_per_shard: Revisions::from_slice(last_revision_per_shard),
                data_dir_fingerprint: *data_dir_fingerprint,
            }),
            OwnedMessage::SealFailed {
                handoff_id,
                error,
                partial_state,
            } => f(Message::SealFailed {
                handoff_id: id(handoff_id),
                error,
                partial_state,
            }),
            OwnedMessage::Begin { handoff_id } => f(Message::Begin {
                handoff_id: id(handoff_id),
            }),
            OwnedMessage::Ready {
                handoff_id,
                listening_on,
                healthz_ok,
                advertised_revision_per_shard,
            } => {
                let addrs: Vec<&str> = listening_on.iter().map(String::as_str).collect();
                f(Message::Ready {
                    handoff_id: id(handoff_id),
                    listening_on: Strings::from_slice(&addrs),
                    healthz_ok: *healthz_ok,
                    advertised_revision_per_shard: Revisions::from_slice(
                        advertised_revision_per_shard,
                    ),
                })
            }
            OwnedMessage::Commit { handoff_id } => f(Message::Commit {
                handoff_id: id(handoff_id),
            }),
            OwnedMessage::Abort { handoff_id, reason } => f(Message::Abort {
                handoff_id: id(handoff_id),
                reason,
            }),
            OwnedMessage::ResumeAfterAbort { handoff_id } => f(Message::ResumeAfterAbort {
                handoff_id: id(handoff_id),
            }),
            OwnedMessage::Heartbeat { ts_ms } => f(Message::Heartbeat { ts_ms: *ts_ms }),
            OwnedMessage::ListenersRequest { handoff_id } => f(Message::ListenersRequest {
                handoff_id: id(handoff_id),
            }),
            OwnedMessage::Listeners { handoff_id, names } => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                f(Message::Listeners {
                    handoff_id: id(handoff_id),
                    names: Strings::from_slice(&names),
                })
            }
            OwnedMessage::Probation {
                handoff_id,
                window_ms,
            } => f(Message::Probation {
                handoff_id: id(handoff_id),
                window_ms: *window_ms,
            }),
            OwnedMessage::PassChannel { handoff_id } => f(Message::PassChannel {
                handoff_id: id(handoff_id),
            }),
            OwnedMessage::PassedConnection { handoff_id, state } => f(Message::PassedConnection {
                handoff_id: id(handoff_id),
                state,
            }),
            OwnedMessage::PassDone { handoff_id, count } => f(Message::PassDone {
                handoff_id: id(handoff_id),
                count: *count,
            }),
            OwnedMessage::ConnectionsTaken { handoff_id } => f(Message::ConnectionsTaken {
                handoff_id: id(handoff_id),
            }),
            OwnedMessage::ConnectionsPassed { handoff_id, count } => {
                f(Message::ConnectionsPassed {
                    handoff_id: id(handoff_id),
                    count: *count,
                })
            }
        }
    }

    /// A copy of `msg` that owns its fields.
    pub fn from_message(msg: &Message<'_>) -> Self {
        let id = |h: &HandoffId| *h.as_bytes();
        match msg {
            Message::Hello {
                role,
                pid,
                build_id,
                proto_min,
                proto_max,
                capabilities,
            } => OwnedMessage::Hello {
                role: *role,
                pid: *pid,
                build_id: build_id.to_vec(),
                proto_min: *proto_min,
                proto_max: *proto_max,
                capabilities: capabilities.bits(),
            },
            Message::HelloAck {
                proto_version_chosen,
                handoff_id,
            } => OwnedMessage::HelloAck {
                proto_version_chosen: *proto_version_chosen,
                handoff_id: id(handoff_id),
            },
            Message::PrepareHandoff {
                handoff_id,
                successor_pid,
                deadline_ms,
                drain_grace_ms,
            } => OwnedMessage::PrepareHandoff {
                handoff_id: id(handoff_id),
                successor_pid: *successor_pid,
                deadline_ms: *deadline_ms,
                drain_grace_ms: *drain_grace_ms,
            },
            Message::Drained {
                open_conns_remaining,
                accept_closed,
            } => OwnedMessage::Drained {
                open_conns_remaining: *open_conns_remaining,
                accept_closed: *accept_closed,
            },
            Message::SealRequest { handoff_id } => OwnedMessage::SealRequest {
                handoff_id: id(handoff_id),
            },
            Message::SealProgress {
                shards_sealed,
                shards_total,
                last_revision,
            } => OwnedMessage::SealProgress {
                shards_sealed: *shards_sealed,
                shards_total: *shards_total,
                last_revision: *last_revision,
            },
            Message::SealComplete {
                handoff_id,
                last_revision_per_shard,
                data_dir_fingerprint,
            } => OwnedMessage::SealComplete {
                handoff_id: id(handoff_id),
                last_revision_per_shard: last_revision_per_shard.iter().collect(),
                data_dir_fingerprint: *data_dir_fingerprint,
            },
            Message::SealFailed {
                handoff_id,
                error,
                partial_state,
            } => OwnedMessage::SealFailed {
                handoff_id: id(handoff_id),
                error: (*error).to_owned(),
                partial_state: (*partial_state).to_owned(),
            },
            Message::Begin { handoff_id } => OwnedMessage::Begin {
                handoff_id: id(handoff_id),
            },
            Message::Ready {
                handoff_id,
                listening_on,
                healthz_ok,
                advertised_revision_per_shard,
            } => OwnedMessage::Ready {
                handoff_id: id(handoff_id),
                listening_on: listening_on.iter().map(str::to_owned).collect(),
                healthz_ok: *healthz_ok,
                advertised_revision_per_shard: advertised_revision_per_shard.iter().collect(),
            },
            Message::Commit { handoff_id } => OwnedMessage::Commit {
                handoff_id: id(handoff_id),
            },
            Message::Abort { handoff_id, reason } => OwnedMessage::Abort {
                handoff_id: id(handoff_id),
                reason: (*reason).to_owned(),
            },
            Message::ResumeAfterAbort { handoff_id } => OwnedMessage::ResumeAfterAbort {
                handoff_id: id(handoff_id),
            },
            Message::Heartbeat { ts_ms } => OwnedMessage::Heartbeat { ts_ms: *ts_ms },
            Message::ListenersRequest { handoff_id } => OwnedMessage::ListenersRequest {
                handoff_id: id(handoff_id),
            },
            Message::Listeners { handoff_id, names } => OwnedMessage::Listeners {
                handoff_id: id(handoff_id),
                names: names.iter().map(str::to_owned).collect(),
            },
            Message::Probation {
                handoff_id,
                window_ms,
            } => OwnedMessage::Probation {
                handoff_id: id(handoff_id),
                window_ms: *window_ms,
            },
            Message::PassChannel { handoff_id } => OwnedMessage::PassChannel {
                handoff_id: id(handoff_id),
            },
            Message::PassedConnection { handoff_id, state } => OwnedMessage::PassedConnection {
                handoff_id: id(handoff_id),
                state: state.to_vec(),
            },
            Message::PassDone { handoff_id, count } => OwnedMessage::PassDone {
                handoff_id: id(handoff_id),
                count: *count,
            },
            Message::ConnectionsTaken { handoff_id } => OwnedMessage::ConnectionsTaken {
                handoff_id: id(handoff_id),
            },
            Message::ConnectionsPassed { handoff_id, count } => OwnedMessage::ConnectionsPassed {
                handoff_id: id(handoff_id),
                count: *count,
            },
        }
    }

    /// The whole frame carrying this message with `version` in its header.
    pub fn frame(&self, version: ProtoVersion) -> Vec<u8> {
        self.with_message(|m| {
            let mut out = vec![0; encoded_frame_len(&m)];
            let n = encode_frame(version, &m, &mut out).expect("the frame fits its own length");
            out.truncate(n);
            out
        })
    }
}
