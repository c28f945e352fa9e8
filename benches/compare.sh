#!/usr/bin/env bash
# The same rampart-bench workloads against a 3-member etcd cluster and a 3-member Rampart
# cluster on loopback, in alternating rounds; writes a markdown table of the ratios to
# benches/results/compare-<time>.md.
#
# Usage: benches/compare.sh [options]
#   --duration D        length of each measured run (default 30s)
#   --rounds N          rounds; each runs every workload against both clusters (default 3)
#   --workloads LIST    comma-separated (default put,range,range-serializable,txn-put,mixed,
#                       watch,lease,lock,delete)
#   --clients N         concurrent clients (default 16)
#   --conns N           gRPC connections, spread over the 3 members (default 3)
#   --key-space N       distinct keys (default 10000)
#   --value-size N      bytes per value (default 256)
#   --watchers N        watchers of the watch workload (default 64)
#   --streams N         watch streams of the watch workload (default 8)
#   --rate R            open loop at R requests/s (default: closed loop)
#   --debug             use debug builds (for trying the script; never for numbers)
#   --no-build          use the binaries already built
#
# Equal durability: etcd fsyncs its WAL before acknowledging a write (its default, left as it
# is) and Rampart fsyncs every log append, so on both a write is on a quorum's disks when it is
# acknowledged. Both use etcd's default heartbeat (100 ms) and election timeout (1000 ms). Data
# directories, logs and each run's JSON go to benches/results/tmp/ (ignored by git), which is on
# the same disk for both clusters.
#
# Rounds alternate which cluster goes first, so that a slow drift of the machine (heat, another
# process) does not always favour the same one. The table shows medians over the rounds.
#
# Needs: etcd (Debian package etcd-server), jq, cargo. Sends traffic to 127.0.0.1 only.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)

duration=30s
rounds=3
workloads=put,range,range-serializable,txn-put,mixed,watch,lease,lock,delete
clients=16
conns=3
key_space=10000
value_size=256
watchers=64
streams=8
rate=
profile=release
build=yes

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --workloads) workloads=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --key-space) key_space=$2; shift 2 ;;
        --value-size) value_size=$2; shift 2 ;;
        --watchers) watchers=$2; shift 2 ;;
        --streams) streams=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --debug) profile=debug; shift ;;
        --no-build) build=no; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

etcd_bin=${ETCD_BIN:-/usr/bin/etcd}
for tool in "$etcd_bin" jq cargo; do
    command -v "$tool" >/dev/null || { echo "compare.sh needs $tool" >&2; exit 1; }
done

if [ "$build" = yes ]; then
    echo "--- build rampart and rampart-bench ($profile)"
    if [ "$profile" = release ]; then
        cargo build --release -p rampart --bin rampart -p rampart-bench --bin rampart-bench
    else
        cargo build -p rampart --bin rampart -p rampart-bench --bin rampart-bench
    fi
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
rampart_bin=${RAMPART_BIN:-$target_dir/$profile/rampart}
bench_bin=${BENCH_BIN:-$target_dir/$profile/rampart-bench}

stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$repo/benches/results/tmp/$stamp
mkdir -p "$work/runs"
summary=$work/summary.jsonl
result=$repo/benches/results/compare-$stamp.md

# Processes this script started, killed on exit (and only those).
pids=()
stop_all() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_all EXIT

# Each cluster's ports: member i listens for clients on base+2i and for peers on base+2i+1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_ports() {
    local base=$1
    for port in $(seq "$base" $((base + 5))); do
        if port_in_use "$port"; then
            echo "port $port is in use; set ETCD_PORT_BASE / RAMPART_PORT_BASE" >&2
            exit 1
        fi
    done
}

# start_cluster NAME BINARY PORT_BASE: starts 3 members and sets cluster_endpoints to their
# client endpoints. (Not run in a subshell: the members' pids must reach `pids`.)
start_cluster() {
    local name=$1 binary=$2 base=$3 initial= endpoints=
    check_ports "$base"
    for i in 0 1 2; do
        initial+="${initial:+,}$name$i=http://127.0.0.1:$((base + 2 * i + 1))"
        endpoints+="${endpoints:+,}127.0.0.1:$((base + 2 * i))"
    done
    for i in 0 1 2; do
        local client=http://127.0.0.1:$((base + 2 * i)) peer=http://127.0.0.1:$((base + 2 * i + 1))
        "$binary" \
            --name="$name$i" \
            --data-dir="$work/$name/$name$i" \
            --listen-client-urls="$client" \
            --advertise-client-urls="$client" \
            --listen-peer-urls="$peer" \
            --initial-advertise-peer-urls="$peer" \
            --initial-cluster="$initial" \
            --initial-cluster-token="compare-$name" \
            --initial-cluster-state=new \
            --heartbeat-interval=100 \
            --election-timeout=1000 \
            >"$work/$name$i.log" 2>&1 &
        pids+=($!)
    done
    cluster_endpoints=$endpoints
}

