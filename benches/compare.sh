#!/usr/bin/env bash
# The same rampart-bench workloads against a 3-member etcd cluster and a 3-member Rampart
# cluster on loopback, in alternating rounds; writes a markdown table of the ratios to
# benches/results/compare-<time>.md.
#
# Usage: benches/compare.sh [options]
#   --duration D        length of each measured run (default 30s)
#   --rounds N          rounds; each runs every workload against both clusters (default 3;
#                       0 runs none, e.g. for --check-perf alone)
#   --workloads LIST    comma-separated (default put,range,range-serializable,txn-put,mixed,
#                       watch,lease,lock,lock-contended,election,delete); lock takes its names
#                       from the key space (rarely two clients on one), lock-contended from
#                       --lock-names names (the clients queue for them)
#   --clients N         concurrent clients (default 16)
#   --conns N           gRPC connections, spread over the 3 members (default 3)
#   --key-space N       distinct keys (default 10000)
#   --value-size N      bytes per value (default 256)
#   --watchers N        watchers of the watch workload (default 64)
#   --streams N         watch streams of the watch workload (default 8)
#   --lock-names N      names of lock-contended (default 4)
#   --elections N       elections of the election workload (default 4)
#   --observers N       observers of the election workload, each observing every election
#                       (default 8)
#   --rate R            open loop at R requests/s (default: closed loop)
#   --check-perf LOADS  after the rounds, run `etcdctl check perf --load=L` against each
#                       cluster for each comma-separated load L (s, m, l, xl; 60 s each)
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
# process) does not always favour the same one. The table shows medians over the rounds. For each
# workload and cluster, the plots (latency by percentile, completions per second) of the round
# with the median throughput are copied to benches/results/compare-<time>/ and linked from the
# table; every run's plots stay in benches/results/tmp/. Only the latest run's plots are kept in
# git (megabytes a run; see benches/README.md): a run that draws plots deletes the compare-*/
# folders of the runs before it and puts a note in their reports where the links were, so
# commit those changes together with the new report.
#
# etcdctl check perf writes 1 KiB values under /etcdctl-check-perf/ at a fixed rate for 60 s
# (s: 150/s over 50 clients, m: 1000/s over 200, l: 8000/s over 500, xl: 15000/s over 1000) and
# passes if it reached 90% of the rate, with no error, no request slower than 0.5 s and a
# standard deviation below 0.1 s. Its verdict and the lines it prints go into the results.
#
# Needs: etcd and etcdctl (Debian packages etcd-server, etcd-client), jq, cargo. Sends traffic
# to 127.0.0.1 only. The cluster start-up is shared with capacity.sh, in lib.sh.
# Ports: etcd's members on 22379-22384, Rampart's on 24379-24384 (ETCD_PORT_BASE and
# RAMPART_PORT_BASE move them); binaries: ETCD_BIN, ETCDCTL_BIN, RAMPART_BIN, BENCH_BIN.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)

duration=30s
rounds=3
workloads=put,range,range-serializable,txn-put,mixed,watch,lease,lock,lock-contended,election,delete
clients=16
conns=3
key_space=10000
value_size=256
watchers=64
streams=8
lock_names=4
elections=4
observers=8
rate=
check_perf_loads=
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
        --lock-names) lock_names=$2; shift 2 ;;
        --elections) elections=$2; shift 2 ;;
        --observers) observers=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --check-perf) check_perf_loads=$2; shift 2 ;;
        --debug) profile=debug; shift ;;
        --no-build) build=no; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# workload_args LABEL: the rampart-bench arguments of a workload label.
workload_args() {
    local space="--key-space $key_space"
    case "$1" in
        range-serializable) echo "-w range --consistency serializable $space" ;;
        range|txn-put|mixed|delete) echo "-w $1 --consistency linearizable $space" ;;
        watch) echo "-w watch --watchers $watchers --streams $streams $space" ;;
        put|lease|lock) echo "-w $1 $space" ;;
        lock-contended) echo "-w lock --key-space $lock_names" ;;
        election) echo "-w election --elections $elections --observers $observers" ;;
        *) echo "unknown workload $1" >&2; exit 2 ;;
    esac
}

IFS=, read -r -a labels <<<"$workloads"
for label in "${labels[@]}"; do workload_args "$label" >/dev/null; done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$repo/benches/results/tmp/$stamp
mkdir -p "$work/runs" "$work/plots"
summary=$work/summary.jsonl
touch "$summary"
result=$repo/benches/results/compare-$stamp.md
# The committed plots: one latency and one throughput PNG per workload and cluster.
plots=$repo/benches/results/compare-$stamp

