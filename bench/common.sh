# Shared by the load benchmarks (sourced, not run): the machine's description, the server
# process they start (its pid in server_pid, stopped on exit), and reading wrk's output.

describe_machine() {
    echo "nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    free -h | head -2
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
}

server_pid=""
stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"
        wait "$server_pid" || true
    fi
    server_pid=""
}
trap stop_server EXIT

# User + system CPU time of the server so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }

# wrk prints "50%  1.23ms"; normalise to ms.
wrk_percentile() {
    awk -v p="$2" '$1 == p {
        x = $2; unit = x; gsub(/[0-9.]/, "", unit); sub(/[a-z]+$/, "", x)
        if (unit == "us") x /= 1000; else if (unit == "s") x *= 1000
        printf "%.3f\n", x }' "$1"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