# wait_writable ENDPOINTS: waits until a put through every member succeeds.
wait_writable() {
    local probe=$work/probe.json
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

echo "--- start 3 etcd members and 3 rampart members"
start_cluster etcd "$etcd_bin" "${ETCD_PORT_BASE:-32379}"
etcd_endpoints=$cluster_endpoints
start_cluster rampart "$rampart_bin" "${RAMPART_PORT_BASE:-42379}"
rampart_endpoints=$cluster_endpoints
wait_writable "$etcd_endpoints"
wait_writable "$rampart_endpoints"

seed=${SEED:-$RANDOM$RANDOM}
keys=(--conns "$conns" --clients "$clients" --key-space "$key_space" --key-size 16
    --value-size "$value_size" --seed "$seed")
common=("${keys[@]}" --duration "$duration")
if [ -n "$rate" ]; then
    common+=(--rate "$rate")
fi
echo "seed $seed (replay with SEED=$seed)"

# workload_args LABEL: the rampart-bench arguments of a workload label.
workload_args() {
    case "$1" in
        range-serializable) echo "-w range --consistency serializable" ;;
        range|txn-put|mixed|delete) echo "-w $1 --consistency linearizable" ;;
        watch) echo "-w watch --watchers $watchers --streams $streams" ;;
        put|lease|lock) echo "-w $1" ;;
        *) echo "unknown workload $1" >&2; exit 2 ;;
    esac
}

# run_one TARGET ENDPOINTS LABEL ROUND ORDER
run_one() {
    local target=$1 endpoints=$2 label=$3 round=$4 order=$5
    local json=$work/runs/$target-$label-r$round.json
    # shellcheck disable=SC2046  # workload_args is meant to split into words.
    "$bench_bin" --endpoints "$endpoints" "${common[@]}" $(workload_args "$label") \
        --json-out "$json" | sed "s/^/  [$target] /"
    jq -c --arg target "$target" --arg name "$label" --argjson order "$order" \
        '{target: $target, label: $name, order: $order, ok,
          p50: (if .ok > 0 then .ops.p50_us else null end),
          p99: (if .ok > 0 then .ops.p99_us else null end),
          throughput: (if .ok > 0 then .throughput else null end), errors: .errors_total,
          kinds: (.errors | keys)}' "$json" >>"$summary"
}

IFS=, read -r -a labels <<<"$workloads"
for round in $(seq 1 "$rounds"); do
    if [ $((round % 2)) = 1 ]; then order=(etcd rampart); else order=(rampart etcd); fi
    echo "--- round $round of $rounds: ${order[*]}"
    for target in "${order[@]}"; do
        endpoints_var=${target}_endpoints
        # Every key once, so that reads and updates find them (not measured).
        "$bench_bin" -w range --prefill --total 1 --endpoints "${!endpoints_var}" "${keys[@]}" \
            >/dev/null
    done
    for index in "${!labels[@]}"; do
        for target in "${order[@]}"; do
            endpoints_var=${target}_endpoints
            run_one "$target" "${!endpoints_var}" "${labels[$index]}" "$round" "$index"
        done
    done
done

echo "--- write $result"
{
    echo "# Rampart vs etcd, $(date -u +%Y-%m-%d)"
    echo
    echo "- commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')," \
        "$("$etcd_bin" --version | head -1), rampart $profile build"
    echo "- machine: $(nproc) cores, $(uname -sr); both 3-member clusters on 127.0.0.1, same disk"
    echo "- each run: $duration, ${rate:+open loop at $rate/s, }$clients clients over $conns connections," \
        "key space $key_space, values of $value_size bytes, seed $seed; watch: $watchers watchers" \
        "over $streams streams"
    echo "- durability: etcd fsyncs its WAL per write batch (default); Rampart fsyncs every append"
    echo "- medians over $rounds rounds; ratio = Rampart / etcd (above 1 is more throughput," \
        "below 1 is lower latency)"
    echo
    echo "| workload | etcd ops/s | Rampart ops/s | ratio | etcd p50 ms | Rampart p50 ms | ratio | etcd p99 ms | Rampart p99 ms | ratio | errors etcd / Rampart |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    jq -rs '
        def median: sort | if length == 0 then null
            elif length % 2 == 1 then .[(length - 1) / 2]
            else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        # null (no answered request) shows as a dash.
        def fixed(n): if . == null then "–"
            else (. * pow(10; n) | round / pow(10; n) | tostring) end;
        def ratio(a; b): if a == null or b == null or b == 0 then "–"
            else (a / b | fixed(2)) + "×" end;
        def side(t): map(select(.target == t));
        def errors: (map(.errors) | add) as $n
            | if $n == 0 then "0" else "\($n) (\(map(.kinds[]) | unique | join("; ")))" end;
        group_by(.order)[]
        | (side("etcd")) as $e | (side("rampart")) as $r
        | ($e | map(.throughput | values) | median) as $et
        | ($r | map(.throughput | values) | median) as $rt
        | ($e | map(.p50 | values / 1000) | median) as $e50
        | ($r | map(.p50 | values / 1000) | median) as $r50
        | ($e | map(.p99 | values / 1000) | median) as $e99
        | ($r | map(.p99 | values / 1000) | median) as $r99
        | "| \(.[0].label) | \($et | fixed(0)) | \($rt | fixed(0)) | \(ratio($rt; $et)) "
          + "| \($e50 | fixed(3)) | \($r50 | fixed(3)) | \(ratio($r50; $e50)) "
          + "| \($e99 | fixed(3)) | \($r99 | fixed(3)) | \(ratio($r99; $e99)) "
          + "| \($e | errors) / \($r | errors) |"
    ' "$summary"
    echo
    echo "Each run's report (JSON, with latency percentiles and per-second counts) is in"
    echo "benches/results/tmp/$stamp/runs/."
} >"$result"
cat "$result"
