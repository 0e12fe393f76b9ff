#!/usr/bin/env bash
# Process-group guardian for everything the e2e harness starts (etcd, kube-apiserver, the agent…).
#
# The harness spawns this script as the leader of a new process group and then starts its
# processes INTO that group. The harness keeps the write end of this script's stdin open for as
# long as it wants the group alive. The kernel closes that pipe whenever the test process goes
# away, however it goes (normal exit, panic, Ctrl-C, SIGTERM, SIGKILL), so EOF on stdin is the
# one reliable "the test process is gone" signal. As a backstop the watched PID is polled too.
# On either, the whole group gets SIGTERM, a short grace period, then SIGKILL (this script included).
#
# Usage: bash guardian.sh WATCHED_PID [GRACE_SECONDS [CLEANUP_DIR]]
# (the harness passes the script text in $DCA_E2E_GUARDIAN_SCRIPT and runs `bash -c 'eval …' NAME ARGS…`)
# CLEANUP_DIR (the run directory of a test that never got to clean up) is removed after the
# processes had their SIGTERM grace period, just before the final SIGKILL.
set -u

watched_pid="$1"
grace_seconds="${2:-3}"
cleanup_dir="${3:-}"
group="$$"

# Tell the harness the group exists before it starts putting processes into it.
echo "guardian ready pgid=$group"

while kill -0 "$watched_pid" 2>/dev/null; do
  # A line on stdin is a keep-alive and is ignored; EOF (status 1) ends the wait, a timeout
  # (status > 128) just re-checks the watched PID.
  if read -r -t 2 _; then
    continue
  elif [[ $? -le 128 ]]; then
    break
  fi
done

# Survive our own group-wide SIGTERM so the SIGKILL stage still runs after the grace period.
trap '' TERM
kill -TERM -- "-$group" 2>/dev/null
sleep "$grace_seconds"
if [[ -n $cleanup_dir && -d $cleanup_dir ]]; then
  rm -rf -- "$cleanup_dir"
fi
kill -KILL -- "-$group"
