#!/usr/bin/env bash
# Memory, disk and restart time of a 3-member etcd and a 3-member Rampart holding many keys, on
# loopback; writes a markdown table to benches/results/capacity-<time>.md.
#
# Usage: benches/capacity.sh [options]
#   --keys N            keys loaded (default 1000000)
#   --value-size N      bytes per value (default 256); keys are 16 bytes (bench/ + 10 digits)
#   --batch N           puts per txn (default 100; etcd's and Rampart's --max-txn-ops is 128)
#   --clients N         concurrent clients of the load (default 64)
#   --conns N           gRPC connections, spread over the 3 members (default 6)
#   --systems LIST      comma-separated, in order (default etcd,rampart)
#   --signal SIG        how the restarted member is stopped: TERM (default) or KILL (a crash)
#   --compaction-load S seconds of the put load that runs across the compaction (default 15)
#   --defrag-clients N  clients of each put run across the defragment (default 16)
#   --debug             use debug builds (for trying the script; never for numbers)
#   --no-build          use the binaries already built
#
# One system at a time: start 3 members, then
#   1. empty       record each member (below) once the cluster accepts writes;
#   2. loaded      write the N keys once (rampart-bench -w load: txns of --batch puts in key
#                  order, all clients at once), record;
#   3. overwritten write every key twice more (3 versions of each in the history), record;
#                  (a pass in which txns failed, e.g. timed out, is noted and run again
#                  whole, up to 3 times in all);
#   4. compacted   etcdctl compact --physical to the current revision, then etcdctl defrag on
#                  each member, record (so this phase's disk is after compaction + defragment);
#                  a put load on other keys (--clients clients, closed loop) runs from 2 s
#                  before the compaction for --compaction-load seconds (default 15), and its
#                  latencies say whether writes went on meanwhile; another put load runs
#                  through the whole defragment (see "Puts during the defragment" below);
#   5. restarted   stop one follower (SIGTERM, or --signal KILL), start it again on its data,
#                  time until it answers a serializable read of the last key at that key's latest
#                  mod_revision, then until `etcdctl endpoint health` passes on all 3; record
#                  (skipped, with a note, if the cluster answers no read within 120 s of the
#                  compaction);
# then stop the cluster.
#
# Puts during the defragment: rampart-bench runs for a fixed time, so the load across the
# defragment is a chain of overlapping runs (--defrag-clients clients each, closed loop, 2 s
# each, a new one every 1.5 s from 1 s before `etcdctl defrag` until it returns): at every
# moment at least one run has puts in flight, and a put that a pause holds back shows in its
# run's max (a run ends only once its puts in flight are answered; each may wait 10 minutes). The table gives the puts acknowledged, the errors, the worst run's p99 and the
# longest put of all runs. etcd holds every write for as long as it defragments a member.
#
# A record is, per member: VmRSS and RssAnon from /proc/<pid>/status, the data directory's
# allocated size (du), and the dbSize that Maintenance.Status reports. Bytes per live key are the
# memory and the data above the empty cluster's, over N (the cluster also holds one probe key
# that the start-up check wrote). Both run with --quota-backend-bytes of
# 8 GiB, its largest recommended, so that three versions of a million keys stay below its space
# alarms (the default is 2 GiB); everything else is both servers' defaults (etcd: snapshot every
# 100,000 entries; Rampart: every 100,000 entries too, sled's cache of 64 MiB). The restart times are
# polled with etcdctl every 50 ms or so: a resolution of about a tenth of a second.
#
# Data directories, logs and the load reports stay in benches/results/tmp/ (not committed):
# a million keys take a few GiB of disk per system. Run it on a quiet machine.
#
# Needs: etcd and etcdctl (Debian packages etcd-server, etcd-client), jq, cargo. Sends traffic
# to 127.0.0.1 only.
# Ports: etcd's members on 22379-22384, Rampart's on 24379-24384 (ETCD_PORT_BASE and
# RAMPART_PORT_BASE move them); binaries: ETCD_BIN, ETCDCTL_BIN, RAMPART_BIN, BENCH_BIN.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)

