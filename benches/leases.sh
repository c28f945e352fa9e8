#!/usr/bin/env bash
# The leader's lease clock under many leases, on a 3-member Rampart cluster on loopback
# (heartbeat 100 ms, election timeout 1000 ms):
#   1. grants --leases leases of an hour, each holding one key, then measures the CPU time each
#      member uses over --idle seconds while nothing else happens (from /proc/<pid>/stat);
#   2. grants --expiring more leases of --ttl seconds, each with a key, renews them all at once
#      so that they expire together, then polls the count of their keys until none is left:
#      how long after the last renewal's TTL ran out every one was revoked, and how long the
#      revocations took from the first to the last.
# Writes a markdown report to benches/results/leases-<time>.md.
#
# Usage: benches/leases.sh [--leases N] [--expiring N] [--ttl S] [--idle S]
#                          [--checkpoint-interval D] [--debug] [--no-build]
#   --leases N    leases held while idle (default 100000)
#   --expiring N  leases left to expire together (default 10000)
#   --ttl S       their TTL in seconds (default 20; long enough to grant them all first)
#   --idle S      seconds of idle CPU measured (default 30)
#   --checkpoint-interval D   the members' --experimental-lease-checkpoint-interval (default:
#                 theirs, 5s); a long one (1h) leaves the lease clock's own cost alone
#   --debug       use debug builds (for trying the script; never for numbers)
#   --no-build    use the binaries already built
# RAMPART_BIN names another rampart binary (e.g. one built from an older commit, to compare).
#
# Needs: etcd and etcdctl (Debian packages etcd-server, etcd-client; lib.sh checks for both), jq,
# cargo. Sends traffic to 127.0.0.1 only. Ports as in compare.sh (see lib.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)

leases=100000
expiring=10000
ttl=20
idle=30
checkpoint_interval=''
profile=release
build=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --leases) leases=$2; shift 2 ;;
        --expiring) expiring=$2; shift 2 ;;
        --ttl) ttl=$2; shift 2 ;;
        --idle) idle=$2; shift 2 ;;
        --checkpoint-interval) checkpoint_interval=$2; shift 2 ;;
        --debug) profile=debug; shift ;;
        --no-build) build=no; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$repo/benches/results/tmp/leases-$stamp
mkdir -p "$work"
# shellcheck source=benches/lib.sh
. "$repo/benches/lib.sh"
find_binaries
base=$rampart_port_base

