#!/usr/bin/env bash
# The Compose fault test: builds the image, brings up deploy/compose/docker-compose.yml, and
# drives it through etcdctl at the published client ports while it
#   1. kills the leader's container (docker kill): the other two go on; docker start brings it
#      back and it catches up;
#   2. disconnects one follower from the network: it refuses writes at once with "no leader",
#      the other two go on; reconnected, it catches up;
#   3. restarts all three containers (docker restart): the data survives in the volumes;
#   4. restarts the members one by one under writes;
# with a writer putting keys through all three endpoints the whole time. Every put that
# etcdctl acknowledged must be there at the end, with its value, on every member, and the
# members must agree (same revision, same `endpoint hashkv`). Then `down -v`, also on failure
# (trap), after printing the members' logs.
#
# Usage: deploy/test-compose.sh [--no-build]
#   --no-build   use the rampart:latest image already built
# The client ports are free ones chosen at start (set RAMPART1_PORT .. RAMPART3_PORT to choose),
# so the test runs beside others' clusters; the Compose project is rampart-test-<pid>.
# Needs docker, docker-compose (1.29 reads the file) and etcdctl 3.4 on PATH, and python3.
set -euo pipefail

cd "$(dirname "$0")/.."
build=yes
case "${1:-}" in
    --no-build) build=no ;;
    "") ;;
    *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
esac

started=$(date +%s)
step() { echo "--- test-compose [$(($(date +%s) - started)) s]: $*"; }
fail() { echo "test-compose: FAILED: $*" >&2; exit 1; }

# The Compose file reads it; the test bootstraps a new cluster.
unset RAMPART_INITIAL_CLUSTER_STATE
project="rampart-test-$$"
compose_file=deploy/compose/docker-compose.yml
work=$(mktemp -d)
acked="$work/acked"     # "key value" of every put etcdctl acknowledged
stop_writer="$work/stop-writer"
writer_pid=""
members=(rampart1 rampart2 rampart3)

compose() { docker-compose -p "$project" -f "$compose_file" "$@"; }