keys=1000000
value_size=256
batch=100
clients=64
conns=6
systems=etcd,rampart
signal=TERM
compaction_load=15
defrag_clients=16
profile=release
build=yes

while [ $# -gt 0 ]; do
    case "$1" in
        --keys) keys=$2; shift 2 ;;
        --value-size) value_size=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --systems) systems=$2; shift 2 ;;
        --signal) signal=$2; shift 2 ;;
        --compaction-load) compaction_load=$2; shift 2 ;;
        --defrag-clients) defrag_clients=$2; shift 2 ;;
        --debug) profile=debug; shift ;;
        --no-build) build=no; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$batch" -gt 128 ]; then
    echo "--batch $batch exceeds etcd's and Rampart's default --max-txn-ops (128)" >&2
    exit 2
fi
case "$signal" in
    TERM|KILL) ;;
    *) echo "--signal must be TERM or KILL" >&2; exit 2 ;;
esac

stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$repo/benches/results/tmp/capacity-$stamp
mkdir -p "$work"
result=$repo/benches/results/capacity-$stamp.md
records=$work/records.jsonl
loads=$work/loads.jsonl
restarts=$work/restarts.jsonl
notes=$work/notes.txt
touch "$records" "$loads" "$restarts" "$notes"

# shellcheck source=benches/lib.sh
. "$repo/benches/lib.sh"
find_binaries

declare -A binaries=([etcd]=$etcd_bin [rampart]=$rampart_bin)
declare -A port_bases=([etcd]=$etcd_port_base [rampart]=$rampart_port_base)
declare -A extra_flags=([etcd]=--quota-backend-bytes=8589934592 [rampart]=--quota-backend-bytes=8589934592)
phases=(empty loaded overwritten compacted restarted)

# The last key the load writes (rampart-bench's keys: the prefix, then the zero-padded index).
last_key=$(printf 'bench/%010d' $((keys - 1)))

now_ns() { date +%s%N; }

# seconds_since NS: seconds (3 decimals) from NS to now.
seconds_since() {
    echo "$(( ($(now_ns) - $1) / 1000000 ))" | awk '{ printf "%.3f", $1 / 1000 }'
}

# record SYSTEM PHASE: one line per member in records.jsonl.
record() {
    local system=$1 phase=$2 i
    local base=${port_bases[$system]}
    for i in 0 1 2; do
        local member=$system$i
        local status=/proc/${member_pids[$member]}/status
        local rss_kb anon_kb disk db
        rss_kb=$(awk '/^VmRSS:/ { print $2 }' "$status")
        anon_kb=$(awk '/^RssAnon:/ { print $2 }' "$status")
        disk=$(du -sB1 "$work/$system/$member" | cut -f1)
        db=$(etcdctl endpoint status -w json --endpoints="$(member_endpoint "$base" "$i")" \
            | jq '.[0].Status.dbSize')
        jq -nc --arg system "$system" --arg phase "$phase" --arg member "$member" \
            --argjson rss_kb "$rss_kb" --argjson anon_kb "$anon_kb" --argjson disk "$disk" \
            --argjson db "$db" \
            '{system: $system, phase: $phase, member: $member, rss: ($rss_kb * 1024),
              anon: ($anon_kb * 1024), disk: $disk, db: $db}' >>"$records"
    done
    jq -r --arg system "$system" --arg phase "$phase" \
        'select(.system == $system and .phase == $phase)
         | "  \(.member) \($phase): RSS \(.rss / 1048576 | floor) MiB,"
           + " data \(.disk / 1048576 | floor) MiB, db \(.db / 1048576 | floor) MiB"' "$records"
}

