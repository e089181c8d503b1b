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
# prints one table. All traffic stays on 127.0.0.1. Settings (environment):
#
#   DURATION=10s THREADS=2 CONNECTIONS=64 ROUNDS=2 WORKERS=2 STRATEGY=round-robin
#   BASE_PORT=18000 (upstreams on BASE_PORT..+2, nginx +81, haproxy +82, tower-lb +83)
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

TMP=$(mktemp -d /tmp/bench-proxy.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -f $TMP/nginx.pid ]] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
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
PIDS+=($!)
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
PIDS+=($!)

# HAProxy: round robin, connection reuse, X-Forwarded-For.
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
    server u0 ${UP[0]}
    server u1 ${UP[1]}
    server u2 ${UP[2]}
CONF
haproxy -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
PIDS+=($!)

# tower-lb's reverse proxy: the same worker count, health checks and outlier detection on.
"$BIN" --workers "$WORKERS" --strategy "$STRATEGY" --listen "127.0.0.1:$TOWER_PORT" \
    --upstream "${UP[0]}" --upstream "${UP[1]}" --upstream "${UP[2]}" >"$TMP/tower-lb.log" 2>&1 &
PIDS+=($!)

for port in $NGINX_PORT $HAPROXY_PORT $TOWER_PORT; do wait_port "$port"; done

NAMES=(direct nginx haproxy tower-lb)
PORTS=("${UP[0]##*:}" "$NGINX_PORT" "$HAPROXY_PORT" "$TOWER_PORT")

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
        out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:${PORTS[$i]}/")
        rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
        p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
        errors=$(awk '/Non-2xx|Socket errors/' <<<"$out" | tr -s ' ' | paste -sd ';' -)
        printf '  round %s  %-9s %10.0f req/s  p50 %6s ms  p99 %6s ms %s\n' \
            "$round" "${NAMES[$i]}" "$rps" "$p50" "$p99" "$errors"
        echo "${NAMES[$i]} $rps $p50 $p99" >>"$RESULTS"
    done
done

echo
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs; means over $ROUNDS rounds"
awk -v names="${NAMES[*]}" '
    { n[$1]++; rps[$1] += $2; p50[$1] += $3; p99[$1] += $4 }
    END {
        split(names, order, " ");
        base = rps["nginx"] / n["nginx"];
        printf "| %-9s | %9s | %8s | %8s | %9s |\n", "target", "req/s", "p50 ms", "p99 ms", "vs nginx";
        printf "|-----------|-----------|----------|----------|-----------|\n";
        for (i = 1; i <= 4; i++) {
            k = order[i];
            printf "| %-9s | %9.0f | %8.2f | %8.2f | %8.2fx |\n",
                k, rps[k] / n[k], p50[k] / n[k], p99[k] / n[k], (rps[k] / n[k]) / base;
        }
    }' "$RESULTS"
