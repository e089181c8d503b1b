#!/usr/bin/env bash
# Loads the reverse proxy's live status page in headless Chromium and checks it through the
# DOM, while the proxy balances over three demo upstreams, one of them stopped:
#   - three upstream rows;
#   - the stopped one shown as down;
#   - the counters move between two loads, and the page refreshes itself from /status.json;
# then saves a screenshot (docs/status-page.png unless given another path).
#
#   scripts/status-page-test.sh [SCREENSHOT.png]
#
# Installs the Debian package `chromium` when it is missing (apt-get). About 30 s after the
# build (which `cargo test --all-features` has done). Exits non-zero, saying why, when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
shot=${1:-docs/status-page.png}

if ! command -v chromium >/dev/null; then
    echo "status-page-test: installing chromium (apt-get)"
    sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# A debug build with every feature: the one `cargo test --all-features` has already built.
cargo build --all-features --example reverse_proxy
bin=target/debug/examples/reverse_proxy

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The address a process printed on the line that starts with $2 (waits up to 20 s).
printed() {
    local line
    for _ in $(seq 200); do
        line=$(grep -m1 "^$2" "$1" || true)
        [ -n "$line" ] && { sed -n 's|^'"$2"' \(http://\)\{0,1\}\([0-9.:]*\).*|\2|p' <<<"$line"; return; }
        sleep 0.1
    done
    echo "status-page-test: no '$2' line in $1" >&2; cat "$1" >&2; exit 1
}

# Two demo upstreams that run, and a third that is started and stopped at once: its address
# has nothing listening.
"$bin" --upstreams-only --upstream 127.0.0.1:0 --upstream 127.0.0.1:0 >"$work/up.log" 2>&1 &
pids+=($!)
"$bin" --upstreams-only --upstream 127.0.0.1:0 >"$work/stopped.log" 2>&1 &
stopped_pid=$!
ups=$(printed "$work/up.log" "demo upstreams on")
line=$(grep -m1 '^demo upstreams on' "$work/up.log")
up1=$(sed -n 's/^demo upstreams on \([0-9.:]*\), \([0-9.:]*\) .*/\1/p' <<<"$line")
up2=$(sed -n 's/^demo upstreams on \([0-9.:]*\), \([0-9.:]*\) .*/\2/p' <<<"$line")
down=$(printed "$work/stopped.log" "demo upstreams on")
kill "$stopped_pid"; wait "$stopped_pid" 2>/dev/null || true
[ -n "$ups" ] && [ -n "$up1" ] && [ -n "$up2" ] && [ -n "$down" ] || { echo "status-page-test: cannot read the upstream addresses"; exit 1; }

"$bin" --upstream "$up1" --upstream "$up2" --upstream "$down" \
    --listen 127.0.0.1:0 --admin 127.0.0.1:0 --workers 1 >"$work/proxy.log" 2>&1 &
pids+=($!)
proxy=$(printed "$work/proxy.log" "proxy on")
admin=$(printed "$work/proxy.log" "admin on")

# Traffic through the proxy for as long as the test runs (curl globbing: 100 requests per
# connection).
( while :; do curl -s -o /dev/null "http://$proxy/[1-100]" || true; done ) &
pids+=($!)
sleep 3

chrome() {
    chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
        --hide-scrollbars --virtual-time-budget=5000 "$@" 2>>"$work/chromium.log"
}
url="http://$admin/status"

first=$(chrome --dump-dom "$url")
sleep 3
second=$(chrome --dump-dom "$url")

fail() { echo "status-page-test: FAILED: $*"; echo "--- DOM:"; echo "$second"; exit 1; }
rows() { grep -o '<tr [^>]*data-upstream="[^"]*"[^>]*>' <<<"$1" || true; }
requests_sum() { rows "$1" | sed -n 's/.*data-requests="\([0-9]*\)".*/\1/p' | awk '{ s += $1 } END { print s + 0 }'; }

n=$(rows "$second" | wc -l)
[ "$n" -eq 3 ] || fail "expected 3 upstream rows, found $n"
down_rows=$(rows "$second" | grep 'class="down"' || true)
grep -q "data-upstream=\"$down\"" <<<"$down_rows" || fail "$down (stopped) is not shown as down"
[ "$(grep -c . <<<"$down_rows")" -eq 1 ] || fail "expected exactly one row down"
before=$(requests_sum "$first")
after=$(requests_sum "$second")
[ "$after" -gt "$before" ] || fail "the request counters did not move ($before, then $after)"
updates=$(sed -n 's/.*data-updates="\([0-9]*\)".*/\1/p' <<<"$second" | head -1)
[ "${updates:-0}" -ge 1 ] || fail "the page did not refresh itself from /status.json"
metrics=$(curl -sf "http://$admin/metrics")
grep -q '^tower_lb_requests_total{balancer="app"' <<<"$metrics" \
    || fail "/metrics has no tower_lb_requests_total for balancer app"

mkdir -p "$(dirname "$shot")"
chrome --screenshot="$shot" --window-size=1000,520 "$url" >/dev/null
[ -s "$shot" ] || fail "no screenshot"
echo "status-page-test: ok: 3 rows, $down down, requests $before -> $after, $updates self-refreshes; screenshot $shot"
