//! The peer protocol across versions (see `src/engine/protocol.rs` for the rule).
//!
//! `tests/data/peer-frames/<major>.<minor>/` keeps one frame payload of every kind of peer
//! message as that version sent it. This build must
//! - decode every kept frame of its own major version (an upgrade goes one node at a time,
//!   so a node must read what the previous minor sends), and
//! - send exactly the kept frames of its own version: a change to what the peers send each
//!   other without a version bump fails here. After a bump, record the new version's frames
//!   with `STANDBY_RECORD_FRAMES=1 cargo test --test protocol` and write down what changed in
//!   the history of `src/engine/protocol.rs`.

use serde_json::json;
use standby_proxy::cluster::LeaderValue;
use standby_proxy::engine::{CheckState, Heartbeat, NodeId, Priority, ProtocolVersion, Role};
use standby_proxy::peer::frame::{self, Channel, PeerMessage};
use standby_proxy::store::replica::{ReplMessage, Replica, SnapshotCursor};
use std::path::{Path, PathBuf};

fn frames_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/peer-frames")
}

fn version_dir(version: ProtocolVersion) -> PathBuf {
    frames_dir().join(version.to_string())
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        version: ProtocolVersion::CURRENT,
        node_id: NodeId::from("a"),
        address: "127.0.0.1".parse().expect("address"),
        incarnation: 1_764_000_000_000,
        seq: 42,
        state_seq: 40,
        acked: (1_764_000_000_123, 17),
        echo_delay_us: 250,
        role: Role::Active,
        term: 7,
        registrar: CheckState::Passing,
        service: CheckState::NotConfigured,
        priority: Priority::Primary,
        store_position: 12,
        active_for_ms: 90_000,
        yielding: false,
        leaving: false,
        targets: [
            ("sip".to_owned(), "sip:127.0.0.1:5070".to_owned()),
            (
                "sip/tls".to_owned(),
                "sip:127.0.0.1:5071;transport=tls".to_owned(),
            ),
            ("portal".to_owned(), "https://127.0.0.1:8443".to_owned()),
        ]
        .into_iter()
        .collect(),
    }
}

/// A node's own report as the status page's peer side reads it (`admin::pair::NodeReport`).
fn status_report() -> serde_json::Value {
    json!({
        "status": {
            "node": "b", "role": "standby", "term": 7, "active_node": "a",
            "no_standby": false, "eligible": true, "active_without_registrar": false,
            "admin_token_in_clear": false, "store_error": null, "vips": [],
            "accepting_writes": false, "handover_pending": false,
            "peer": {"id": "a", "contact": true, "role": "active", "last_seen_ms": 40,
                     "version": "1.3", "version_mismatch": false, "eligible": true,
                     "store_position": 12},
            "registrar": {"configured": true, "reachable": true, "target": "udp 127.0.0.1:5060",
                          "rtt_ms": 0.4, "last_error": null, "targets": []},
            "service": {"configured": false, "healthy": null},
            "transitions": [{"at_unix_ms": 1_764_000_000_000_u64, "from": "starting",
                             "to": "standby", "term": 7, "reason": "peer_active"}],
            "store_position": 12
        },
        "software": "0.1.0",
        "protocol": "1.3",
        "at_unix_ms": 1_764_000_000_500_u64,
        "front_ends": [{"name": "sip", "kind": "sip redirect", "listen": "udp+tcp 127.0.0.2:5060",
                        "sends_to": "sip:127.0.0.1:5070",
                        "counts": {"total": 3, "by_outcome": {"INVITE 302": 3}}}],
        "store": {"position": 12, "peer_position": 12, "lag": 0, "conflicts": 0, "error": null},
        "history": {"step_ms": 1000, "end_unix_ms": 1_764_000_000_000_u64,
                    "rtt_ms": [0.21, null], "lag": [0, 0],
                    "requests_per_s": {"sip": [1.0, 2.0]}}
    })
}

