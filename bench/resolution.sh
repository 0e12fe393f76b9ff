#!/usr/bin/env bash
# Resolution efficiency: Datadog calls per refresh for 1,000 HPAs / 700 distinct queries,
# and for a burst of 10,000 concurrent requests for a metric not yet stored. In-process,
# against the Datadog API double on 127.0.0.1. See BENCHMARKS.md.
#
# usage: bench/resolution.sh        env: SKIP_BUILD (unset)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release -p e2e --bin bench_resolution
fi
echo "nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
free -h | head -2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -v target/release/bench_resolution 2> >(grep -E 'Maximum resident|Elapsed' >&2)
