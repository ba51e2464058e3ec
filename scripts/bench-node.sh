#!/usr/bin/env bash
# A deploy to a node against the same deploy run locally (BENCHMARKS.md): one `skipper serve`,
# one `skippy` on this host (so both sides use the same Docker engine and image), a project with
# a stage on the server's own host (`here`) and one on the node (`there`). Each round deploys
# v1 then v2 to each stage, alternating, through `?wait=true`; the time of each request is
# recorded. Prints the medians and the ratio there / here.
#
#   scripts/bench-node.sh [rounds]     # default 10; needs scripts/test-env.sh's local images
#
# SKIPPER_BENCH_PROFILE=release (default) or dev picks the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-10}"
PROFILE="${SKIPPER_BENCH_PROFILE:-release}"
case "$PROFILE" in
  dev) BIN=target/debug ;;
  *) BIN="target/$PROFILE" ;;
esac
cargo build --quiet --profile "$PROFILE" -p skipper-bin --bin skipper --bin skippy
docker image inspect skipper-test/app:v1 skipper-test/app:v2 >/dev/null \
  || { echo "bench-node: run scripts/test-env.sh first (it builds skipper-test/app)" >&2; exit 1; }
DATA="$(mktemp -d "${TMPDIR:-/tmp}/skipper-bench-node.XXXXXX")"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
SCOPE="bench-node-$$"
URL="http://127.0.0.1:$PORT"
SKIPPER_SCOPE="$SCOPE" SKIPPER_DATA_DIR="$DATA/server" SKIPPER_ADMIN_TOKEN="$TOKEN" \
  SKIPPER_CONFIG=/dev/null RUST_LOG=warn "$BIN/skipper" serve --listen "127.0.0.1:$PORT" \
  >"$DATA/serve.log" 2>&1 &
SERVER=$!
AGENT=
cleanup() {
  [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null || true
  kill "$SERVER" 2>/dev/null || true
  wait 2>/dev/null || true
  docker ps -aq --filter "label=dev.skipper.scope=$SCOPE" | xargs -r docker rm -f >/dev/null
  rm -rf "$DATA"
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "$URL/v1/health" >/dev/null && break; sleep 0.1; done
NODE_TOKEN="$(curl -sf -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"id":"bench-1"}' "$URL/v1/nodes" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
SKIPPER_SCOPE="$SCOPE" SKIPPER_URL="$URL" AGENT_ID=bench-1 AGENT_TOKEN="$NODE_TOKEN" \
  DATA_DIR="$DATA/agent" RUST_LOG=warn "$BIN/skippy" >"$DATA/skippy.log" 2>&1 &
AGENT=$!
python3 - "$URL" "$TOKEN" "$N" <<'PY'
import http.client, json, statistics, sys, time
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
host = url.split("//")[1]
H = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
def call(method, path, body=None):
    c = http.client.HTTPConnection(host, timeout=120)
    c.request(method, path, body=None if body is None else json.dumps(body), headers=H)
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")
for _ in range(100):
    if call("GET", "/v1/nodes/bench-1")[1].get("status") == "online":
        break
    time.sleep(0.1)
code, p = call("POST", "/v1/projects", {
    "name": "bench", "image": "skipper-test/app", "port": 8080, "healthcheck": "/health",
    "stages": {"here": {"tag_pattern": "*"}, "there": {"tag_pattern": "*", "node": "bench-1"}},
})
assert code == 201, p
times = {"here": [], "there": []}
for i in range(n):
    for tag in ("v1", "v2"):
        for stage in (("here", "there") if i % 2 == 0 else ("there", "here")):
            t0 = time.perf_counter()
            code, d = call("POST", f"/v1/projects/bench/stages/{stage}/instances?wait=true",
                           {"tag": tag, "pull": "never"})
            dt = (time.perf_counter() - t0) * 1000
            assert code == 200 and d["status"] == "succeeded", d
            times[stage].append(dt)
h, t = statistics.median(times["here"]), statistics.median(times["there"])
print(f"deploy_here_ms median {h:.0f} min {min(times['here']):.0f} max {max(times['here']):.0f} (n={len(times['here'])})")
print(f"deploy_there_ms median {t:.0f} min {min(times['there']):.0f} max {max(times['there']):.0f} (n={len(times['there'])})")
print(f"ratio_there_over_here {t / h:.2f}")
PY
