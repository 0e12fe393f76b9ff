#!/usr/bin/env bash
# Node-agent API under load: the bulk route (`/api/v1/tags/pod/{node}`, what every node
# agent calls every minute) of the real service and TLS server over a synthetic cluster of
# NODES nodes, PODS pods and SERVICES services (e2e/src/bin/bench_node_api.rs), asked by
# CONNS concurrent TLS clients for random nodes. See BENCHMARKS.md §3 for how to read it.
#
# usage: bench/node_api.sh
# env:   ROUNDS (3) DURATION (10, seconds per load run) CONNS (200) PACE_MS (20) NODES (5000)
#        PODS (150000) SERVICES (10000) SERVER_CPU (0) CLIENT_CPU (1) PORT (18005)
#        SKIP_BUILD (unset) OUT (target/bench/node_api) BIN (target/release/bench_node_api;
#        another build of it, e.g. an older commit's, to compare)
#
# Each round starts the server pinned to SERVER_CPU (it builds the map, then listens),
# checks one answer, warms up, and runs two loads with wrk (HTTP/1.1 keep-alive over TLS)
# pinned to CLIENT_CPU, reading the server's VmRSS during each and its VmHWM at the end:
#   saturated: every client sends its next request as soon as it has an answer, so the
#     server's one core is the bottleneck and latency is mostly queueing (by Little's law
#     p50 is about CONNS / req/s): this measures throughput and CPU per request.
#   paced: every client waits a random 0 to 2 * PACE_MS between requests (at most CONNS /
#     PACE_MS offered, 10,000 req/s by default, 120 times what 5,000 node agents asking once
#     a minute send), so latency is the time to answer, not the time in the queue.
# Reported (medians over the rounds): the map's build time, RSS with the cluster loaded,
# under each load and at peak, and for each load req/s, p50/p99 and server CPU per request.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-200}
PACE_MS=${PACE_MS:-20}
NODES=${NODES:-5000}
PODS=${PODS:-150000}
SERVICES=${SERVICES:-10000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18005}
OUT=${OUT:-target/bench/node_api}
BIN=${BIN:-target/release/bench_node_api}
# Kept in step with TOKEN in e2e/src/bin/bench_node_api.rs.
TOKEN=benchNodeAgentToken0123456789abcdefABCDEF
TICK_US=$((1000000 / $(getconf CLK_TCK)))

if ! command -v wrk >/dev/null; then
    apt-get install -y wrk
