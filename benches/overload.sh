#!/usr/bin/env bash
# Graceful degradation under overload: a concurrency sweep of closed-loop puts against a 3-member
# etcd cluster and a 3-member Rampart cluster on loopback, with a paced linearizable read probe
# alongside each run; writes a markdown table to benches/results/overload-<time>.md and a plot
# (puts per second and p99 latency against the number of clients, both systems on one chart) to
# benches/results/overload-<time>/overload.png.
#
# Usage: benches/overload.sh [options]
#   --clients LIST      comma-separated client counts of the sweep (default 16,128,1000,4000)
#   --duration D        length of each run (default 15s)
#   --value-size N      bytes per value (default 4096)
#   --conns N           gRPC connections of the put load, spread over the 3 members (default 40)
#   --rounds N          rounds; each runs every client count against each system (default 1)
#   --systems LIST      etcd,rampart (default), or one of them
#   --debug             use debug builds (for trying the script; never for numbers)
#   --no-build          use the binaries already built
#
# What one run measures, for a client count N and a system:
# - the load: `rampart-bench -w put` with N clients in a closed loop (each sends its next put
#   when the previous one is answered) over --conns connections, random keys of a key space of
#   10,000, for --duration. Its puts per second, p50, p99 and max latency, and its failed
#   requests by kind (gRPC code and message: "too many requests", "request timed out", ...).
# - the read probe: at the same time, against the same endpoints, a second rampart-bench that
#   reads a random key of that key space with a linearizable range at 20 per second over 2
#   clients (open loop: a read's latency counts from when it was due, so a stall shows on every
#   read due during it). Its p99 and max say whether reads are starved by the writes.
# - memory: each member's peak resident memory during the run (VmHWM of /proc/<pid>/status,
#   reset before the run by writing 5 to /proc/<pid>/clear_refs, which needs root or the
#   members' owner).
#
# Rounds, and within a round the client counts, alternate which system goes first, as
# compare.sh's do. With several rounds each cell of the table is the run with the median
# throughput of that system and client count (the lower middle one of an even number), and the
# plot draws the medians. Both clusters run with --quota-backend-bytes of 8 GiB (4 KiB values
# at thousands of puts per second would reach the 2 GiB default within a sweep), and each run is
# followed by a compaction to the current revision (not measured) and a wait until every member
# takes a put again, so that one run's backlog does not land on the next.
#
# Needs: etcd and etcdctl (Debian packages etcd-server, etcd-client), jq, cargo. Sends traffic
# to 127.0.0.1 only. The cluster start-up is shared with compare.sh and capacity.sh, in lib.sh.
# Data directories, logs, each run's JSON and the summary (one JSON line per run, what the plot
# is drawn from: `rampart-bench plot-sweep --summary FILE --out DIR`) go to
# benches/results/tmp/<time>/ (ignored by git).
# Ports: etcd's members on 22379-22384, Rampart's on 24379-24384 (ETCD_PORT_BASE and
# RAMPART_PORT_BASE move them); binaries: ETCD_BIN, ETCDCTL_BIN, RAMPART_BIN, BENCH_BIN.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)

client_counts=16,128,1000,4000
duration=15s
value_size=4096
conns=40
rounds=1
systems=etcd,rampart
profile=release
build=yes
key_space=10000
probe_clients=2
probe_rate=20
quota=8589934592

while [ $# -gt 0 ]; do
    case "$1" in
        --clients) client_counts=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --value-size) value_size=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --systems) systems=$2; shift 2 ;;
        --debug) profile=debug; shift ;;
        --no-build) build=no; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

IFS=, read -r -a clients_list <<<"$client_counts"
for clients in "${clients_list[@]}"; do
    if ! [[ $clients =~ ^[1-9][0-9]*$ ]]; then
        echo "--clients takes positive whole numbers, comma-separated (got $client_counts)" >&2
        exit 2
    fi
done
IFS=, read -r -a system_list <<<"$systems"
for system in "${system_list[@]}"; do
    case "$system" in
        etcd|rampart) ;;
        *) echo "--systems takes etcd and rampart (got $systems)" >&2; exit 2 ;;
    esac
done
if ! [[ $rounds =~ ^[1-9][0-9]*$ ]]; then
    echo "--rounds takes a positive whole number (got $rounds)" >&2
    exit 2
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$repo/benches/results/tmp/$stamp
mkdir -p "$work/runs"
summary=$work/summary.jsonl
touch "$summary"
result=$repo/benches/results/overload-$stamp.md
# The committed plot.
plots=$repo/benches/results/overload-$stamp

# shellcheck source=benches/lib.sh
. "$repo/benches/lib.sh"
find_binaries

declare -A binaries=([etcd]=$etcd_bin [rampart]=$rampart_bin)
declare -A port_bases=([etcd]=$etcd_port_base [rampart]=$rampart_port_base)
declare -A endpoints=()

echo "--- start 3 members of each of ${system_list[*]}"
for system in "${system_list[@]}"; do
    start_cluster "$system" "${binaries[$system]}" "${port_bases[$system]}" \
        --quota-backend-bytes="$quota"
    endpoints[$system]=$cluster_endpoints