/// One message of every kind the peers exchange, made by this build's own code. The store's
/// messages come from a real split: a leader and a follower that both took writes.
fn samples() -> Vec<(&'static str, PeerMessage)> {
    let (mut leader, mut follower) = (Replica::new("a", 0x0a0a), Replica::new("b", 0x0b0b));
    let _ = leader.write("users/1/name", Some(json!("Alice")), 1_000);
    let _ = leader.write("users/1/forwarding", Some(json!({"to": "1234"})), 1_001);
    let _ = follower.write("users/1/name", Some(json!("Bob")), 1_002);
    let _ = follower.write("users/2/name", None, 1_003);
    let probe = follower.probe();
    let ReplMessage::Probe { points, .. } = &probe else {
        panic!("a probe is a Probe");
    };
    let common = leader.common_point(points);
    let upload = follower
        .upload(common, 256)
        .into_iter()
        .next()
        .expect("the follower has entries to upload");
    if let ReplMessage::Upload { entries, .. } = &upload {
        let _ = leader.merge(entries, 1_004);
    }
    let append = ReplMessage::Append {
        truncate_after: Some(common),
        entries: leader.entries_after(common, 256),
    };
    let (snapshot, _) =
        leader.snapshot_chunk(leader.snapshot_base(), &SnapshotCursor::Keys(None), 256);
    let (clear, _) = leader.clear_conflicts(1_005);
    let replication = [
        ("replication-probe", probe),
        ("replication-fork", ReplMessage::Fork { common }),
        ("replication-upload", upload),
        ("replication-append", append),
        ("replication-snapshot", snapshot),
        ("replication-ack", ReplMessage::Ack { position: clear }),
    ];
    let mut samples = vec![
        (
            "hello-control",
            PeerMessage::Hello {
                version: ProtocolVersion::CURRENT,
                node_id: NodeId::from("a"),
                channel: Channel::Control,
            },
        ),
        (
            "hello-replication",
            PeerMessage::Hello {
                version: ProtocolVersion::CURRENT,
                node_id: NodeId::from("b"),
                channel: Channel::Replication,
            },
        ),
        (
            "hello-status",
            PeerMessage::Hello {
                version: ProtocolVersion::CURRENT,
                node_id: NodeId::from("b"),
                channel: Channel::Status,
            },
        ),
        (
            "hello-confirm",
            PeerMessage::Hello {
                version: ProtocolVersion::CURRENT,
                node_id: NodeId::from("n0"),
                channel: Channel::Confirm,
            },
        ),
        (
            "confirm-ask",
            PeerMessage::ConfirmAsk {
                term: 42,
                acting_ms: Some(1500),
            },
        ),
        (
            "confirm-answer",
            PeerMessage::ConfirmAnswer {
                promised_ms: 2000,
                refused: None,
            },
        ),
        (
            "confirm-refused",
            PeerMessage::ConfirmAnswer {
                promised_ms: 0,
                refused: Some("n1 knows no leader in term 42".to_owned()),
            },
        ),
        ("heartbeat", PeerMessage::Heartbeat(heartbeat())),
        (
            "status",
            PeerMessage::Status {
                report: status_report(),
            },
        ),
    ];
    samples.extend(
        replication
            .into_iter()
            .map(|(name, message)| (name, PeerMessage::Replication(message))),
    );
    samples
}

/// The frame's payload (the JSON after the 4-byte length).
fn payload(message: &PeerMessage) -> Vec<u8> {
    frame::encode(message)[4..].to_vec()
}

#[test]
fn this_version_sends_exactly_its_kept_frames() {
    let dir = version_dir(ProtocolVersion::CURRENT);
    let record = std::env::var_os("STANDBY_RECORD_FRAMES").is_some();
    if record {
        std::fs::create_dir_all(&dir).expect("frames folder");
    }
    for (name, message) in samples() {
        let path = dir.join(format!("{name}.json"));
        let sent = payload(&message);
        if record {
            std::fs::write(&path, &sent).expect("record");
            continue;
        }
        let kept = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}. Protocol {} has no kept frames: bump the version in \
                 src/engine/protocol.rs and record them (see tests/protocol.rs)",
                path.display(),
                ProtocolVersion::CURRENT
            )
        });
        assert!(
            kept == sent,
            "{name}: this build sends another frame than protocol {} did:\n kept: {}\n sent: {}\n\
             A change to what the peers send bumps the protocol version (src/engine/protocol.rs).",
            ProtocolVersion::CURRENT,
            String::from_utf8_lossy(&kept),
            String::from_utf8_lossy(&sent),
        );
    }
}

/// The kept versions of this build's major, oldest first.
fn kept_versions_of_this_major() -> Vec<(ProtocolVersion, PathBuf)> {
    let mut versions: Vec<(ProtocolVersion, PathBuf)> = std::fs::read_dir(frames_dir())
        .expect("tests/data/peer-frames")
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let (major, minor) = name.split_once('.')?;
            let version = ProtocolVersion {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
            };
            (version.major == ProtocolVersion::CURRENT.major).then(|| (version, entry.path()))
        })
        .collect();
    versions.sort_by_key(|(version, _)| (version.major, version.minor));
    versions
}

