#!/usr/bin/env bash
# Failover time, side by side: a 3-member etcd cluster and a 3-member Rampart cluster on
# loopback, both with heartbeat 100 ms and election timeout 1000 ms. Each trial kills the leader
# with kill -9 and measures the time until a put through a surviving member is acknowledged,
# with a put always in flight (each may wait 300 ms, then the next is sent); then restarts the killed member and waits
# until every member accepts a put again. Trials alternate between the two clusters. Writes a
# markdown report to benches/results/failover-<time>.md.
#
# Usage: benches/failover.sh [--trials N] [--debug] [--no-build]
#   --trials N   trials per cluster (default 7)
#   --debug      use debug builds (for trying the script; never for numbers)
#   --no-build   use the binaries already built
#
# Needs: etcd and etcdctl (Debian packages etcd-server, etcd-client), jq, cargo. Sends traffic
# to 127.0.0.1 only. Ports and binaries as in compare.sh (see lib.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)

trials=7
profile=release
build=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --trials) trials=$2; shift 2 ;;
        --debug) profile=debug; shift ;;
        --no-build) build=no; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$repo/benches/results/tmp/failover-$stamp
mkdir -p "$work"
# shellcheck source=benches/lib.sh
. "$repo/benches/lib.sh"
find_binaries

# wait_puts ENDPOINTS: waits until a put through every member succeeds (etcdctl only, so the
# script needs no rampart-bench).
wait_puts() {
    local endpoint deadline
    for endpoint in ${1//,/ }; do
        deadline=$((SECONDS + 60))
        until etcdctl --endpoints="$endpoint" --command-timeout=2s put failover/probe x \
            >/dev/null 2>&1; do
            if [ $SECONDS -ge $deadline ]; then
                echo "$endpoint did not accept a put within 60 s; logs in $work" >&2
                exit 1
            fi
            sleep 0.2
        done
    done
}

# trial NAME BINARY BASE: one failover of cluster NAME; sets took to the milliseconds it took.
# Not to be run in a subshell: the restarted member's pid must reach member_pids.
trial() {
    local name=$1 binary=$2 base=$3 leader deadline
    wait_puts "$(cluster_endpoint_list "$base")"
    deadline=$((SECONDS + 30))
    until leader=$(leader_index "$base"); do
        if [ $SECONDS -ge $deadline ]; then echo "$name: no leader" >&2; exit 1; fi
        sleep 0.2
    done
    local survivor
    survivor=$(member_endpoint "$base" $(((leader + 1) % 3)))
    local start
    start=$(now_ms)
    stop_member "$name$leader" KILL
    until etcdctl --endpoints="$survivor" --command-timeout=300ms put failover/key x \
        >/dev/null 2>&1; do
        if [ $(($(now_ms) - start)) -gt 60000 ]; then
            echo "$name: no put acknowledged within 60 s of killing its leader" >&2
            exit 1
        fi
    done
    took=$(($(now_ms) - start))
    start_member "$name" "$binary" "$base" "$leader"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "--- start both clusters"
start_cluster etcd "$etcd_bin" "$etcd_port_base"
start_cluster rampart "$rampart_bin" "$rampart_port_base"

etcd_times=()
rampart_times=()
for t in $(seq 1 "$trials"); do
    trial etcd "$etcd_bin" "$etcd_port_base"
    etcd_times+=("$took")
    trial rampart "$rampart_bin" "$rampart_port_base"
    rampart_times+=("$took")
    echo "trial $t: etcd ${etcd_times[-1]} ms, rampart ${rampart_times[-1]} ms"
done

etcd_median=$(printf '%s\n' "${etcd_times[@]}" | median)
rampart_median=$(printf '%s\n' "${rampart_times[@]}" | median)
report=$repo/benches/results/failover-$stamp.md
{
    echo "# Failover: kill -9 of the leader until a put through a survivor is acknowledged"
    echo
    echo "Run $stamp on commit $(describe_commit), $profile build; $trials trials each,"
    echo "alternating; heartbeat 100 ms, election timeout 1000 ms; puts of at most 300 ms each, back to back."
    echo
    echo "| | etcd 3.4 | Rampart |"
    echo "|---|---:|---:|"
    echo "| median ms | $etcd_median | $rampart_median |"
    echo "| trials ms | ${etcd_times[*]} | ${rampart_times[*]} |"
} >"$report"
cat "$report"
