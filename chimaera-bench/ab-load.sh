#!/usr/bin/env bash
# A/B runs of two builds under one steady workload (`examples/load.rs`), on a shared,
# noisy host: each run starts that build's own runtime on a fresh instance, drives it
# with that build's own `load` client (a client and a runtime across a shared-memory
# protocol change refuse each other), stops it, and the two builds alternate (A B, B A,
# ...) so a drift of the machine hits both alike. The summary is the median of the
# per-pair ratios B/A of calls per second (> 1: B is faster).
#
#   chimaera-bench/ab-load.sh save DIR
#       copies the current release build's `chimaera` and `examples/load` into DIR
#       (build them first: cargo build --release --manifest-path
#       chimaera-bench/Cargo.toml --bin chimaera --example load)
#   chimaera-bench/ab-load.sh [-r ROUNDS] [-n CALLS] [-w WORKLOAD] DIR_A DIR_B
#       ROUNDS pairs (default 10) of WORKLOAD (sync, pipelined, bdev-write, bdev-awf;
#       default sync) with CALLS calls each (default 300000)
#
# The runtime runs on CPU $AB_RUNTIME_CPU (default 1), the client on $AB_CLIENT_CPU
# (default 0). Nothing else should run meanwhile.
set -euo pipefail

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=runtime-process.sh
source "$here/runtime-process.sh"

if [[ ${1:-} == save ]]; then
    [[ $# -eq 2 ]] || usage
    mkdir -p "$2"
    cp "$here/target/release/chimaera" "$here/target/release/examples/load" "$2/"
    md5sum "$2/chimaera" "$2/load"
    exit 0
fi

rounds=10 calls=300000 workload=sync
while getopts "r:n:w:h" opt; do
    case $opt in
        r) rounds=$OPTARG ;;
        n) calls=$OPTARG ;;
        w) workload=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -eq 2 ]] || usage
for dir in "$1" "$2"; do
    for bin in chimaera load; do
        [[ -x $dir/$bin ]] || { echo "ab-load: $dir/$bin is missing (see: ab-load.sh save DIR)" >&2; exit 2; }
    done
done
runtime_cpu=${AB_RUNTIME_CPU:-1}
client_cpu=${AB_CLIENT_CPU:-0}

# One run of build $1: prints its calls per second. Always called in a subshell (`$(run
# ...)`), whose own exit trap stops its runtime however the run ends.
run() {
    # Not `local`: the exit trap runs after the function returned.
    build=$1
    export CHI_INSTANCE="ab-load-$$-$RANDOM"
    trap 'runtime_stop "$build"' EXIT
    runtime_start "$build" 20 taskset -c "$runtime_cpu"
    local line
    line=$(taskset -c "$client_cpu" "$build/load" "$workload" "$calls")
    echo "$line" | sed -n 's/.*calls_per_s=\([0-9]*\).*/\1/p'
}

ratios=()
for ((round = 1; round <= rounds; round++)); do
    if ((round % 2)); then
        a=$(run "$1")
        b=$(run "$2")
    else
        b=$(run "$2")
        a=$(run "$1")
    fi
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
    ratios+=("$ratio")
    echo "round $round: A $a  B $b calls/s  B/A $ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END {
    print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
echo "$workload: median B/A over $rounds pairs: $median"