done
for system in "${system_list[@]}"; do
    wait_writable "${endpoints[$system]}"
done

seed=${SEED:-$RANDOM$RANDOM}
echo "seed $seed (replay with SEED=$seed)"

# display_name SYSTEM: how the results name a system.
display_name() {
    case "$1" in
        etcd) echo etcd ;;
        rampart) echo Rampart ;;
    esac
}

# peak_rss_kb SYSTEM: the peak resident memory (VmHWM, KiB) of each member as a JSON array,
# null for a member that is gone.
peak_rss_kb() {
    local i kb list=''
    for i in 0 1 2; do
        kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/${member_pids[$1$i]}/status" 2>/dev/null) || true
        list+="${list:+,}${kb:-null}"
    done
    echo "[$list]"
}

# compact SYSTEM: compacts the system's history to its current revision (not measured), so that
# the sweep's 4 KiB values do not pile up, then waits until every member takes a put.
compact() {
    local system=$1 revision
    revision=$(etcdctl --endpoints="${endpoints[$system]}" --command-timeout=60s \
        endpoint status -w json | jq '[.[].Status.header.revision] | max') || revision=
    if [ -n "$revision" ]; then
        etcdctl --endpoints="${endpoints[$system]}" --command-timeout=5m \
            compact "$revision" >/dev/null || echo "  [$system] compaction failed"
    fi
    wait_writable "${endpoints[$system]}"
}

# run_one SYSTEM CLIENTS ROUND ORDER: one put run with its read probe, and its summary line.
run_one() {
    local system=$1 clients=$2 round=$3 order=$4
    local run=$system-c$clients-r$round name i
    name=$(display_name "$system")
    for i in 0 1 2; do
        echo 5 >"/proc/${member_pids[$system$i]}/clear_refs" \
            || echo "  [$system $clients] cannot reset the peak RSS of $system$i"
    done
    "$bench_bin" -w range --consistency linearizable --endpoints "${endpoints[$system]}" \
        --conns "$probe_clients" --clients "$probe_clients" --rate "$probe_rate" \
        --duration "$duration" --key-space "$key_space" --key-size 16 --seed "$seed" \
        --json-out "$work/runs/$run-probe.json" >"$work/runs/$run-probe.log" 2>&1 &
    local probe_pid=$!
    "$bench_bin" -w put --endpoints "${endpoints[$system]}" --conns "$conns" \
        --clients "$clients" --key-space "$key_space" --key-size 16 --value-size "$value_size" \
        --duration "$duration" --seed "$seed" --label "$name" \
        --json-out "$work/runs/$run.json" 2>&1 | sed "s/^/  [$system $clients] /" \
        || echo "  [$system $clients] the put run failed"
    wait "$probe_pid" || echo "  [$system $clients] the read probe failed (see $run-probe.log)"
    local rss probe=null
    rss=$(peak_rss_kb "$system")
    if [ -f "$work/runs/$run-probe.json" ]; then
        probe=$(jq -c '{ok, errors_total, errors,
            p99_us: (if .ok > 0 then .ops.p99_us else null end),
            max_us: (if .ok > 0 then .ops.max_us else null end)}' "$work/runs/$run-probe.json")
    fi
    local put_json=$work/runs/$run.json
    if [ ! -f "$put_json" ]; then
        put_json=<(echo '{"ok": 0, "errors_total": 1, "errors": {"the run failed": 1}}')
    fi
    jq -c --arg system "$name" --arg target "$system" --argjson clients "$clients" \
        --argjson round "$round" --argjson order "$order" --argjson rss "$rss" \
        --argjson probe "$probe" \
        '{system: $system, target: $target, clients: $clients, round: $round, order: $order,
          ok, errors_total, errors,
          throughput: (if .ok > 0 then .throughput else null end),
          p50_us: (if .ok > 0 then .ops.p50_us else null end),
          p99_us: (if .ok > 0 then .ops.p99_us else null end),
          max_us: (if .ok > 0 then .ops.max_us else null end),
          rss_kb: $rss, probe: $probe}' "$put_json" >>"$summary"
    jq -r 'select(.probe != null) | "  [\(.target) \(.clients)] read probe: \(.probe.ok) ok,"
        + " \(.probe.errors_total) errors, p99 \(.probe.p99_us) us, max \(.probe.max_us) us;"
        + " peak RSS \(.rss_kb | map(tostring) | join(", ")) KiB"' <<<"$(tail -1 "$summary")"
    compact "$system"
}

