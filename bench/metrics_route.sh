#!/usr/bin/env bash
# Metric route throughput: our external metrics server (ExternalMetricsService over
# tls::serve) against a bare hyper + tokio-rustls server answering the same bytes, in one
# run on this machine. See BENCHMARKS.md for what is measured and how to read it.
#
# usage: bench/metrics_route.sh
# env:   ROUNDS (5) DURATION (10, seconds per load run) CONNS (64) STREAMS (1, h2 streams
#        per connection) MODES ("ours bare ours-cached-auth"; see bench_metrics_server.rs)
#        SERVER_CPU (0) CLIENT_CPU (1) PORT (18443) SKIP_BUILD (unset)
#        OUT (target/bench/metrics_route)
#
# Each round runs every mode (the order rotates between rounds, so no mode always runs
# first or last): start the server pinned to SERVER_CPU, warm up, h2load (HTTP/2 over TLS)
# then wrk (HTTP/1.1 keep-alive over TLS), both pinned to CLIENT_CPU, read the server's
# VmHWM, stop it. Reported: medians over the rounds of req/s, p50/p99 latency and server
# CPU time per request; each mode's req/s over bare's, as the ratio of the medians and as
# the median of the ratios within a round (runs of one round are minutes apart at most, so
# the load other processes put on the machine changes less between them).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
STREAMS=${STREAMS:-1}
read -r -a MODES <<<"${MODES:-ours bare ours-cached-auth}"
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18443}
OUT=${OUT:-target/bench/metrics_route}
BIN=target/release/bench_metrics_server
# Kept in step with METRIC_PATH and TOKEN in e2e/src/bin/bench_metrics_server.rs.
URL="https://127.0.0.1:${PORT}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/nginx.net.request_per_s?labelSelector=app%3Dweb"
AUTH="Authorization: Bearer bench-hpa-controller-token"
TICK_US=$((1000000 / $(getconf CLK_TCK)))

if ! command -v h2load >/dev/null || ! command -v wrk >/dev/null; then
    apt-get install -y nghttp2-client wrk
