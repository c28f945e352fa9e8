//! Rampart's integration tests, one binary: each module is one area, tested through the etcd
//! v3 API against in-process members ([`rampart_tests::TestCluster`]) or real `rampart`
//! processes ([`rampart_tests::ProcessCluster`]).
//!
//! - [`alarms`]: the Alarm call, NOSPACE and CORRUPT alarms, and the space quota (etcdctl's
//!   `alarm` and `endpoint status` included).
//! - [`auth`]: users, roles and permissions through etcdctl, compared with a real etcd 3.4;
//!   the auth store on followers and across a restart; the JSON gateway's tokens.
//! - [`backup`]: `etcdctl snapshot save` while writes go on, `rampartctl snapshot restore` into a
//!   new cluster of processes serving the same data, damaged and truncated files refused.
//! - [`cluster`]: leader loss, partitions, healing and catch-up by snapshot, in process.
//! - [`corruption`]: a member whose data was changed behind Raft's back is found by the
//!   start-up and the periodic checks and refuses clients.
//! - [`defrag`]: etcdctl's `defrag` against processes under writes: nothing lost, every
//!   database smaller, Status's sizes.
//! - [`election`]: the Election service through etcd-client, and etcdctl's `elect`.
//! - [`etcd_client`]: compatibility with the `etcd-client` crate, errors included.
//! - [`etcdctl`]: compatibility with the real `etcdctl` 3.4, against processes.
//! - [`flags`]: etcd's command line: flags and `ETCD_*` variables, refusals, etcd's ids,
//!   auto-compaction in both modes, `--max-concurrent-streams`.
//! - [`failover`]: leader loss as a client sees it, against processes (leases kept alive).
//! - [`gateway`]: the JSON gateway through plain HTTP (JSON, errors, streams), and the Python
//!   etcd3gw client with its own suite (`tests/gateway/run`).
//! - [`hardening`]: leaders whose appends cannot commit; peer calls no client could send.
//! - [`interceptor`]: the checks every client call passes first (etcd's require-leader).
//! - [`lease`]: grant, attach, keep-alive, revoke and expiry, across leader loss and restart.
//! - [`lease_table`]: the leader's table of leases follows every grant and revoke, and revokes
//!   many expired leases in batches.
//! - [`lock`]: the Lock service through etcd-client (order, fencing tokens, leases, leader
//!   loss, abandoned waiters), and etcdctl's `lock`.
//! - [`lock_failover`]: locks across kill -9 of a holder and of the leader, against processes.
//! - [`membership`]: adding, promoting, removing and updating members, MoveLeader, learners'
//!   limits and the strict reconfiguration checks, in process.
//! - [`observe`]: `/metrics` under etcd's names, and the `/health`, `/livez` and `/readyz`
//!   probes, on the client port and on `--listen-metrics-urls`.
//! - [`overload`]: a flood of writes past the members' bounds is refused with "too many
//!   requests", definitely (nothing refused is applied, nothing times out), while reads go on.
//! - [`long_reads`]: whole-keyspace reads of a large store under writes stall no member.
//! - [`patroni`]: PostgreSQL high availability with Patroni (PyPI) through the JSON gateway,
//!   across kill -9 of the Rampart leader and of the PostgreSQL primary (`tests/patroni/run`).
//! - [`process_cluster`]: acknowledged writes survive kill -9; bad settings and foreign data
//!   directories are refused.
//! - [`signals`]: SIGTERM and SIGINT stop a member in order.
//! - [`stall`]: a member whose disk freezes exits (`--storage-stall-timeout`) and, started
//!   again, serves its data.
//! - [`tls`]: https:// client and peer URLs with etcdctl's certificates, clients refused at
//!   the handshake, /metrics over https, a certificate rotated on disk picked up.
//! - [`watch`]: the Watch service, its ordering and its bounded memory.
//! - [`common`]: the helpers the modules share.
//!
//! Tests share this process only under `cargo test`; nextest runs each in its own. Nothing here
//! changes process-wide state beyond [`rampart_tests::init_tracing`], which installs its
//! subscriber once and ignores later calls.

mod common;

mod alarms;
mod auth;
mod backup;
mod cluster;
mod corruption;
mod defrag;
mod election;
mod etcd_client;
mod etcdctl;
mod failover;
mod flags;
mod gateway;
mod hardening;
mod interceptor;
mod lease;
mod lease_table;
mod lock;
mod lock_failover;
mod long_reads;
mod membership;
mod observe;
mod overload;
mod patroni;
mod process_cluster;
mod signals;
mod stall;
mod tls;
mod watch;