# load_pass SYSTEM ENDPOINTS PASS: writes every key once. A pass with failed txns (a timeout
# under the load) is noted and run again whole, up to 3 times, so that every key is written
# (puts of the same values: the repeat only adds versions); a third failure fails the script, as
# the per-key numbers would then be wrong.
load_pass() {
    local system=$1 endpoints=$2 pass=$3 attempt
    for attempt in 1 2 3; do
        local json=$work/$system-load-$pass-$attempt.json
        "$bench_bin" -w load --endpoints "$endpoints" --key-space "$keys" --key-size 16 \
            --value-size "$value_size" --batch "$batch" --clients "$clients" --conns "$conns" \
            --json-out "$json" | sed "s/^/  [$system] /"
        if [ "$(jq .errors_total "$json")" = 0 ]; then
            jq -c --arg system "$system" --argjson pass "$pass" --argjson attempt "$attempt" \
                '{system: $system, pass: $pass, attempt: $attempt, seconds: .elapsed_s,
                  keys_per_s: (.counters.keys_written / .elapsed_s)}' "$json" >>"$loads"
            return
        fi
        echo "$system: load pass $pass, attempt $attempt: $(jq .errors_total "$json") of" \
            "$(jq '.ok + .errors_total' "$json") txns failed: $(jq -c .errors "$json")" \
            | tee -a "$notes"
    done
    echo "the load of $system failed 3 times; logs in $work" >&2
    exit 1
}

# timed WHAT SYSTEM COMMAND...: runs the command, notes how long it took and what it printed.
timed() {
    local what=$1 system=$2 started status=0 out
    shift 2
    started=$(now_ns)
    out=$("$@" 2>&1) || status=$?
    local took
    took=$(seconds_since "$started")
    # shellcheck disable=SC2001  # a prefix on every line, not one replacement.
    sed "s/^/  [$system] /" <<<"$out"
    printf '%s: %s took %s s, exit status %s: %s\n' "$system" "$what" "$took" "$status" \
        "$(echo "$out" | tr '\n' ' ')" >>"$notes"
}

# defrag_under_load SYSTEM ENDPOINTS: etcdctl defrag on every member while overlapping runs of
# puts go on (see "Puts during the defragment" above); each run's report is
# $work/SYSTEM-during-defrag-<n>.json, and the defragment's time goes to the notes.
defrag_under_load() {
    local system=$1 endpoints=$2 n=0 runs=() defrag_pid
    start_defrag_run() {
        n=$((n + 1))
        "$bench_bin" --workload put --endpoints "$endpoints" --clients "$defrag_clients" \
            --conns 3 --key-space 10000 --value-size "$value_size" --prefix defrag/ \
            --duration 2s --timeout 10m --label "$system during defrag $n" \
            --json-out "$work/$system-during-defrag-$n.json" \
            >>"$work/$system-during-defrag.log" 2>&1 &
        runs+=($!)
    }
    start_defrag_run
    sleep 1
    local started
    started=$(now_ns)
    etcdctl defrag --endpoints="$endpoints" --command-timeout=10m \
        >"$work/$system-defrag.out" 2>&1 &
    defrag_pid=$!
    while kill -0 "$defrag_pid" 2>/dev/null; do
        start_defrag_run
        sleep 1.5
    done
    local status=0
    wait "$defrag_pid" || status=$?
    local took
    took=$(seconds_since "$started")
    local run
    for run in "${runs[@]}"; do
        wait "$run" || echo "$system: a put run during the defragment failed" >>"$notes"
    done
    sed "s/^/  [$system] /" "$work/$system-defrag.out"
    printf '%s: defrag took %s s, exit status %s, %s put runs across it: %s\n' "$system" \
        "$took" "$status" "$n" "$(tr '\n' ' ' <"$work/$system-defrag.out")" >>"$notes"
}

# a_follower SYSTEM: the index of a member that is not the leader (the highest such).
a_follower() {
    local base=${port_bases[$1]} i
    for i in 2 1 0; do
        if [ "$(etcdctl endpoint status -w json --endpoints="$(member_endpoint "$base" "$i")" \
                | jq '.[0].Status.leader != .[0].Status.header.member_id')" = true ]; then
            echo "$i"
            return
        fi
    done
    echo "no follower found in $1" >&2
    exit 1
}

