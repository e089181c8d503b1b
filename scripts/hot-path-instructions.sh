#!/usr/bin/env bash
# Instructions per request on the balancer's hot path (poll_ready + call + completion),
# counted by valgrind's callgrind: unlike a timing, the count repeats exactly from run to run
# on a shared machine, so a change to the hot path can be compared with the commit before
# it (run this script in both checkouts).
#
#   scripts/hot-path-instructions.sh
#   scripts/hot-path-instructions.sh --forms   # also examples/hot_path_forms.rs: the cost of
#                                              # AnyStrategy, Balance::boxed and boxed endpoints
#   FEATURES=metrics scripts/hot-path-instructions.sh   # built with these crate features
#                                              # (here: the `metrics` feature, no recorder)
#
# Runs examples/hot_path.rs at 20 000 and 40 000 requests and prints the difference per
# request, which leaves out the start-up. Needs valgrind (installed with apt if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind is missing: installing it (apt-get install -y valgrind)" >&2
    apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
cargo build --release ${FEATURES:+--features "$FEATURES"} --example hot_path --example hot_path_forms >&2
bin=target/release/examples/hot_path

count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$@" 2>&1 |
        awk '/Collected/ { print $4 }'
}

printf '%-14s %-9s %s\n' strategy settings 'instructions per request'
for strategy in least-request round-robin; do
    for mode in defaults bare; do
        small=$(count "$strategy" "$mode" 20000)
        large=$(count "$strategy" "$mode" 40000)
        printf '%-14s %-9s %d\n' "$strategy" "$mode" $(((large - small) / 20000))
    done
done

if [ "${1:-}" = --forms ]; then
    bin=target/release/examples/hot_path_forms
    printf '\n%-14s %-15s %s\n' strategy form 'instructions per request (defaults)'
    for strategy in least-request round-robin; do
        for form in static any-strategy boxed-balance box-clone-sync unsync; do
            small=$(count "$strategy" "$form" 20000)
            large=$(count "$strategy" "$form" 40000)
            printf '%-14s %-15s %d\n' "$strategy" "$form" $(((large - small) / 20000))
        done
    done
fi
