# A runtime process of one build, for the bench scripts (`ab-load.sh`,
# `count-instructions.sh`), which source this file. The instance is $CHI_INSTANCE.
#
#   runtime_start BUILD WAIT_SECS [PREFIX...]
#       starts `BUILD/chimaera runtime start` (after PREFIX: `taskset -c 1`, `valgrind
#       ...`) in the background and waits until `runtime status` answers; exits 1 if it
#       does not within WAIT_SECS
#   runtime_stop BUILD
#       stops it (`runtime stop`, else a kill) and waits for the process; does nothing
#       when none runs, so it can also be the exit trap

runtime_pid=

runtime_start() {
    local build=$1 wait_secs=$2
    shift 2
    "$@" "$build/chimaera" runtime start >/dev/null 2>&1 &
    runtime_pid=$!
    local deadline=$((SECONDS + wait_secs))
    until "$build/chimaera" runtime status >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "$(basename "$0"): the runtime of $build did not come up" >&2
            exit 1
        fi
        sleep 0.1
    done
}

runtime_stop() {
    local build=$1
    [[ -n $runtime_pid ]] || return 0
    "$build/chimaera" runtime stop >/dev/null 2>&1 || kill "$runtime_pid" 2>/dev/null || true
    wait "$runtime_pid" 2>/dev/null || true
    runtime_pid=
}