# restart SYSTEM ENDPOINTS: stops a follower and starts it again, timing its return. Fails
# (noted, without a restart) if the cluster does not answer reads after the compaction.
restart() {
    local system=$1 endpoints=$2 base=${port_bases[$1]}
    # A long compaction may still hold the members (and their elections) back: wait until the
    # cluster answers a linearizable read of the last key before choosing the follower.
    local want deadline=$((SECONDS + 120))
    until want=$(etcdctl get "$last_key" -w json --endpoints="$endpoints" 2>/dev/null \
                | jq -e '.kvs[0].mod_revision' 2>/dev/null); do
        if [ $SECONDS -ge $deadline ]; then
            echo "$system did not answer a read of $last_key within 120 s after the" \
                "compaction; the restart was not measured (logs in $work)" | tee -a "$notes"
            return 1
        fi
        sleep 0.2
    done
    local i
    i=$(a_follower "$system") || return 1
    local member=$system$i endpoint
    endpoint=$(member_endpoint "$base" "$i")
    echo "--- $system: restart $member (SIG$signal); $last_key is at mod_revision $want"
    local started
    started=$(now_ns)
    stop_member "$member" "$signal"
    local stop_s
    stop_s=$(seconds_since "$started")
    started=$(now_ns)
    start_member "$system" "${binaries[$system]}" "$base" "$i"
    local deadline=$((SECONDS + 600)) got=
    until got=$(etcdctl get "$last_key" -w json --consistency=s --endpoints="$endpoint" \
                --dial-timeout=1s --command-timeout=1s 2>/dev/null \
                | jq '.kvs[0].mod_revision' 2>/dev/null) && [ "$got" = "$want" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "$member did not serve $last_key at $want within 600 s; logs in $work" >&2
            exit 1
        fi
        sleep 0.05
    done
    local read_s
    read_s=$(seconds_since "$started")
    until etcdctl endpoint health --endpoints="$endpoints" --dial-timeout=1s \
            --command-timeout=1s >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "$system was not healthy within 600 s of the restart; logs in $work" >&2
            exit 1
        fi
        sleep 0.05
    done
    local healthy_s
    healthy_s=$(seconds_since "$started")
    echo "  $member: stopped in $stop_s s; read the last key after $read_s s," \
        "cluster healthy after $healthy_s s"
    jq -nc --arg system "$system" --arg member "$member" --argjson stop "$stop_s" \
        --argjson read "$read_s" --argjson healthy "$healthy_s" \
        '{system: $system, member: $member, stop_s: $stop, read_s: $read,
          healthy_s: $healthy}' >>"$restarts"
}

IFS=, read -r -a system_list <<<"$systems"
for system in "${system_list[@]}"; do
    case "$system" in
        etcd|rampart) ;;
        *) echo "unknown system $system" >&2; exit 2 ;;
    esac
    echo "--- $system: start 3 members"
    # shellcheck disable=SC2086  # the extra flags are meant to split into words.
    start_cluster "$system" "${binaries[$system]}" "${port_bases[$system]}" \
        ${extra_flags[$system]}
    endpoints=$cluster_endpoints
    wait_writable "$endpoints"
    record "$system" empty

    echo "--- $system: load $keys keys, $batch to a txn"
    load_pass "$system" "$endpoints" 1
    record "$system" loaded

    echo "--- $system: overwrite every key twice"
    load_pass "$system" "$endpoints" 2
    load_pass "$system" "$endpoints" 3
    record "$system" overwritten

    revision=$(etcdctl get "$last_key" -w json --endpoints="$endpoints" | jq .header.revision)
    echo "--- $system: compact to revision $revision, then defragment each member"
    "$bench_bin" --workload put --endpoints "$endpoints" --clients "$clients" --conns "$conns" \
        --key-space 10000 --value-size "$value_size" --prefix live/ \
        --duration "${compaction_load}s" --label "$system during compaction" \
        --json-out "$work/$system-during-compaction.json" >"$work/$system-during-compaction.log" 2>&1 &
    load_pid=$!
    sleep 2
    timed "compact --physical" "$system" \
        etcdctl compact "$revision" --physical --endpoints="$endpoints" --command-timeout=10m
    wait "$load_pid" || echo "$system: the put load across the compaction failed" >>"$notes"
    defrag_under_load "$system" "$endpoints"
    record "$system" compacted

    if restart "$system" "$endpoints"; then
        record "$system" restarted
    fi

    echo "--- $system: stop"
    stop_cluster "$system"