# shellcheck source=benches/lib.sh
. "$repo/benches/lib.sh"
find_binaries

echo "--- start 3 etcd members and 3 rampart members"
start_cluster etcd "$etcd_bin" "$etcd_port_base"
etcd_endpoints=$cluster_endpoints
start_cluster rampart "$rampart_bin" "$rampart_port_base"
rampart_endpoints=$cluster_endpoints
wait_writable "$etcd_endpoints"
wait_writable "$rampart_endpoints"

seed=${SEED:-$RANDOM$RANDOM}
# The key space is given per workload (workload_args): lock-contended's is small.
keys=(--conns "$conns" --clients "$clients" --key-size 16 --value-size "$value_size"
    --seed "$seed")
common=("${keys[@]}" --duration "$duration")
if [ -n "$rate" ]; then
    common+=(--rate "$rate")
fi
echo "seed $seed (replay with SEED=$seed)"


# display_name TARGET: how the results name a cluster.
display_name() {
    case "$1" in
        etcd) echo etcd ;;
        rampart) echo Rampart ;;
    esac
}

# run_one TARGET ENDPOINTS LABEL ROUND ORDER
run_one() {
    local target=$1 endpoints=$2 label=$3 round=$4 order=$5
    local run=$target-$label-r$round
    local caption
    caption=$(display_name "$target")
    # The plots' captions name the workload (-w), which does not say "serializable".
    case "$label" in
        range-serializable) caption+=" serializable" ;;
        lock-contended) caption+=" contended" ;;
    esac
    # shellcheck disable=SC2046  # workload_args is meant to split into words.
    "$bench_bin" --endpoints "$endpoints" "${common[@]}" $(workload_args "$label") \
        --json-out "$work/runs/$run.json" --plot-dir "$work/plots/$run" --label "$caption" \
        | sed "s/^/  [$target] /"
    jq -c --arg target "$target" --arg name "$label" --argjson order "$order" \
        --argjson round "$round" \
        '{target: $target, label: $name, order: $order, round: $round, ok,
          p50: (if .ok > 0 then .ops.p50_us else null end),
          p99: (if .ok > 0 then .ops.p99_us else null end),
          throughput: (if .ok > 0 then .throughput else null end), errors: .errors_total,
          kinds: (.errors | keys)}' "$work/runs/$run.json" >>"$summary"
}

# check_perf TARGET ENDPOINTS LOAD: runs etcdctl check perf and records its verdict (its exit
# status) and what it printed, less the progress bar, in check-perf.jsonl.
check_perf() {
    local target=$1 endpoints=$2 load=$3 status=0
    local out=$work/check-perf-$target-$load.txt
    echo "--- etcdctl check perf --load=$load against $target"
    etcdctl check perf --load="$load" --endpoints="$endpoints" >"$out" 2>&1 || status=$?
    # Its progress bar (" 12 / 60   20.00% 00m48s") is redrawn on a line of its own, or after a
    # carriage return on a terminal: drop it, and blank lines.
    tr '\r' '\n' <"$out" | grep -v -E -e '^ *$' -e '^ *[0-9]+ / [0-9]+ ' \
        | jq -R . | jq -sc --arg target "$target" --arg load "$load" --argjson status "$status" \
            '{target: $target, load: $load, pass: ($status == 0), lines: .}' \
        | tee -a "$work/check-perf.jsonl" | jq -r '.lines[]' | sed "s/^/  [$target] /"
}

for round in $(seq 1 "$rounds"); do
    if [ $((round % 2)) = 1 ]; then order=(etcd rampart); else order=(rampart etcd); fi
    echo "--- round $round of $rounds: ${order[*]}"
    for target in "${order[@]}"; do
        endpoints_var=${target}_endpoints
        # Every key once, so that reads and updates find them (not measured).
        "$bench_bin" -w range --prefill --total 1 --endpoints "${!endpoints_var}" "${keys[@]}" \
            --key-space "$key_space" >/dev/null
    done
    for index in "${!labels[@]}"; do
        for target in "${order[@]}"; do
            endpoints_var=${target}_endpoints
            run_one "$target" "${!endpoints_var}" "${labels[$index]}" "$round" "$index"
        done
    done
done