# cpu_ticks PID: the user and system CPU time PID has used, in clock ticks.
cpu_ticks() {
    # Fields 14 and 15 of /proc/PID/stat, counted after the command name's closing parenthesis.
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# bench WORKLOAD N FIRST_ID TTL PREFIX: runs lease-hold (grant leases FIRST_ID.. of TTL
# seconds, lease FIRST_ID + n holding key PREFIX<n>) or lease-renew (renew them) for N requests.
bench() {
    local out=$work/$1-${5%/} errors
    "$bench_bin" -w "$1" --endpoints "$cluster_endpoints" --conns 4 --clients 64 --total "$2" \
        --first-lease-id "$3" --lease-ttl "$4" --key-space "$2" --prefix "$5" --value-size 16 \
        --json-out "$out.json" >"$out.log" 2>&1
    errors=$(jq .errors_total "$out.json")
    if [ "$errors" != 0 ]; then
        echo "$1 under $5: $errors errors (see $out.log)" >&2
        exit 1
    fi
}

# key_count PREFIX: how many keys start with PREFIX (a range's count ignores its limit).
key_count() {
    etcdctl --endpoints="$cluster_endpoints" --command-timeout=5s get "$1" --prefix \
        --keys-only --limit=1 -w json | jq '.count // 0'
}

echo "--- start the cluster"
flags=()
if [ -n "$checkpoint_interval" ]; then
    flags=(--experimental-lease-checkpoint-interval="$checkpoint_interval")
fi
start_cluster rampart "$rampart_bin" "$base" "${flags[@]}"
wait_writable "$cluster_endpoints"

echo "--- grant $leases leases of an hour, each with a key"
began=$(now_ms)
bench lease-hold "$leases" 1 3600 held/
granted_ms=$(($(now_ms) - began))
leader=$(leader_index "$base")
echo "granted in $granted_ms ms; the leader is rampart$leader"

echo "--- idle for $idle s: CPU time of each member"
sleep 5
hz=$(getconf CLK_TCK)
declare -A before=()
for i in 0 1 2; do before[$i]=$(cpu_ticks "${member_pids[rampart$i]}"); done
sleep "$idle"
declare -A cpu=()
for i in 0 1 2; do
    ticks=$(($(cpu_ticks "${member_pids[rampart$i]}") - before[$i]))
    cpu[$i]=$(awk -v t="$ticks" -v hz="$hz" -v s="$idle" 'BEGIN { printf "%.2f s (%.1f%%)", t / hz, 100 * t / hz / s }')
    echo "rampart$i: ${cpu[$i]}"
done
if [ "$(leader_index "$base")" != "$leader" ]; then
    echo "the leader changed while idle: the figures mix two leaders" >&2
fi

echo "--- grant $expiring leases of $ttl s, each with a key; renew them all, then leave them"
first=$((leases + 1))
began=$(now_ms)
bench lease-hold "$expiring" "$first" "$ttl" expiring/
granted_expiring_ms=$(($(now_ms) - began))
began=$(now_ms)
bench lease-renew "$expiring" "$first" "$ttl" expiring/
done_ms=$(now_ms)
renewed_ms=$((done_ms - began))
echo "granted in $granted_expiring_ms ms, renewed in $renewed_ms ms"
first_gone=''
while :; do
    # A read can fail while the members elect a leader: ask again.
    count=$(key_count expiring/ 2>/dev/null) || count=''
    now=$(now_ms)
    if [ -z "$first_gone" ] && [ -n "$count" ] && [ "$count" -lt "$expiring" ]; then
        first_gone=$now
    fi
    if [ "$count" = 0 ]; then break; fi
    if [ $((now - done_ms)) -gt $(((ttl + 600) * 1000)) ]; then
        echo "${count:-some} keys left 10 minutes after their TTL" >&2
        exit 1
    fi
    sleep 0.2
done
all_gone=$now
after_ttl=$((all_gone - done_ms - ttl * 1000))
span=$((all_gone - first_gone))
echo "all revoked ${after_ttl} ms after the last renewal's TTL ran out; first to last: ${span} ms"
held=$(key_count held/)
# Each member logs "lessor promoted" when it becomes leader: the first election, then changes.
promotions=$(cat "$work"/rampart?.log | grep -c 'lessor promoted' || true)

report=$repo/benches/results/leases-$stamp.md
{
    echo "# Leases: the leader's CPU while idle, and many leases expiring together"
    echo
    echo "Run $stamp on commit $(describe_commit), $profile build, binary $rampart_bin;"
    echo "3 members on loopback, heartbeat 100 ms, election timeout 1000 ms, lease checkpoint"
    echo "interval ${checkpoint_interval:-5s (default)}; $(nproc) cores, load average at the end"
    echo "$(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "| | |"
    echo "|---|---:|"
    echo "| leases held (TTL 1 h, one key each) | $leases (granted in $granted_ms ms) |"
    echo "| leader's CPU over $idle s idle | ${cpu[$leader]} |"
    for i in 0 1 2; do
        if [ "$i" != "$leader" ]; then echo "| follower rampart$i's CPU | ${cpu[$i]} |"; fi
    done
    echo "| leases expiring together (TTL $ttl s, one key each) | $expiring (granted in $granted_expiring_ms ms, renewed in $renewed_ms ms) |"
    echo "| all revoked, after the last renewal's TTL ran out | $after_ttl ms |"
    echo "| from the first revoke seen to the last | $span ms |"
    echo "| keys of the held leases still there | $held |"
    echo "| leader changes after the first election | $((promotions - 1)) |"
} >"$report"
cat "$report"
