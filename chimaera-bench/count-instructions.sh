#!/usr/bin/env bash
# Instructions per task, function by function, under one steady workload
# (`examples/load.rs`), counted by valgrind's callgrind: deterministic where timings on
# a shared, noisy host are not, so a change to the hot path can be weighed before its
# A/B run (`ab-load.sh`), and the per-stage profile of a closing note can be remade.
#
#   chimaera-bench/count-instructions.sh [-s SIDE] [-n CALLS] [-m MIN] [-b DIR] WORKLOAD
#       WORKLOAD: sync, pipelined, bdev-write, bdev-read or bdev-awf (see examples/load.rs)
#       SIDE: runtime (default): the runtime process runs under callgrind, the client
#             natively (pinned to CPU 0, the runtime's worker threads may run anywhere);
#             client: the client process under callgrind, the runtime natively;
#             inproc: one process under callgrind, calling a runtime of its own
#             in process (LOAD_IN_PROCESS=1); not with sync or bdev-awf, whose
#             caller spins on each answer while callgrind runs one thread at a
#             time (about 200 calls/s): profile pipelined in process
#       CALLS: calls of the timed part (default 100000; the load driver adds a warm-up)
#       MIN: list functions of at least MIN instructions per task (default 20)
#       DIR: where `chimaera` and `load` are (default: this crate's release build:
#            cargo build --release --manifest-path chimaera-bench/Cargo.toml
#            --bin chimaera --example load; or a DIR saved by `ab-load.sh save`)
#
# Prints the profiled process's instructions per task, then each function of the
# workspace (chimaera*, chimods) above MIN: its inclusive instructions per task (it and
# everything it calls) and its calls per task. "Per task": divided by the number of
# tasks the runtime ran (calls of the module dispatch `Container::run`), or, on the
# client side, by the calls the client made. The callgrind file is kept
# (`callgrind_annotate --inclusive=yes FILE` for the rest). Inlined functions appear
# under their callers. Callgrind counts each step of a `rep movsb` (the shared-memory
# copies of 128 bytes and more) as an instruction, one per byte: a 4 KiB copy into a
# client's share shows as about 4,100 instructions where the CPU moves whole lines.
# Needs valgrind (callgrind_annotate comes with it).
set -euo pipefail

usage() {
    # The comment block above, without its marks.
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
    exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=runtime-process.sh
source "$here/runtime-process.sh"
side=runtime calls=100000 min=20 build="$here/target/release"
while getopts "s:n:m:b:h" opt; do
    case $opt in
        s) side=$OPTARG ;;
        n) calls=$OPTARG ;;
        m) min=$OPTARG ;;
        b) build=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -eq 1 ]] || usage
workload=$1
case $side in runtime | client | inproc) ;; *) usage ;; esac
if [[ $side == inproc && ($workload == sync || $workload == bdev-awf) ]]; then
    echo "count-instructions: in process, $workload crawls under callgrind (see -h); try pipelined" >&2
    exit 2
fi
[[ $calls =~ ^[1-9][0-9]*$ && $min =~ ^[0-9]+$ ]] || usage
for tool in valgrind callgrind_annotate; do
    command -v "$tool" >/dev/null || { echo "count-instructions: $tool is missing (apt-get install valgrind)" >&2; exit 2; }
done
load=$build/load
[[ -x $load ]] || load=$build/examples/load
for bin in "$build/chimaera" "$load"; do
    [[ -x $bin ]] || { echo "count-instructions: $bin is missing (see -b, or build it: -h)" >&2; exit 2; }
done

out=$(mktemp --tmpdir "count-instructions-$workload-$side.XXXXXX")
export CHI_INSTANCE="count-instructions-$$-$RANDOM"
callgrind=(valgrind --tool=callgrind --callgrind-out-file="$out")

trap 'runtime_stop "$build"' EXIT
# Under callgrind the runtime takes many seconds to come up.
wait_secs=120
case $side in
    runtime)
        runtime_start "$build" "$wait_secs" "${callgrind[@]}"
        taskset -c 0 "$load" "$workload" "$calls" >&2
        runtime_stop "$build"
        ;;
    client)
        runtime_start "$build" "$wait_secs"
        { taskset -c 0 "${callgrind[@]}" "$load" "$workload" "$calls" 2>/dev/null; } >&2
        runtime_stop "$build"
        ;;
    inproc)
        { LOAD_IN_PROCESS=1 "${callgrind[@]}" "$load" "$workload" "$calls" 2>/dev/null; } >&2
        ;;
esac

# `--tree=caller` prints, per function, its inclusive cost on the `*` line, after one
# `<` line per caller ending in `(<calls>x)`. A function appears once per source file
# its code was attributed to (its own, and inlined copies' files): its cost is the
# largest of those entries (its own symbol's, ending in `[<binary>]`, holds all of it),
# its calls the sum.
callgrind_annotate --tree=caller --inclusive=yes --threshold=100 "$out" 2>/dev/null |
    awk -v side="$side" -v min="$min" -v file="$out" -v workload="$workload" '
    function number(text) { gsub(/[,()x]/, "", text); return text + 0 }
    /PROGRAM TOTALS/ { total = number($1) }
    /^ *[0-9,]+ \([ 0-9.]+%\)  < / {
        if (match($0, /\([0-9,]+x\)/)) calls += number(substr($0, RSTART, RLENGTH))
        next
    }
    /^ *[0-9,]+ \([ 0-9.]+%\)  \* / {
        name = $0
        sub(/^ *[0-9,]+ \([ 0-9.]+%\)  \*  /, "", name)
        sub(/ \[[^]]*\]$/, "", name)
        sub(/^[^:]*:/, "", name)
        if (name ~ /chimaera|chimods/) {
            if (number($1) > cost[name]) cost[name] = number($1)
            count[name] += calls
        }
        calls = 0
        next
    }
    /^$/ { calls = 0 }
    END {
        # Tasks: the module dispatch runs once per task; a client counts its calls.
        for (name in count) {
            if (name ~ /as chimaera_core::runtime::module::Container>::run$/) tasks += count[name]
            if (name ~ /^chimaera_core::client::Client::(call_with|submit_with)$/) client_calls += count[name]
        }
        per = (side == "client") ? client_calls : tasks
        if (per == 0) { print "count-instructions: no task ran (see " file ")" > "/dev/stderr"; exit 1 }
        printf "%s, %s side: %d tasks, %.0f instructions per task in the profiled process\n",
            workload, side, per, total / per
        printf "%12s %10s  %s\n", "instr/task", "calls/task", "function (inclusive)"
        sorted = "sort -n -r -k1"
        # Start-up work (a pool made once, say) belongs to no task: left out when called under once per 100 tasks.
        for (name in cost) if (cost[name] / per >= min && count[name] / per >= 0.01)
            printf "%12.0f %10.2f  %s\n", cost[name] / per, count[name] / per, name | sorted
        close(sorted)
        print "callgrind file: " file
    }'
