#!/usr/bin/env bash
# End-to-end benchmark of the reverse proxy example against nginx and HAProxy.
#
#   scripts/bench-proxy.sh            # 2 rounds x 10 s per target, about 2 minutes
#
# Installs nginx, haproxy and wrk from the OS packages when they are missing (apt-get update
# once, then apt-get install -y nginx haproxy wrk). Starts three fast demo upstreams on
# loopback (the example's --upstreams-only), nginx (classic upstream block, keepalive on),
# HAProxy (roundrobin, http-reuse always) and tower-lb's reverse proxy, each on its own port,
# with the same worker count; drives each with the same wrk settings, rounds interleaved; and
# prints one table. All traffic stays on 127.0.0.1.
#
# Besides req/s and latency, the table gives the CPU time each part spends per request
# (from /proc: the proxy's processes, the upstreams, wrk), and one more target: HAProxy in
# `mode tcp`, a layer-4 byte relay that parses no HTTP at all. Every request costs the same
# loopback TCP work in any proxy, so the relay's rate is the ceiling an HTTP proxy can
# approach on this machine and traffic. And `lean-floor`: scripts/lean-proxy, the leanest
# HTTP/1.1 proxy on tokio (httparse, one task per connection for both legs, round robin,
# nothing else), which shows how near a Rust proxy gets when it does almost nothing.
# Settings (environment):
#
#   DURATION=10s THREADS=2 CONNECTIONS=64 ROUNDS=2 WORKERS=2 STRATEGY=round-robin
#   TOWER_ARGS= (more flags for tower-lb's proxy, e.g. --h2c)
#   BASE_PORT=18000 (upstreams on BASE_PORT..+2, nginx +81, haproxy +82, tower-lb +83,
#   the relay +84, lean-floor +85)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-2}
WORKERS=${WORKERS:-2}
STRATEGY=${STRATEGY:-round-robin}
BASE_PORT=${BASE_PORT:-18000}
UP=("127.0.0.1:$BASE_PORT" "127.0.0.1:$((BASE_PORT + 1))" "127.0.0.1:$((BASE_PORT + 2))")
NGINX_PORT=$((BASE_PORT + 81))
HAPROXY_PORT=$((BASE_PORT + 82))
TOWER_PORT=$((BASE_PORT + 83))
RELAY_PORT=$((BASE_PORT + 84))
LEAN_PORT=$((BASE_PORT + 85))

missing=()
for tool in nginx haproxy wrk; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "bench-proxy: installing ${missing[*]} from the OS packages: apt-get update; apt-get install -y nginx haproxy wrk"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk >/dev/null
fi

echo "bench-proxy: building the example (cargo build --release --example reverse_proxy)"
cargo build --release --example reverse_proxy
BIN=target/release/examples/reverse_proxy
echo "bench-proxy: building scripts/lean-proxy (the lean-floor reference)"
CARGO_TARGET_DIR=target/lean-proxy cargo build --release --manifest-path scripts/lean-proxy/Cargo.toml
LEAN_BIN=target/lean-proxy/release/lean-proxy

TMP=$(mktemp -d /tmp/bench-proxy.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -f $TMP/nginx.pid ]] && kill "$(cat "$TMP/nginx.pid" 2>/dev/null)" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench-proxy: nothing listens on port $1 (see $TMP)" >&2
    exit 1
}

# The upstreams: one process, three listeners.
"$BIN" --upstreams-only --upstream "${UP[0]}" --upstream "${UP[1]}" --upstream "${UP[2]}" \
    >"$TMP/upstreams.log" 2>&1 &
UPSTREAMS_PID=$!
PIDS+=($UPSTREAMS_PID)
for u in "${UP[@]}"; do wait_port "${u##*:}"; done

# nginx: the classic upstream block with keep-alive connections to the upstreams.
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    upstream app {
        server ${UP[0]};
        server ${UP[1]};
        server ${UP[2]};
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
CONF
nginx -c "$TMP/nginx.conf" -p "$TMP/nginx/" >"$TMP/nginx.log" 2>&1 &
NGINX_PID=$!
PIDS+=($NGINX_PID)

# HAProxy: round robin, connection reuse, X-Forwarded-For; and the layer-4 relay.
SERVERS=$(for i in "${!UP[@]}"; do printf '    server u%s %s\n' "$i" "${UP[$i]}"; done)
cat >"$TMP/haproxy.cfg" <<CONF
global
    nbthread $WORKERS
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    http-reuse always
    option forwardfor
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend app
backend app
    balance roundrobin
$SERVERS
frontend relay
    mode tcp
    bind 127.0.0.1:$RELAY_PORT
    default_backend app_tcp
backend app_tcp
    mode tcp
    balance roundrobin
$SERVERS
CONF
haproxy -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)

# tower-lb's reverse proxy: the same worker count, health checks and outlier detection on.
# shellcheck disable=SC2086 # TOWER_ARGS: extra flags, word-split on purpose (e.g. --h2c)
"$BIN" --workers "$WORKERS" --strategy "$STRATEGY" --listen "127.0.0.1:$TOWER_PORT" ${TOWER_ARGS:-} \
    --upstream "${UP[0]}" --upstream "${UP[1]}" --upstream "${UP[2]}" >"$TMP/tower-lb.log" 2>&1 &
TOWER_PID=$!
PIDS+=($TOWER_PID)

# The lean-floor reference.
"$LEAN_BIN" "$WORKERS" "127.0.0.1:$LEAN_PORT" "${UP[@]}" >"$TMP/lean-proxy.log" 2>&1 &
LEAN_PID=$!
PIDS+=($LEAN_PID)

for port in $NGINX_PORT $HAPROXY_PORT $TOWER_PORT $RELAY_PORT $LEAN_PORT; do wait_port "$port"; done