#[test]
fn every_kept_frame_of_this_major_decodes() {
    let versions = kept_versions_of_this_major();
    assert!(
        versions
            .iter()
            .any(|(version, _)| *version == ProtocolVersion::CURRENT),
        "no kept frames of this build's version"
    );
    let kinds = samples().len();
    for (version, dir) in versions {
        let mut decoded = 0;
        for entry in std::fs::read_dir(&dir).expect("version folder").flatten() {
            let bytes = std::fs::read(entry.path()).expect("readable");
            if let Err(error) = frame::decode(&bytes) {
                panic!(
                    "{}: a frame of protocol {version} no longer decodes: {error}",
                    entry.path().display()
                );
            }
            decoded += 1;
        }
        // Older versions had fewer kinds; this one must keep every kind it sends.
        if version == ProtocolVersion::CURRENT {
            assert_eq!(
                decoded, kinds,
                "protocol {version}: a kind of frame is missing"
            );
        }
        assert!(decoded > 0, "protocol {version}: no frames");
    }
}

#[test]
fn a_newer_minor_with_fields_we_do_not_know_still_decodes() {
    // What the next minor may add, this build ignores (no deny_unknown_fields anywhere).
    let mut value: serde_json::Value =
        serde_json::from_slice(&payload(&PeerMessage::Heartbeat(heartbeat()))).expect("json");
    value["a_field_from_the_future"] = json!({"nested": [1, 2, 3]});
    value["version"]["minor"] = json!(ProtocolVersion::CURRENT.minor + 1);
    let bytes = serde_json::to_vec(&value).expect("json");
    let PeerMessage::Heartbeat(decoded) = frame::decode(&bytes).expect("decodes") else {
        panic!("a heartbeat");
    };
    assert_eq!(decoded.term, 7);
    assert!(decoded.version.compatible_with(ProtocolVersion::CURRENT));
}

#[test]
fn every_kept_status_report_reads_as_the_page_reads_it() {
    // The peer's report is JSON the link does not check; the admin API decodes it. A field
    // added to the report without a default would make an older peer's report unreadable.
    for (version, dir) in kept_versions_of_this_major() {
        let path = dir.join("status.json");
        let Ok(bytes) = std::fs::read(&path) else {
            assert!(
                !version.has(ProtocolVersion::STATUS_REQUESTS),
                "protocol {version} answers status requests but kept no status frame"
            );
            continue;
        };
        let PeerMessage::Status { report } = frame::decode(&bytes).expect("decodes") else {
            panic!("{}: not a status frame", path.display());
        };
        let read: Result<standby_proxy::admin::pair::NodeReport, _> =
            serde_json::from_value(report);
        if let Err(error) = read {
            panic!("{}: the report no longer reads: {error}", path.display());
        }
    }
}

/// What a leader writes in etcd's `leader` key in cluster mode (the other members read it),
/// kept per version in `tests/data/etcd-values/<version>/leader.json` as the peer frames are.
fn leader_value() -> LeaderValue {
    LeaderValue {
        node: "n0".to_owned(),
        targets: [("sip".to_owned(), "sip:127.0.0.1:5070".to_owned())]
            .into_iter()
            .collect(),
        stale_after_ms: Some(1750),
    }
}

#[test]
fn every_kept_leader_key_decodes_and_this_version_writes_its_own() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/etcd-values");
    let own = dir.join(ProtocolVersion::CURRENT.to_string());
    let written = serde_json::to_vec(&leader_value()).expect("json");
    if std::env::var_os("STANDBY_RECORD_FRAMES").is_some() {
        std::fs::create_dir_all(&own).expect("values folder");
        std::fs::write(own.join("leader.json"), &written).expect("record");
    }
    let kept = std::fs::read(own.join("leader.json")).expect("this version's leader key");
    assert!(
        kept == written,
        "this build writes another leader key than protocol {} did: {}",
        ProtocolVersion::CURRENT,
        String::from_utf8_lossy(&written)
    );
    let mut versions = 0;
    let folders = std::fs::read_dir(&dir).expect("etcd-values").flatten();
    for entry in folders.filter(|entry| entry.path().is_dir()) {
        let bytes = std::fs::read(entry.path().join("leader.json")).expect("leader.json");
        let value: LeaderValue = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{}: no longer decodes: {e}", entry.path().display()));
        assert_eq!(value.node, "n0");
        assert_eq!(value.targets, leader_value().targets);
        // A 1.4 leader says nothing of rewrites: its key is left to its lease.
        let version = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(
            value.stale_after_ms.is_some(),
            version != "1.4",
            "{version}"
        );
        versions += 1;
    }
    assert!(versions >= 2, "the 1.4 and this version's values are kept");
}
