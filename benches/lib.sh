# shellcheck shell=bash
# Variables set here are read by the sourcing scripts, and those it reads are set by them:
# shellcheck disable=SC2034,SC2154
#
# Shared by compare.sh, capacity.sh, overload.sh, failover.sh and leases.sh (sourced, not run):
# building and finding the binaries, starting, stopping and restarting 3-member etcd and Rampart
# clusters on loopback, waiting for them, and finding their leader.
#
# The sourcing script sets, before calling anything here:
#   repo     the repository's root
#   work     a directory for data directories, logs and scratch files
#   profile  release or debug;  build  yes or no
# and sources this file before it installs its own EXIT trap: this one stops every member it
# started (and only those).
#
# Each cluster's ports: member i listens for clients on base+2i and for peers on base+2i+1. The
# bases are below Linux's ephemeral range (32768 and up by default), where the members' own
# outgoing connections could take a port before a member listens on it.
# Members are named <cluster><i> (etcd0, rampart2), with data in $work/<cluster>/<member> and
# their output appended to $work/<member>.log (so a restart's log follows the first start's).

etcd_port_base=${ETCD_PORT_BASE:-22379}
rampart_port_base=${RAMPART_PORT_BASE:-24379}

# Processes started here, by member name: stopped on exit, and only those.
declare -A member_pids=()
# Extra flags of each cluster's members (a restart gets the same ones), by cluster name.
declare -A cluster_flags=()

stop_all() {
    local member
    for member in "${!member_pids[@]}"; do
        kill "${member_pids[$member]}" 2>/dev/null || true
    done
    for member in "${!member_pids[@]}"; do
        wait "${member_pids[$member]}" 2>/dev/null || true
    done
    member_pids=()
}
trap stop_all EXIT

# find_binaries: builds rampart and rampart-bench (unless build=no) and sets etcd_bin,
# etcdctl_bin, rampart_bin and bench_bin; ETCD_BIN, ETCDCTL_BIN, RAMPART_BIN and BENCH_BIN
# override them.
find_binaries() {
    etcd_bin=${ETCD_BIN:-/usr/bin/etcd}
    etcdctl_bin=${ETCDCTL_BIN:-/usr/bin/etcdctl}
    local tool
    for tool in "$etcd_bin" "$etcdctl_bin" jq cargo; do
        command -v "$tool" >/dev/null || {
            echo "$(basename "$0") needs $tool (Debian packages etcd-server, etcd-client, jq)" >&2
            exit 1
        }
    done
    if [ "$build" = yes ]; then
        echo "--- build rampart and rampart-bench ($profile)"
        local release=()
        if [ "$profile" = release ]; then release=(--release); fi
        cargo build "${release[@]}" -p rampart --bin rampart -p rampart-bench --bin rampart-bench
    fi
    local target_dir
    target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
    rampart_bin=${RAMPART_BIN:-$target_dir/$profile/rampart}
    bench_bin=${BENCH_BIN:-$target_dir/$profile/rampart-bench}
}

# etcdctl ARGS...: etcdctl speaking the v3 API.
etcdctl() {
    ETCDCTL_API=3 "$etcdctl_bin" "$@"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
    local base=$1 port
    for port in $(seq "$base" $((base + 5))); do
        if port_in_use "$port"; then
            echo "port $port is in use; set ETCD_PORT_BASE / RAMPART_PORT_BASE" >&2
            exit 1
        fi
    done
}

# member_endpoint BASE I: member i's client endpoint.
member_endpoint() {
    echo "127.0.0.1:$(($1 + 2 * $2))"
}

# cluster_endpoint_list BASE: the three client endpoints, comma-separated.
cluster_endpoint_list() {
    echo "$(member_endpoint "$1" 0),$(member_endpoint "$1" 1),$(member_endpoint "$1" 2)"
}

# start_member NAME BINARY BASE I: starts member i of cluster NAME (new, or restarted on its data
# directory: both etcd and Rampart then ignore the --initial-* flags). Not to be run in a
# subshell: the member's pid must reach member_pids.
start_member() {
    local name=$1 binary=$2 base=$3 i=$4 initial='' j
    for j in 0 1 2; do
        initial+="${initial:+,}$name$j=http://127.0.0.1:$((base + 2 * j + 1))"
    done
    local client=http://127.0.0.1:$((base + 2 * i)) peer=http://127.0.0.1:$((base + 2 * i + 1))
    # shellcheck disable=SC2086  # the extra flags are meant to split into words.
    "$binary" \
        --name="$name$i" \
        --data-dir="$work/$name/$name$i" \
        --listen-client-urls="$client" \
        --advertise-client-urls="$client" \
        --listen-peer-urls="$peer" \
        --initial-advertise-peer-urls="$peer" \
        --initial-cluster="$initial" \
        --initial-cluster-token="bench-$name" \
        --initial-cluster-state=new \
        --heartbeat-interval=100 \
        --election-timeout=1000 \
        ${cluster_flags[$name]:-} \
        >>"$work/$name$i.log" 2>&1 &
    member_pids[$name$i]=$!
}

# start_cluster NAME BINARY BASE [FLAG...]: starts 3 members with the given extra flags and sets
# cluster_endpoints to their client endpoints.
start_cluster() {
    local name=$1 binary=$2 base=$3
    shift 3
    cluster_flags[$name]="$*"
    check_ports "$base"
    local i
    for i in 0 1 2; do
        start_member "$name" "$binary" "$base" "$i"
    done
    cluster_endpoints=$(cluster_endpoint_list "$base")
}

# stop_member MEMBER [SIGNAL]: stops one member (SIGTERM by default) and waits for it to exit.
stop_member() {
    local member=$1 signal=${2:-TERM}
    local pid=${member_pids[$member]}
    kill -s "$signal" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "member_pids[$member]"
}

# stop_cluster NAME: stops its 3 members.
stop_cluster() {
    local i
    for i in 0 1 2; do
        if [ -n "${member_pids[$1$i]:-}" ]; then stop_member "$1$i"; fi
    done
}

# wait_writable ENDPOINTS: waits until a put through every member succeeds (it writes the key
# probe/0000000000).
wait_writable() {
    local probe=$work/probe.json endpoint
    for endpoint in ${1//,/ }; do
        local deadline=$((SECONDS + 60))
        until "$bench_bin" -w put --endpoints "$endpoint" --total 1 --prefix probe/ \
                --json-out "$probe" >/dev/null 2>&1 \
            && [ "$(jq .errors_total "$probe")" = 0 ]; do
            if [ $SECONDS -ge $deadline ]; then
                echo "$endpoint did not accept a put within 60 s; logs in $work" >&2
                exit 1
            fi
            sleep 0.5
        done
    done
}

# leader_index BASE: the index (0-2) of the member that reports itself leader.
leader_index() {
    local base=$1 i status
    for i in 0 1 2; do
        status=$(etcdctl --endpoints="$(member_endpoint "$base" "$i")" --command-timeout=1s \
            endpoint status -w json 2>/dev/null) || continue
        if [ "$(jq '.[0].Status.leader == .[0].Status.header.member_id' <<<"$status")" = true ]
        then
            echo "$i"
            return
        fi
    done
    return 1
}

# now_ms: the time, in milliseconds since the epoch.
now_ms() { date +%s%3N; }

# describe_commit: the commit measured, and whether the tree had local changes.
describe_commit() {
    echo "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null \
        || echo ' (with local changes)')"
}