NAMES=(direct nginx haproxy tower-lb lean-floor l4-relay)
PORTS=("${UP[0]##*:}" "$NGINX_PORT" "$HAPROXY_PORT" "$TOWER_PORT" "$LEAN_PORT" "$RELAY_PORT")
# The processes each target's proxy runs in (nginx: the master and its workers).
proxy_pids() {
    case $1 in
        direct) ;;
        nginx) echo "$NGINX_PID" $(cat /proc/"$NGINX_PID"/task/*/children 2>/dev/null) ;;
        haproxy | l4-relay) echo "$HAPROXY_PID" ;;
        tower-lb) echo "$TOWER_PID" ;;
        lean-floor) echo "$LEAN_PID" ;;
    esac
}
# CPU time (in clock ticks) used so far by the processes given: user + system, or with
# `sys_ticks` the system (kernel) part alone.
cpu_ticks() { proc_ticks '$14 + $15' "$@"; }
sys_ticks() { proc_ticks '$15' "$@"; }
proc_ticks() {
    local total=0 pid expr=$1
    shift
    for pid in "$@"; do
        ticks=$(awk "{print $expr}" "/proc/$pid/stat" 2>/dev/null || true)
        total=$((total + ${ticks:-0}))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# wrk's latency figures in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
        printf "%.2f", n }'
}

echo "bench-proxy: warming up"
for i in "${!NAMES[@]}"; do
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:${PORTS[$i]}/" >/dev/null
done

echo "bench-proxy: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS rounds interleaved;" \
    "$WORKERS workers each (nginx worker_processes, haproxy nbthread, tower-lb --workers)"
RESULTS=$TMP/results
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for i in "${!NAMES[@]}"; do
        name=${NAMES[$i]}
        pids=$(proxy_pids "$name")
        proxy0=$(cpu_ticks $pids)
        kernel0=$(sys_ticks $pids)
        up0=$(cpu_ticks "$UPSTREAMS_PID")
        # bash's `time` gives wrk's own CPU time (user and system seconds). A target that
        # fails is reported in its row; the run goes on.
        { TIMEFORMAT='%U %S'; time wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
            "http://127.0.0.1:${PORTS[$i]}/" >"$TMP/wrk.out" 2>"$TMP/wrk.err"; } 2>"$TMP/wrk.time" ||
            echo "bench-proxy: wrk failed against $name: $(cat "$TMP/wrk.err")" >&2
        proxy1=$(cpu_ticks $pids)
        kernel1=$(sys_ticks $pids)
        up1=$(cpu_ticks "$UPSTREAMS_PID")
        out=$(cat "$TMP/wrk.out")
        requests=$(awk '/requests in/ {print $1}' <<<"$out")
        requests=${requests:-0}
        rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
        rps=${rps:-0}
        p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
        errors=$(awk '/Non-2xx|Socket errors/' <<<"$out" | tr -s ' ' | paste -sd ';' -)
        read -r cpu_proxy cpu_kernel cpu_up cpu_wrk < <(awk -v n="$requests" -v hz="$CLK_TCK" \
            -v p=$((proxy1 - proxy0)) -v k=$((kernel1 - kernel0)) -v u=$((up1 - up0)) '
            END {
                us = 1e6 / hz / (n > 0 ? n : 1);
                if (n > 0) printf "%.1f %.1f %.1f %.1f\n", p * us, k * us, u * us, ($1 + $2) * 1e6 / n;
                else print "n/a n/a n/a n/a"
            }' "$TMP/wrk.time") || true
        printf '  round %s  %-10s %10.0f req/s  p50 %6s ms  p99 %6s ms  CPU us/req: proxy %5s (kernel %5s) upstreams %5s wrk %5s %s\n' \
            "$round" "$name" "$rps" "$p50" "$p99" "$cpu_proxy" "$cpu_kernel" "$cpu_up" "$cpu_wrk" "$errors"
        echo "$name $rps $p50 $p99 $cpu_proxy $cpu_kernel $cpu_up $cpu_wrk" >>"$RESULTS"
    done
done

echo
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs; means over $ROUNDS rounds;" \
    "CPU: microseconds of CPU time (user + system) per request, and of it the kernel's"
awk -v names="${NAMES[*]}" '
    { n[$1]++; rps[$1] += $2; p50[$1] += $3; p99[$1] += $4; cp[$1] += $5; ck[$1] += $6; cu[$1] += $7; cw[$1] += $8 }
    END {
        count = split(names, order, " ");
        base = rps["nginx"] / n["nginx"];
        if (base == 0) base = 1;
        printf "| %-10s | %9s | %8s | %8s | %8s | %9s | %9s | %9s | %9s |\n", "target", "req/s", "p50 ms",
            "p99 ms", "vs nginx", "CPU proxy", "of kernel", "CPU upstr", "CPU wrk";
        printf "|------------|-----------|----------|----------|----------|-----------|-----------|-----------|-----------|\n";
        for (i = 1; i <= count; i++) {
            k = order[i];
            printf "| %-10s | %9.0f | %8.2f | %8.2f | %7.2fx | %9.1f | %9.1f | %9.1f | %9.1f |\n",
                k, rps[k] / n[k], p50[k] / n[k], p99[k] / n[k], (rps[k] / n[k]) / base,
                cp[k] / n[k], ck[k] / n[k], cu[k] / n[k], cw[k] / n[k];
        }
    }' "$RESULTS"
echo "lean-floor: scripts/lean-proxy, a bare HTTP/1.1 relay on tokio (Content-Length bodies only, no" \
    "timeouts, health or retries): about the best a Rust proxy does here."
echo "l4-relay: HAProxy in mode tcp, which relays bytes and parses no HTTP: the ceiling for any proxy here."
