#!/usr/bin/env bash
# Runs the whole test suite (the README's `cargo test --all-features`) N times in a row under
# CPU load, to catch tests that depend on timing: a flaky test fails some runs, not all.
#
#   scripts/stress-tests.sh            # 20 runs, 2 busy loops
#   scripts/stress-tests.sh -n 50      # 50 runs
#   LOAD=4 scripts/stress-tests.sh     # 4 busy loops (LOAD=0: no load)
#
# Builds the tests once first (`cargo test --all-features --no-run`), then starts the busy
# loops (`sh -c 'while :; do :; done'`, nothing to install), which are killed when the script
# exits, however it exits. Each run is `cargo test --all-features --no-fail-fast` (the README's
# command; --no-fail-fast so that one failing test binary does not hide the others) and its
# output goes to target/stress/run-K.log. A line per run says pass or FAIL, with the failing
# tests (from the log); the last line counts the failed runs. Exits 1 if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=20
while getopts "n:h" opt; do
    case "$opt" in
        n) runs=$OPTARG ;;
        h)
            sed -n '2,14p' "$0" | sed -E 's/^# ?//'
            exit 0
            ;;
        *)
            echo "usage: $0 [-n RUNS]" >&2
            exit 2
            ;;
    esac
done
if ! [[ "$runs" =~ ^[1-9][0-9]*$ ]]; then
    echo "-n takes a number of runs (1 or more), not '$runs'" >&2
    exit 2
fi
load=${LOAD:-2}
if ! [[ "$load" =~ ^[0-9]+$ ]]; then
    echo "LOAD takes a number of busy loops, not '$load'" >&2
    exit 2
fi

logs=target/stress
mkdir -p "$logs"
rm -f "$logs"/run-*.log

echo "building the tests once (log: $logs/build.log)"
if ! cargo test --all-features --no-run >"$logs/build.log" 2>&1; then
    echo "the build failed; see $logs/build.log" >&2
    exit 1
fi

# The busy loops, and the test run in progress, are background jobs, each in a process
# group of its own (job control): on every way out (normal end, error, Ctrl-C, kill) the
# script stops them, a run with every test process it started.
set -m
hogs=()
run=
stop_all() {
    for pid in "${hogs[@]}" $run; do
        kill -- "-$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq 1 "$load"); do
    sh -c 'while :; do :; done' &
    hogs+=("$!")
done
echo "load: $load busy loops on $(nproc) cores"

# "test-binary: test name" for each test the log reports FAILED; else cargo's own error lines
# (a test binary that crashed, or a build error).
failures() {
    local names
    names=$(awk '
        /^ *Running / { bin = ($2 == "unittests") ? $3 : $2 }
        /^ *Doc-tests / { bin = "doc-tests" }
        /^test .* \.\.\. FAILED$/ {
            name = $0; sub(/^test /, "", name); sub(/ \.\.\. FAILED$/, "", name)
            printf "%s%s: %s", sep, bin, name; sep = ", "
        }' "$1")
    if [ -z "$names" ]; then
        names=$(grep -E '^error|^ +`--' "$1" | tr -s ' ' | tr '\n' ' ' || true)
    fi
    echo "${names:-no failing test named in the log}"
}

failed=0
started=$SECONDS
for k in $(seq 1 "$runs"); do
    log="$logs/run-$k.log"
    run_started=$SECONDS
    cargo test --all-features --no-fail-fast >"$log" 2>&1 &
    run=$!
    status=0
    wait "$run" || status=$?
    run=
    if [ "$status" -eq 0 ]; then
        echo "run $k/$runs: pass ($((SECONDS - run_started)) s)"
    else
        failed=$((failed + 1))
        echo "run $k/$runs: FAIL ($((SECONDS - run_started)) s): $(failures "$log") (log: $log)"
    fi
done
echo "failed runs: $failed of $runs ($((SECONDS - started)) s under $load busy loops)"
[ "$failed" -eq 0 ]