fi
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release -p e2e --bin bench_metrics_server
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/*.log "$OUT"/*.tsv "$OUT"/summary.md

describe_machine

# p50/p99 in ms from an h2load log (tab-separated: start µs, status, duration µs).
h2_percentiles() {
    cut -f3 "$1" | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "0 0"; exit }
        i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
        printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000 }'
}

run_one() {
    local mode=$1 round=$2
    local tag="${mode}-${round}"
    : >"$OUT/$tag.server.log"
    taskset -c "$SERVER_CPU" "$BIN" "$mode" --port "$PORT" --max-secs $((DURATION * 2 + 120)) \
        >"$OUT/$tag.server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q '^listening' "$OUT/$tag.server.log" && break
        sleep 0.1
    done
    grep -q '^listening' "$OUT/$tag.server.log" || { cat "$OUT/$tag.server.log"; exit 1; }

    # Warm-up: handshakes, allocator, the auth caches' first fill.
    taskset -c "$CLIENT_CPU" h2load -n 20000 -c "$CONNS" -m "$STREAMS" -t 1 -H "$AUTH" "$URL" >/dev/null
    taskset -c "$CLIENT_CPU" wrk -c "$CONNS" -t 1 -d 2s -H "$AUTH" "$URL" >/dev/null

    local t0 t1 t2
    t0=$(cpu_ticks)
    taskset -c "$CLIENT_CPU" h2load -c "$CONNS" -m "$STREAMS" -t 1 -D "$DURATION" -H "$AUTH" \
        --log-file="$OUT/$tag.h2load.tsv" "$URL" >"$OUT/$tag.h2load.txt"
    t1=$(cpu_ticks)
    taskset -c "$CLIENT_CPU" wrk -c "$CONNS" -t 1 -d "${DURATION}s" --latency -H "$AUTH" "$URL" \
        >"$OUT/$tag.wrk.txt"
    t2=$(cpu_ticks)

    local hwm
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$server_pid/status")
    stop_server

    local h2_rps h2_n h2_lat wrk_rps wrk_n wrk_bad
    h2_rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$OUT/$tag.h2load.txt")
    h2_n=$(awk '/^requests:/ { print $8 }' "$OUT/$tag.h2load.txt")
    h2_lat=$(h2_percentiles "$OUT/$tag.h2load.tsv")
    wrk_rps=$(awk '/^Requests\/sec:/ { print $2 }' "$OUT/$tag.wrk.txt")
    wrk_n=$(awk '/requests in/ { print $1 }' "$OUT/$tag.wrk.txt")
    wrk_bad=$(awk '/Non-2xx/ { print $NF }' "$OUT/$tag.wrk.txt")
    if [[ -n "$wrk_bad" ]] || ! grep -q ' 0 failed, 0 errored' "$OUT/$tag.h2load.txt"; then
        echo "$tag: error responses, see $OUT/$tag.*" >&2
        exit 1
    fi
    local h2_cpu wrk_cpu
    h2_cpu=$(awk -v t=$((t1 - t0)) -v n="$h2_n" -v u="$TICK_US" 'BEGIN { printf "%.2f", t * u / n }')
    wrk_cpu=$(awk -v t=$((t2 - t1)) -v n="$wrk_n" -v u="$TICK_US" 'BEGIN { printf "%.2f", t * u / n }')
    # mode round kind req/s p50 p99 cpu-µs/request
    echo "$mode $round h2 $h2_rps ${h2_lat% *} ${h2_lat#* } $h2_cpu" >>"$OUT/results.log"
    echo "$mode $round wrk $wrk_rps $(wrk_percentile "$OUT/$tag.wrk.txt" 50%) $(wrk_percentile "$OUT/$tag.wrk.txt" 99%) $wrk_cpu" >>"$OUT/results.log"
    echo "$mode $round hwm $hwm 0 0 0" >>"$OUT/results.log"
    printf '%-16s round %s: h2load %9s req/s (%s µs CPU/req)  wrk %9s req/s (%s µs CPU/req)  VmHWM %s KiB\n' \
        "$mode" "$round" "$h2_rps" "$h2_cpu" "$wrk_rps" "$wrk_cpu" "$hwm"
}

for round in $(seq "$ROUNDS"); do
    # Rotate the order: round r starts with mode (r - 1) mod n.
    n=${#MODES[@]}
    for ((k = 0; k < n; k++)); do
        run_one "${MODES[$(((round - 1 + k) % n))]}" "$round"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

col() { awk -v m="$1" -v k="$2" -v c="$3" '$1 == m && $3 == k { print $c }' "$OUT/results.log" | median; }
{
    echo
    echo "| load | server | req/s (median of $ROUNDS) | p50 ms | p99 ms | server CPU µs/req | req/s per round |"
    echo "|---|---|---|---|---|---|---|"
    for kind in h2 wrk; do
        if [[ $kind == h2 ]]; then
            label="h2load, HTTP/2, -c $CONNS -m $STREAMS"
        else
            label="wrk, HTTP/1.1, -c $CONNS"
        fi
        for mode in "${MODES[@]}"; do
            rounds=$(awk -v m="$mode" -v k="$kind" '$1 == m && $3 == k { printf "%s ", $4 }' "$OUT/results.log")
            echo "| $label | $mode | $(col "$mode" "$kind" 4) | $(col "$mode" "$kind" 5) | $(col "$mode" "$kind" 6) | $(col "$mode" "$kind" 7) | ${rounds% } |"
        done
    done
    echo
    for kind in h2 wrk; do
        bare=$(col bare "$kind" 4)
        for mode in "${MODES[@]}"; do
            [[ $mode == bare ]] && continue
            ratio=$(awk -v a="$(col "$mode" "$kind" 4)" -v b="$bare" 'BEGIN { printf "%.3f", a / b }')
            per_round=$(awk -v m="$mode" -v k="$kind" '$3 == k && $1 == m { r[$2] = $4 } $3 == k && $1 == "bare" { b[$2] = $4 }
                END { for (i in r) if (i in b) printf "%.3f\n", r[i] / b[i] }' "$OUT/results.log" | sort -g)
            cpu=$(awk -v a="$(col bare "$kind" 7)" -v b="$(col "$mode" "$kind" 7)" 'BEGIN { printf "%.3f", a / b }')
            echo "$kind: $mode / bare: req/s $ratio (median of per-round ratios $(echo "$per_round" | median); per round: $(echo $per_round)); CPU per request bare / $mode $cpu"
        done
    done
    printf 'max RSS (VmHWM, median KiB):'
    for mode in "${MODES[@]}"; do printf ' %s %s;' "$mode" "$(col "$mode" hwm 4)"; done
    echo
} | tee "$OUT/summary.md"
