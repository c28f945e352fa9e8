//! Rampart's generated gRPC API: the Rust types, clients and servers of
//!
//! - etcd v3's client API, wire-compatible with etcd (same packages, services,
//!   methods, messages, field numbers and enum values), so that etcdctl and the
//!   etcd client libraries work against Rampart unchanged: [`etcdserverpb`]
//!   (the KV, Watch, Lease, Cluster, Maintenance and Auth services),
//!   [`mvccpb`], [`authpb`], [`v3lockpb`] (Lock service) and [`v3electionpb`]
//!   (Election service);
//! - Rampart's internal peer protocol, [`peer`] (`rampart.peer.v1`), whose
//!   payloads are opaque bincode bytes;
//! - the test-only control of a member's peer-link faults, [`faults`]
//!   (`rampart.faults.v1`), served only with `--experimental-peer-fault-injection`.
//!
//! The etcd packages' messages also implement serde's `Serialize` and `Deserialize` with the
//! protobuf JSON mapping as etcd's JSON gateway (grpc-gateway with `OrigName`) uses it: the
//! .proto field names, 64-bit integers as strings (numbers accepted too), bytes as base64, enums
//! by name (numbers accepted too), default values left out, unknown fields refused.
//!
//! The code is generated at build time by `tonic-prost-build` from the
//! `.proto` files under `proto/` at the workspace root. For each service `Foo`
//! there is a client `foo_client::FooClient` and a server trait `foo_server::Foo`
//! with its wrapper `foo_server::FooServer`.

/// etcd's `mvccpb` package: stored key-values and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's `authpb` package: users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's `etcdserverpb` package: the client API services and their messages.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's `v3lockpb` package: the Lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's `v3electionpb` package: the Election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// Rampart's peer protocol, package `rampart.peer.v1`: Raft messages, forwarded
/// writes and read-index requests between members, as opaque bincode bytes.
pub mod peer {
    tonic::include_proto!("rampart.peer.v1");
}

/// Rampart's test-only fault control, package `rampart.faults.v1`: the rules a
/// member applies to the calls it sends to its peers (lost requests, lost
/// replies, delays). Served only by members started with
/// `--experimental-peer-fault-injection`.
pub mod faults {
    tonic::include_proto!("rampart.faults.v1");
}

/// The encoded `FileDescriptorSet` of every package above (for gRPC server
/// reflection or dynamic decoding).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("rampart_api_descriptor");

/// The `range_end` that makes a range or watch cover every key starting with `prefix`, as etcd's
/// clients compute it (`clientv3.GetPrefixRangeEnd`): the prefix with its last byte below 0xff
/// incremented and the 0xff bytes after it dropped. A prefix of only 0xff bytes (or an empty one)
/// has no such end; etcd then uses `[0]`, which means "every key from `key` on".
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::etcdserverpb::{compare, Compare, LeaseGrantRequest, PutRequest};
    use prost::Message;

    use super::prefix_range_end;

    #[test]
    fn put_request_encodes_as_etcd_does() {
        let req = PutRequest {
            key: b"a".to_vec(),
            value: b"b".to_vec(),
            lease: 5,
            ..Default::default()
        };
        assert_eq!(req.encode_to_vec(), [0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 5]);
    }

    #[test]
    fn compare_range_end_is_field_64() {
        let cmp = Compare {
            target_union: Some(compare::TargetUnion::Version(1)),
            range_end: vec![0],
            ..Default::default()
        };
        // version = 4 (varint); range_end = 64 (length-delimited): tag 514 = 0x82 0x04.
        assert_eq!(cmp.encode_to_vec(), [0x20, 1, 0x82, 0x04, 1, 0]);
    }

    #[test]
    fn lease_grant_fields_keep_etcd_numbers() {
        let req = LeaseGrantRequest { ttl: 10, id: 7 };
        assert_eq!(req.encode_to_vec(), [0x08, 10, 0x10, 7]);
    }

    #[test]
    fn descriptor_set_is_embedded() {
        assert!(!super::FILE_DESCRIPTOR_SET.is_empty());
    }

    #[test]
    fn prefix_range_end_matches_etcd() {
        assert_eq!(prefix_range_end(b"bench/"), b"bench0");
        assert_eq!(prefix_range_end(b"a"), b"b");
        assert_eq!(prefix_range_end(b"a\x7f"), b"a\x80");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"a\xfe\xff\xff"), b"a\xff");
        assert_eq!(prefix_range_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_range_end(b""), [0]);
    }
}
