#!/usr/bin/env bash
# `make bench`: every benchmark of spec §7.4, one after the other, into bench/results/latest.md (and stdout).
#
# The machine is shared and noisy, so the scripts print ratios against baselines measured in the same run and
# never fail on a number; a non-zero exit means a script broke (or ran out of time), not that it was slow.
# The whole run is bounded: each script gets its own cap and all of them share BENCH_BUDGET seconds (15 min).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT_DIR=bench/results
OUT=$OUT_DIR/latest.md
BUDGET=${BENCH_BUDGET:-900}
START=$(date +%s)
FAILED=0

mkdir -p "$OUT_DIR"
: >"$OUT"

log() { echo "[bench] $*" >&2; }
emit() { printf '%s\n' "$*" | tee -a "$OUT"; }

if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    (apt-get update -qq && apt-get install -y -qq wrk) >&2 || log "could not install wrk: the throughput part will be skipped"
fi
if ! command -v hey >/dev/null 2>&1; then
    log "installing hey"
    (apt-get update -qq && apt-get install -y -qq hey) >&2 || log "could not install hey: the end-to-end part will be skipped"
fi

cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem_total=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
emit "# atlas benchmarks"
emit ""
emit "Run $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')."
emit "Machine: $(nproc) cores ($cpu_model), $mem_total RAM, $($PY --version 2>&1), $(.venv/bin/nats-server --version 2>&1 | head -1), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)."
emit "Load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
emit ""

# run_bench <cap seconds> <script> [args...]
run_bench() {
    local cap=$1 script=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    ((left < cap)) && cap=$left
    if [[ ! -f $script ]]; then
        emit "**$script is missing: skipped.**"
        emit ""
        FAILED=1
        return
    fi
    if ((cap < 20)); then
        emit "**$script skipped: the ${BUDGET} s budget is spent.**"
        emit ""
        FAILED=1
        return
    fi
    log "$script (up to ${cap} s)"
    local t0=$(date +%s) rc
    timeout --kill-after=10 "$cap" "$PY" "$script" "$@" | tee -a "$OUT"
    rc=${PIPESTATUS[0]}
    if ((rc != 0)); then
        FAILED=1
        if ((rc == 124)); then
            emit "**$script timed out after ${cap} s.**"
        else
            emit "**$script failed (exit $rc).**"
        fi
    fi
    emit ""
    log "$script done in $(($(date +%s) - t0)) s"
}

run_bench 300 bench/trigger_throughput.py
run_bench 120 bench/start_latency.py
run_bench 90 bench/cascade_hop.py --cascades 300
run_bench 180 bench/end_to_end.py
run_bench 240 bench/api_streams.py
run_bench 120 bench/tool_roundtrip.py
run_bench 300 bench/tracing_overhead.py --rounds 2 --duration 8
emit "## Read-model correlationId lookup (1 000 vs 1 000 000 stored sessions)"
emit ""
run_bench 240 bench/readmodel_lookup.py

log "total $(($(date +%s) - START)) s; results in $OUT"
exit $FAILED