fi
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release -p e2e --bin bench_node_api
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/*.log "$OUT"/summary.md

# Random nodes, named as metadata::synthetic::node_name names them (LuaJIT: no `//`).
cat >"$OUT/nodes.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $TOKEN"
math.randomseed(os.time())
local nodes = $NODES
request = function()
  local i = math.random(0, nodes - 1)
  local path = string.format("/api/v1/tags/pod/ip-10-%d-%d-%d.ec2.internal",
    math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
  return wrk.format("GET", path)
end
LUA
# A random pause (mean PACE_MS), so the clients do not all ask in the same instant.
{ cat "$OUT/nodes.lua"; echo "delay = function() return math.random(0, 2 * $PACE_MS) end"; } \
    >"$OUT/paced.lua"

describe_machine

status_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$server_pid/status"; }

run_one() {
    local round=$1 log="$OUT/server-$1.log"
    taskset -c "$SERVER_CPU" "$BIN" --port "$PORT" --max-secs $((DURATION * 2 + 300)) \
        --nodes "$NODES" --pods "$PODS" --services "$SERVICES" >"$log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1200); do
        grep -q '^listening' "$log" && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^listening' "$log" || { cat "$log"; exit 1; }

    # One answer by hand first: a 200 with the node's services, so the load measures
    # real answers and not 404s or auth failures.
    local first
    first=$(curl -sSk -o "$OUT/first.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
        "https://127.0.0.1:$PORT/api/v1/tags/pod/ip-10-0-0-7.ec2.internal")
    if [[ $first != 200 ]] || ! grep -q '"services"' "$OUT/first.json"; then
        echo "unexpected first answer ($first): $(head -c 300 "$OUT/first.json")" >&2
        exit 1
    fi

    # Warm-up: handshakes and the allocator.
    taskset -c "$CLIENT_CPU" wrk -c "$CONNS" -t 1 -d 2s -s "$OUT/nodes.lua" \
        "https://127.0.0.1:$PORT" >/dev/null

    # load name, lua script → "req/s p50 p99 cpu-µs/request rss-during-KiB"
    load() {
        local name=$1 script=$2 txt t0 t1 rss
        txt="$OUT/wrk-$1-$round.txt"
        t0=$(cpu_ticks)
        taskset -c "$CLIENT_CPU" wrk -c "$CONNS" -t 1 -d "${DURATION}s" --latency -s "$script" \
            "https://127.0.0.1:$PORT" >"$txt" &
        local wrk_pid=$!
        sleep $((DURATION / 2))
        rss=$(status_kib VmRSS)
        wait "$wrk_pid"
        t1=$(cpu_ticks)
        if grep -qE 'Non-2xx|Socket errors' "$txt"; then
            echo "round $round, $name: errors (see $txt): $(grep -E 'Non-2xx|Socket errors' "$txt")" >&2
            exit 1
        fi
        local n
        n=$(awk '/requests in/ { print $1 }' "$txt")
        echo "$(awk '/^Requests\/sec:/ { print $2 }' "$txt") $(wrk_percentile "$txt" 50%)" \
            "$(wrk_percentile "$txt" 99%)" \
            "$(awk -v t=$((t1 - t0)) -v n="$n" -v u="$TICK_US" 'BEGIN { printf "%.2f", t * u / n }')" \
            "$rss"
    }
    local saturated paced hwm
    saturated=$(load saturated "$OUT/nodes.lua")
    paced=$(load paced "$OUT/paced.lua")
    hwm=$(status_kib VmHWM)
    stop_server

    local build rss_loaded
    build=$(sed -n 's/.*map built in \([0-9.]*\)\(m\?s\).*/\1 \2/p' "$log" \
        | awk '{ printf "%.1f", ($2 == "s") ? $1 * 1000 : $1 }')
    rss_loaded=$(sed -n 's/.* KiB at start, \([0-9]*\) KiB with the cluster loaded.*/\1/p' "$log")
    # round build rss-loaded hwm | saturated: rps p50 p99 cpu rss | paced: rps p50 p99 cpu rss
    echo "$round $build $rss_loaded $hwm $saturated $paced" >>"$OUT/results.log"
    printf 'round %s: map built in %s ms, RSS loaded %s KiB, peak %s KiB\n' \
        "$round" "$build" "$rss_loaded" "$hwm"
    printf '  saturated: %s req/s, p50 %s ms, p99 %s ms, %s µs CPU/req, RSS %s KiB\n' $saturated
    printf '  paced:     %s req/s, p50 %s ms, p99 %s ms, %s µs CPU/req, RSS %s KiB\n' $paced
}

for round in $(seq "$ROUNDS"); do
    run_one "$round"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

col() { awk -v c="$1" '{ print $c }' "$OUT/results.log" | median; }
{
    echo
    echo "cluster: $NODES nodes, $PODS pods, $SERVICES services; wrk -t1 -c $CONNS, HTTP/1.1 over TLS, random nodes"
    echo
    mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
    echo "| map build ms | RSS loaded MiB | peak RSS MiB |"
    echo "|---|---|---|"
    echo "| $(col 2) | $(mib "$(col 3)") | $(mib "$(col 4)") |"
    echo
    echo "| load | req/s | p50 ms | p99 ms | server CPU µs/req | RSS under load MiB |"
    echo "|---|---|---|---|---|---|"
    echo "| saturated, -c $CONNS | $(col 5) | $(col 6) | $(col 7) | $(col 8) | $(mib "$(col 9)") |"
    echo "| paced, -c $CONNS, ${PACE_MS} ms between requests | $(col 10) | $(col 11) | $(col 12) | $(col 13) | $(mib "$(col 14)") |"
    echo
    echo "(medians of $ROUNDS rounds)"
} | tee "$OUT/summary.md"