done

echo "--- write $result"
{
    echo "# Capacity: etcd vs Rampart, $(date -u +%Y-%m-%d)"
    echo
    echo "- commit $(describe_commit), $("$etcd_bin" --version | head -1), rampart $profile build"
    echo "- machine: $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB, $(uname -sr);" \
        "3-member clusters on 127.0.0.1, one system at a time"
    echo "- $keys keys of 16 bytes with values of $value_size bytes, written in txns of $batch" \
        "puts by $clients clients over $conns connections; then overwritten twice; then" \
        "compacted to the last revision and defragmented (phase compacted: the disk after" \
        "both); then one follower restarted" \
        "(SIG$signal)"
    echo "- memory: VmRSS of each member; data: allocated size of its data directory (du);" \
        "means over the 3 members; bytes per live key: what the phase holds above the empty" \
        "cluster (etcd's empty data directory is mostly its preallocated 64 MiB WAL files)," \
        "over $keys"
    echo "- both with --quota-backend-bytes=8589934592 (8 GiB, etcd's largest recommended); otherwise both with their defaults"
    echo
    echo "| phase | etcd RSS MiB | Rampart RSS MiB | etcd data MiB | Rampart data MiB | etcd RSS B/key | Rampart RSS B/key | etcd data B/key | Rampart data B/key |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    jq -rs --argjson keys "$keys" --arg phases "${phases[*]}" '
        def mean: if length == 0 then null else add / length end;
        def fixed(n): if . == null then "–"
            else (. * pow(10; n) | round / pow(10; n) | tostring) end;
        def mib: if . == null then null else . / 1048576 end;
        . as $all
        | def at(s; p): $all | map(select(.system == s and .phase == p));
          # What a phase holds above the empty cluster, per key: f is .rss or .disk.
          def per_key(s; p; f): (at(s; "empty") | map(f) | mean) as $base
            | at(s; p) | map(f) | mean
            | if p == "empty" or . == null or $base == null then null
              else (. - $base) / $keys end;
        ($phases | split(" "))[] as $p
        | "| \($p) | \(at("etcd"; $p) | map(.rss) | mean | mib | fixed(0)) "
          + "| \(at("rampart"; $p) | map(.rss) | mean | mib | fixed(0)) "
          + "| \(at("etcd"; $p) | map(.disk) | mean | mib | fixed(0)) "
          + "| \(at("rampart"; $p) | map(.disk) | mean | mib | fixed(0)) "
          + "| \(per_key("etcd"; $p; .rss) | fixed(0)) "
          + "| \(per_key("rampart"; $p; .rss) | fixed(0)) "
          + "| \(per_key("etcd"; $p; .disk) | fixed(0)) "
          + "| \(per_key("rampart"; $p; .disk) | fixed(0)) |"
    ' "$records"
    echo
    echo "Load (all keys once per pass; a pass with failed txns is run again, see the notes):"
    echo
    echo "| pass | etcd s | Rampart s | etcd keys/s | Rampart keys/s |"
    echo "|---|---:|---:|---:|---:|"
    jq -rs '
        def fixed(n): if . == null then "–"
            else (. * pow(10; n) | round / pow(10; n) | tostring) end;
        group_by(.pass)[]
        | (map(select(.system == "etcd")) | .[0]) as $e
        | (map(select(.system == "rampart")) | .[0]) as $r
        | "| \(.[0].pass) | \($e.seconds | fixed(1)) | \($r.seconds | fixed(1)) "
          + "| \($e.keys_per_s | fixed(0)) | \($r.keys_per_s | fixed(0)) |"
    ' "$loads"
    echo
    echo "Restart of one follower (seconds from its start; polled about every 50 ms):"
    echo
    echo "| | etcd | Rampart |"
    echo "|---|---:|---:|"
    jq -rs --arg signal "SIG$signal" '
        (map(select(.system == "etcd")) | .[0]) as $e
        | (map(select(.system == "rampart")) | .[0]) as $r
        | def v(x): if x == null then "–" else (x | tostring) end;
        "| member | \(v($e.member)) | \(v($r.member)) |",
        "| stopping it (\($signal)) took | \(v($e.stop_s)) | \(v($r.stop_s)) |",
        "| serializable read of the last key, latest version | \(v($e.read_s)) | \(v($r.read_s)) |",
        "| all 3 endpoints healthy | \(v($e.healthy_s)) | \(v($r.healthy_s)) |"
    ' "$restarts"
    echo
    echo "Puts on other keys across the compaction ($clients clients, closed loop, from 2 s"
    echo "before it, ${compaction_load} s in all; a compaction that holds writes back shows in the max):"
    echo
    echo "| system | puts/s | p50 ms | p99 ms | max ms | errors |"
    echo "|---|---:|---:|---:|---:|---:|"
    for system in "${system_list[@]}"; do
        report=$work/$system-during-compaction.json
        if [ -s "$report" ]; then
            jq -r --arg system "$system" '
                def ms: . / 1000 | . * 10 | round / 10;
                "| \($system) | \(.throughput | round) | \(.ops.p50_us | ms) "
                + "| \(.ops.p99_us | ms) | \(.ops.max_us | ms) | \(.errors_total) |"' "$report"
        else
            echo "| $system | – | – | – | – | no report |"
        fi
    done
    echo
    echo "Puts during the defragment (etcdctl defrag of the 3 members one after the other;"
    echo "overlapping 2 s runs of $defrag_clients clients each, closed loop, from 1 s before it"
    echo "until it returned; a write held back by the defragment shows in the longest put):"
    echo
    echo "| system | runs | puts | errors | worst run's p99 ms | longest put ms |"
    echo "|---|---:|---:|---:|---:|---:|"
    for system in "${system_list[@]}"; do
        shopt -s nullglob
        reports=("$work/$system"-during-defrag-*.json)
        shopt -u nullglob
        if [ ${#reports[@]} -gt 0 ]; then
            jq -rs --arg system "$system" '
                def ms: . / 1000 | . * 10 | round / 10;
                "| \($system) | \(length) | \(map(.ok) | add) | \(map(.errors_total) | add) "
                + "| \(map(.ops.p99_us) | max | ms) | \(map(.ops.max_us) | max | ms) |"' \
                "${reports[@]}"
        else
            echo "| $system | 0 | – | – | – | – |"
        fi
    done
    echo
    echo "Per member (RSS anon: the part of RSS that is not file-backed, e.g. not etcd's mmap of"
    echo "its bbolt file; status db: Maintenance.Status dbSize):"
    echo
    echo "| system | phase | member | RSS MiB | RSS anon MiB | data MiB | status db MiB |"
    echo "|---|---|---|---:|---:|---:|---:|"
    jq -r 'def mib: . / 1048576 * 10 | round / 10;
        "| \(.system) | \(.phase) | \(.member) | \(.rss | mib) | \(.anon | mib) "
        + "| \(.disk | mib) | \(.db | mib) |"' "$records"
    echo
    echo "Notes: failed load passes; compaction and defragmentation, as etcdctl answered:"
    echo
    sed 's/^/- /' "$notes"
    echo
    echo "Data directories, logs and the load reports are in benches/results/tmp/capacity-$stamp/."
} >"$result"
cat "$result"
