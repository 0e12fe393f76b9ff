#!/usr/bin/env bash
# Fuzzes one target (or all, one after another) with AFL++ through cargo-afl, on stable Rust.
#
#   fuzz/run.sh <target|all> <seconds-per-target>
#
# Targets: selector quantity quantity_f64 route accept dd_response store_entry config.
# Output (queue, crashes, hangs, fuzzer_stats) goes to fuzz/out/<target>/default; a second
# run resumes from it (delete the directory to start over). Prints the exec count and exits
# 1 if AFL++ saved a crash or a hang; reproduce one with
#   fuzz/target/release/replay <target> fuzz/out/<target>/default/crashes
# (built by this script; it runs without AFL++).
#
# Uses one core at low priority. Installs cargo-afl and builds AFL++ on first use.
set -euo pipefail
cd "$(dirname "$0")"

targets=(selector quantity quantity_f64 route accept dd_response store_entry config)

usage() {
  echo "usage: $0 <target|all> <seconds-per-target>" >&2
  echo "targets: ${targets[*]}" >&2
  exit 2
}

[[ $# -eq 2 ]] || usage
name=$1
seconds=$2
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || usage
if [[ $name == all ]]; then
  selected=("${targets[@]}")
else
  [[ " ${targets[*]} " == *" $name "* ]] || usage
  selected=("$name")
fi

if ! cargo afl --version >/dev/null 2>&1; then
  cargo install --locked cargo-afl
fi
# Builds AFL++ for this toolchain once; a no-op (with a message) when already built.
cargo afl config --build >/dev/null 2>&1 || true

# `replay` too, so a crash can be reproduced right away without AFL++.
build_args=(--bin replay)
for t in "${selected[@]}"; do build_args+=(--bin "$t"); done
nice -n 10 cargo afl build --release "${build_args[@]}"

# This machine's CPU governor and core_pattern are not ours to change: tell AFL++ so.
export AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1
export AFL_AUTORESUME=1
# Shared machine: do not pin a core another job may be using.
export AFL_NO_AFFINITY=1

status=0
summary=()
for t in "${selected[@]}"; do
  dict=()
  [[ -f dict/$t.dict ]] && dict=(-x "dict/$t.dict")
  mkdir -p out
  echo "== fuzzing $t for ${seconds}s"
  # -V: stop after that many seconds; -t: a single input taking over 1 s is a hang.
  nice -n 10 cargo afl fuzz -i "seeds/$t" -o "out/$t" "${dict[@]}" -t 1000 -V "$seconds" \
    "target/release/$t" >"out/$t.log" 2>&1 || {
      echo "afl-fuzz failed for $t; last lines of fuzz/out/$t.log:" >&2
      tail -20 "out/$t.log" >&2
      status=1
      continue
    }
  stats=out/$t/default/fuzzer_stats
  get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  execs=$(get execs_done)
  crashes=$(get saved_crashes)
  hangs=$(get saved_hangs)
  line="$t: $(get run_time)s, $execs execs ($(get execs_per_sec)/s), corpus $(get corpus_count), edges $(get edges_found)/$(get total_edges), crashes $crashes, hangs $hangs"
  echo "$line"
  summary+=("$line")
  if [[ $crashes != 0 || $hangs != 0 ]]; then
    status=1
  fi
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
