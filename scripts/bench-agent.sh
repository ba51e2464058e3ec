#!/usr/bin/env bash
# The agent's figures (BENCHMARKS.md): `skippy`'s idle RSS and binary size, and how long a work
# order takes from being queued to being answered (one agent, one order at a time).
#
#   scripts/bench-agent.sh [orders]     # default 200
#
# The release builds of `skipper` and `skippy`, on 127.0.0.1, a fresh data directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-200}"
cargo build --quiet --release -p skipper-bin --bin skipper --bin skippy
DATA="$(mktemp -d "${TMPDIR:-/tmp}/skipper-bench-agent.XXXXXX")"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
URL="http://127.0.0.1:$PORT"
SKIPPER_SCOPE="bench-agent-$$" SKIPPER_DATA_DIR="$DATA/server" SKIPPER_ADMIN_TOKEN="$TOKEN" \
  SKIPPER_CONFIG=/dev/null RUST_LOG=warn target/release/skipper serve --listen "127.0.0.1:$PORT" \
  >"$DATA/serve.log" 2>&1 &
SERVER=$!
AGENT=
cleanup() {
  [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null || true
  kill "$SERVER" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "$URL/v1/health" >/dev/null && break; sleep 0.1; done
NODE_TOKEN="$(curl -sf -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"id":"bench-1"}' "$URL/v1/nodes" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
SKIPPER_URL="$URL" AGENT_ID=bench-1 AGENT_TOKEN="$NODE_TOKEN" DATA_DIR="$DATA/agent" RUST_LOG=warn \
  target/release/skippy >"$DATA/skippy.log" 2>&1 &
AGENT=$!
sleep 5
echo "skippy_idle_rss_kb $(ps -o rss= -p "$AGENT")"
echo "skippy_binary_bytes $(stat -c %s target/release/skippy)"
echo "skipper_binary_bytes $(stat -c %s target/release/skipper)"
python3 - "$URL" "$TOKEN" "$N" <<'PY'
import http.client, json, sys, time
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
host = url.split("//")[1]
c = http.client.HTTPConnection(host)
H = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
def call(method, path, body=None):
    c.request(method, path, body=None if body is None else json.dumps(body), headers=H)
    r = c.getresponse()
    return json.loads(r.read() or b"null")
lat = []
for i in range(n):
    t0 = time.perf_counter()
    o = call("POST", "/v1/nodes/bench-1/work-orders", {"kind": "ping"})
    while call("GET", f"/v1/work-orders/{o['id']}")["status"] not in ("succeeded", "failed"):
        pass
    lat.append((time.perf_counter() - t0) * 1000)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"order_queued_to_answered_ms p50 {p(0.5):.1f} p99 {p(0.99):.1f} max {lat[-1]:.1f} (n={n}, polled by the client)")
PY
echo "skippy_rss_after_orders_kb $(ps -o rss= -p "$AGENT")"