for round in $(seq 1 "$rounds"); do
    for index in "${!clients_list[@]}"; do
        order=("${system_list[@]}")
        if [ $(((round + index) % 2)) = 0 ] && [ ${#order[@]} = 2 ]; then
            order=("${order[1]}" "${order[0]}")
        fi
        clients=${clients_list[$index]}
        echo "--- round $round of $rounds, $clients clients: ${order[*]}"
        for position in "${!order[@]}"; do
            run_one "${order[$position]}" "$clients" "$round" "$position"
        done
    done
done

plot_note=
if ! "$bench_bin" plot-sweep --summary "$summary" --out "$plots"; then
    plot_note="No plot: rampart-bench plot-sweep could not draw the summary (see above)."
    rmdir "$plots" 2>/dev/null || true
fi

# The table's columns: each measure for each system, and the throughput ratio when both ran.
header="| clients |"
rule="|---:|"
for column in "puts/s" "p50 ms" "p99 ms" "max ms" "errors" "peak RSS MiB, max (each member)" \
        "read probe p99 / max ms"; do
    for system in "${system_list[@]}"; do
        header+=" $(display_name "$system") $column |"
        case "$column" in
            errors|peak*|read*) rule+="---|" ;;
            *) rule+="---:|" ;;
        esac
    done
    if [ "$column" = "puts/s" ] && [ ${#system_list[@]} = 2 ]; then
        header+=" ratio |"
        rule+="---:|"
    fi
done
systems_json=$(printf '%s\n' "${system_list[@]}" | jq -R . | jq -sc .)

echo "--- write $result"
{
    echo "# Overload sweep, $(date -u +%Y-%m-%d)"
    echo
    echo "- commit $(describe_commit)," \
        "$("$etcd_bin" --version | head -1), rampart $profile build"
    echo "- machine: $(nproc) cores, $(uname -sr); each system a 3-member cluster on 127.0.0.1," \
        "same disk, --quota-backend-bytes of 8 GiB"
    echo "- each run: $duration of closed-loop puts by the number of clients in the first column" \
        "over $conns connections, key space $key_space, values of $value_size bytes, seed $seed;" \
        "alongside, a read probe: linearizable ranges of random keys at $probe_rate/s over" \
        "$probe_clients clients (open loop), against the same endpoints"
    echo "- errors: failed puts by kind (gRPC message, or code where it has none); peak RSS:" \
        "VmHWM of each member over the run; ratio: Rampart / etcd puts per second"
    if [ "$rounds" -gt 1 ]; then
        echo "- $rounds rounds: each cell is the run with the median throughput of that system" \
            "and client count"
    fi
    echo
    echo "$header"
    echo "$rule"
    jq -rs --argjson systems "$systems_json" '
        def fixed(n): if . == null then "–"
            else (. * pow(10; n) | round / pow(10; n) | tostring) end;
        # Milliseconds from microseconds, to about three significant digits.
        def ms: if . == null then "–" else (. / 1000)
            | if . < 10 then fixed(2) elif . < 100 then fixed(1) else fixed(0) end end;
        # "ResourceExhausted: etcdserver: too many requests" -> "too many requests".
        def kind_name: (sub("^[A-Za-z]+: "; "") | sub("^etcdserver: "; "")) as $message
            | if $message == "" then sub(": *$"; "") else $message end | gsub("\\|"; "\\|");
        def errors: if .errors_total == 0 then "0"
            else [.errors | to_entries | sort_by(-.value)[] | "\(.value) \(.key | kind_name)"]
                | join(", ") end;
        def mib: if . == null then "?" else (. / 1024 | round | tostring) end;
        def rss: if (.rss_kb | map(values) | length) == 0 then "–"
            else "\(.rss_kb | map(values) | max | mib) (\(.rss_kb | map(mib) | join(" / ")))" end;
        def probe: if .probe == null then "–"
            else "\(.probe.p99_us | ms) / \(.probe.max_us | ms)"
                + (if .probe.errors_total > 0 then ", \(.probe.errors_total) errors" else "" end)
            end;
        def cells($reps; f): [$reps[] | if . == null then "–" else f end] | join(" | ");
        def throughput_of($reps; $target):
            $reps | map(select(. != null and .target == $target)) | .[0].throughput;
        group_by(.clients)[] as $runs
        | [$systems[] as $s | $runs | map(select(.target == $s))
            | sort_by(.throughput // -1)
            | if length == 0 then null else .[(length - 1) / 2 | floor] end] as $reps
        | throughput_of($reps; "etcd") as $e | throughput_of($reps; "rampart") as $r
        | (if $e == null or $r == null or $e == 0 then " – |"
            else " \($r / $e | fixed(2))× |" end) as $ratio
        | "| \($runs[0].clients) | \(cells($reps; .throughput | fixed(0))) |"
          + (if ($systems | length) == 2 then $ratio else "" end)
          + " \(cells($reps; .p50_us | ms)) | \(cells($reps; .p99_us | ms))"
          + " | \(cells($reps; .max_us | ms)) | \(cells($reps; errors))"
          + " | \(cells($reps; rss)) | \(cells($reps; probe)) |"
    ' "$summary"
    echo
    if [ -z "$plot_note" ]; then
        echo "![puts per second and p99 latency against clients]($(basename "$plots")/overload.png)"
    else
        echo "$plot_note"
    fi
    echo
    echo "Each run's report and its read probe's (JSON, with latency percentiles and per-second"
    echo "counts), and the summary the plot is drawn from, are in benches/results/tmp/$stamp/."
} >"$result"
cat "$result"