if [ -n "$check_perf_loads" ]; then
    IFS=, read -r -a perf_loads <<<"$check_perf_loads"
    for index in "${!perf_loads[@]}"; do
        if [ $((index % 2)) = 0 ]; then order=(etcd rampart); else order=(rampart etcd); fi
        for target in "${order[@]}"; do
            endpoints_var=${target}_endpoints
            check_perf "$target" "${!endpoints_var}" "${perf_loads[$index]}"
        done
    done
fi

# For each workload and cluster, the plots of the round with the median throughput (the lower
# middle one of an even number of rounds); none for a workload a cluster answered not once.
mkdir -p "$plots"
jq -rs 'group_by([.label, .target])[] | map(select(.throughput != null)) | select(length > 0)
        | sort_by(.throughput) | .[(length - 1) / 2 | floor] | "\(.label) \(.target) \(.round)"' \
    "$summary" | while read -r label target round; do
        for kind in latency throughput; do
            cp "$work/plots/$target-$label-r$round/"*"-$kind.png" "$plots/$label-$target-$kind.png"
        done
    done
rmdir "$plots" 2>/dev/null || true

# plot_links LABEL TARGET: the markdown links to a workload's committed plots, or a dash.
plot_links() {
    local dir
    dir=$(basename "$plots")
    if [ -f "$plots/$1-$2-latency.png" ]; then
        echo "[latency]($dir/$1-$2-latency.png), [throughput]($dir/$1-$2-throughput.png)"
    else
        echo "–"
    fi
}

echo "--- write $result"
{
    echo "# Rampart vs etcd, $(date -u +%Y-%m-%d)"
    echo
    echo "- commit $(describe_commit)," \
        "$("$etcd_bin" --version | head -1), rampart $profile build"
    echo "- machine: $(nproc) cores, $(uname -sr); both 3-member clusters on 127.0.0.1, same disk"
    echo "- each run: $duration, ${rate:+open loop at $rate/s, }$clients clients over $conns connections," \
        "key space $key_space, values of $value_size bytes, seed $seed; watch: $watchers watchers" \
        "over $streams streams; lock-contended: $lock_names names; election: $elections" \
        "elections, $observers observers"
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
    if [ -d "$plots" ]; then
        echo
        echo "Plots of the round with the median throughput (latency by percentile; completions"
        echo "per second):"
        echo
        echo "| workload | etcd | Rampart |"
        echo "|---|---|---|"
        for label in "${labels[@]}"; do
            echo "| $label | $(plot_links "$label" etcd) | $(plot_links "$label" rampart) |"
        done
    fi
    if [ -s "$work/check-perf.jsonl" ]; then
        echo
        echo "## etcdctl check perf"
        echo
        echo "$("$etcdctl_bin" version | head -1) against each cluster's three endpoints:"
        echo
        echo "| load | etcd | Rampart |"
        echo "|---|---|---|"
        jq -rs '
            def cell: if . == null then "–"
                else (if .pass then "**PASS**" else "**FAIL**" end)
                    + ([.lines[] | select(. != "PASS" and . != "FAIL")
                        | gsub("\\|"; "\\|")] | map("<br>" + .) | join("")) end;
            group_by(.load)[]
            | (map(select(.target == "etcd")) | .[0]) as $e
            | (map(select(.target == "rampart")) | .[0]) as $r
            | "| \(.[0].load) | \($e | cell) | \($r | cell) |"
        ' "$work/check-perf.jsonl"
    fi
    echo
    echo "Each run's report (JSON, with latency percentiles and per-second counts) and plots are"
    echo "in benches/results/tmp/$stamp/."
} >"$result"
cat "$result"

# drop_plot_links REPORT: replaces the table of plot links in an older report by a note.
drop_plot_links() {
    awk '
        /^Plots of the round with the median throughput/ {
            print "The plots of this run are not kept: the repository holds only those of the"
            print "latest run (benches/compare.sh draws them for each run; see benches/README.md)."
            skip = 1; next
        }
        skip && /^[|]/ { table = 1; next }
        skip && table { skip = 0; table = 0 }
        skip { next }
        { print }
    ' "$1" >"$1.tmp"
    mv "$1.tmp" "$1"
}

# Only the latest run's plots stay committed; the reports keep every number. A run without plots
# (--rounds 0) leaves the earlier ones alone.
if [ -d "$plots" ]; then
    for old in "$repo"/benches/results/compare-*/; do
        old=${old%/}
        if [ ! -d "$old" ] || [ "$old" = "$plots" ]; then continue; fi
        rm -r "$old"
        if [ -f "$old.md" ]; then drop_plot_links "$old.md"; fi
        echo "--- removed the plots of $(basename "$old") (commit the removal with this run)"
    done
fi