cleanup() {
    status=$?
    if [ -n "$writer_pid" ]; then
        touch "$stop_writer"
        wait "$writer_pid" 2>/dev/null || true
    fi
    if [ "$status" != 0 ]; then
        echo "--- test-compose: the members' logs (last 60 lines each)" >&2
        compose logs --no-color --tail=60 >&2 || true
    fi
    step "down -v"
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
# A signal ends the script through `exit`, so that the EXIT trap tears the cluster down.
trap 'exit 130' INT
trap 'exit 143' TERM

# free_ports N: N TCP ports on 127.0.0.1 that nothing listens on now.
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

if [ -z "${RAMPART1_PORT:-}${RAMPART2_PORT:-}${RAMPART3_PORT:-}" ]; then
    read -r RAMPART1_PORT RAMPART2_PORT RAMPART3_PORT < <(free_ports 3)
fi
export RAMPART1_PORT RAMPART2_PORT RAMPART3_PORT
declare -A endpoint=(
    [rampart1]="127.0.0.1:$RAMPART1_PORT"
    [rampart2]="127.0.0.1:$RAMPART2_PORT"
    [rampart3]="127.0.0.1:$RAMPART3_PORT"
)
all_endpoints="${endpoint[rampart1]},${endpoint[rampart2]},${endpoint[rampart3]}"

ectl() { ETCDCTL_API=3 etcdctl --dial-timeout=2s --command-timeout=5s "$@"; }

# others MEMBER: the endpoints of the members other than MEMBER, comma-separated.
others() {
    local m list=()
    for m in "${members[@]}"; do
        [ "$m" = "$1" ] || list+=("${endpoint[$m]}")
    done
    (IFS=,; echo "${list[*]}")
}

container() { compose ps -q "$1"; }

# wait_for DESCRIPTION SECONDS COMMAND...: runs COMMAND every half second until it succeeds;
# fails the test if it has not within SECONDS.
wait_for() {
    local what=$1 seconds=$2 deadline
    shift 2
    deadline=$(($(date +%s) + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            fail "waited ${seconds} s for $what"
        fi
        sleep 0.5
    done
}

healthy() {
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$(container "$1")")" = healthy ]
}

# leader_of ENDPOINTS: the name of the member that the members at ENDPOINTS call leader, if
# they all name the same one.
leader_of() {
    ectl --endpoints="$1" endpoint status -w json | python3 -c '
import json, sys
ports = dict(arg.split("=") for arg in sys.argv[1:])
statuses = json.load(sys.stdin)
leaders = {s["Status"]["leader"] for s in statuses}
if len(leaders) != 1 or 0 in leaders:
    sys.exit(1)
for s in statuses:
    if s["Status"]["header"]["member_id"] in leaders:
        print(ports[s["Endpoint"]])
        sys.exit(0)
sys.exit(1)
' "${endpoint[rampart1]}=rampart1" "${endpoint[rampart2]}=rampart2" \
        "${endpoint[rampart3]}=rampart3"
}

# put_through ENDPOINTS KEY VALUE: one put, recorded as acknowledged if etcdctl says OK.
put_through() {
    ectl --endpoints="$1" put "$2" "$3" >/dev/null 2>&1 && echo "$2 $3" >> "$acked"
}

# has_value ENDPOINT KEY VALUE: the member at ENDPOINT holds KEY=VALUE (serializable read: what
# this member has applied, not what the leader has).
has_value() {
    [ "$(ectl --endpoints="$1" get "$2" --print-value-only --consistency=s)" = "$3" ]
}

# caught_up MEMBER: a key written through the others after MEMBER came back reaches MEMBER.
caught_up() {
    local key="marker/$1/$(date +%s%N)"
    wait_for "a write through the members other than $1" 30 put_through "$(others "$1")" "$key" x
    wait_for "$1 to apply a write made after it came back" 60 \
        has_value "${endpoint[$1]}" "$key" x
}

writer() {
    local n=0
    while [ ! -e "$stop_writer" ]; do
        n=$((n + 1))
        put_through "$all_endpoints" "w/$n" "v$n" || true
    done
}

start_writer() {
    rm -f "$stop_writer"
    writer &
    writer_pid=$!
}

stop_writer() {
    touch "$stop_writer"
    wait "$writer_pid"
    writer_pid=""
}

acked_count() { wc -l < "$acked"; }

# writes_go_on ENDPOINTS: the writer's acknowledged puts grow, and a put through ENDPOINTS
# succeeds.
writes_go_on() {
    local before
    before=$(acked_count)
    wait_for "a write through $1" 30 put_through "$1" "probe/$(date +%s%N)" x
    wait_for "the writer's puts to be acknowledged again" 30 \
        test "$(acked_count)" -gt "$before"
}

# check_all: every acknowledged put is on every member, and the members agree.
check_all() {
    local m
    wait_for "the members to reach the same revision" 60 same_revision
    for m in "${members[@]}"; do
        ectl --endpoints="${endpoint[$m]}" get "" --prefix --consistency=s -w json > "$work/$m.json"
        python3 - "$acked" "$work/$m.json" "$m" <<'PY' || fail "$m lost acknowledged writes"
import base64, json, sys
acked_file, dump_file, member = sys.argv[1:]
kvs = json.load(open(dump_file)).get("kvs", [])
held = {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode() for kv in kvs}
lost = []
for line in open(acked_file):
    key, value = line.split()
    if held.get(key) != value:
        lost.append((key, value, held.get(key)))
if lost:
    print(f"{member}: {len(lost)} acknowledged puts missing or wrong, e.g. {lost[:5]}", file=sys.stderr)
    sys.exit(1)
PY
    done
    local hashes
    hashes=$(ectl --endpoints="$all_endpoints" endpoint hashkv -w json |
        python3 -c 'import json,sys; print(len({s["HashKV"]["hash"] for s in json.load(sys.stdin)}))')
    [ "$hashes" = 1 ] || fail "the members' hashkv differ"
    echo "    $(acked_count) acknowledged puts, all on every member; hashkv equal"
}

same_revision() {
    ectl --endpoints="$all_endpoints" endpoint status -w json | python3 -c '
import json, sys
revs = {s["Status"]["header"]["revision"] for s in json.load(sys.stdin)}
sys.exit(0 if len(revs) == 1 else 1)'
}

wait_serving() {
    local m
    for m in "$@"; do
        wait_for "$m to serve" 60 ectl --endpoints="${endpoint[$m]}" endpoint status
    done
    wait_for "a leader all members agree on" 60 leader_of "$all_endpoints"
}

: > "$acked"

if [ "$build" = yes ]; then
    step "build the image"
    deploy/build-image.sh
fi

step "up: ${members[*]} on 127.0.0.1:$RAMPART1_PORT, :$RAMPART2_PORT, :$RAMPART3_PORT"
compose up -d
for m in "${members[@]}"; do
    wait_for "$m's health check to pass" 90 healthy "$m"
done
wait_serving "${members[@]}"
ectl --endpoints="$all_endpoints" member list -w table
wait_for "a first write" 30 put_through "$all_endpoints" first 1
start_writer
writes_go_on "$all_endpoints"

step "1. docker kill of the leader"
leader=$(leader_of "$all_endpoints")
echo "    leader: $leader"
docker kill "$(container "$leader")" >/dev/null
echo "    $leader's container: $(docker inspect --format '{{.State.Status}}' "$(container "$leader")")"
wait_for "a new leader among the others" 30 leader_of "$(others "$leader")"
echo "    new leader: $(leader_of "$(others "$leader")")"
writes_go_on "$(others "$leader")"
docker start "$(container "$leader")" >/dev/null
wait_serving "$leader"
caught_up "$leader"
echo "    $leader is back and caught up"

step "2. docker network disconnect of a follower"
leader=$(leader_of "$all_endpoints")
for m in "${members[@]}"; do [ "$m" != "$leader" ] && cut=$m && break; done
network=$(docker inspect --format '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' \
    "$(container "$cut")")
echo "    $cut leaves $network"
docker network disconnect "$network" "$(container "$cut")"
# Its published port goes with its network, so it is asked from inside its container. A put
# waits up to two election timeouts for a leader it can reach before "no leader" (2.6 to 3.8 s
# measured here, `docker exec` taking 0.1 s of it), so "quickly" is under 5 s, against the 7 s
# of a request timeout.
no_leader() {
    local out began took
    began=$(date +%s%N)
    out=$(timeout 20 docker exec "$(container "$cut")" /usr/local/bin/rampartctl put cut/probe x 2>&1) && return 1
    took=$((($(date +%s%N) - began) / 1000000))
    echo "$out" | grep -q "no leader" || return 1
    echo "    $cut refused a put in $took ms: $(echo "$out" | grep -o 'etcdserver: no leader' | head -1)" >&2
    [ "$took" -lt 5000 ]
}
wait_for "$cut to refuse writes quickly with \"no leader\"" 30 no_leader
no_leader
writes_go_on "$(others "$cut")"
echo "    the others go on"
docker network connect --alias "$cut" "$network" "$(container "$cut")"
wait_serving "$cut"
caught_up "$cut"
echo "    $cut is reconnected and caught up"

step "3. docker restart of all three"
stop_writer
check_all
# At once (`docker restart a b c` would restart them one after the other, keeping a quorum).
restarts=()
for m in "${members[@]}"; do
    docker restart "$(container "$m")" >/dev/null &
    restarts+=($!)
done
for pid in "${restarts[@]}"; do wait "$pid"; done
wait_serving "${members[@]}"
check_all
start_writer

step "4. rolling restart under writes"
for m in "${members[@]}"; do
    echo "    restart $m"
    docker restart "$(container "$m")" >/dev/null
    wait_serving "$m"
    caught_up "$m"
    writes_go_on "$all_endpoints"
done
stop_writer

step "check: no acknowledged write lost"
check_all
step "passed in $(($(date +%s) - started)) s"
