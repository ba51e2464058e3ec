#!/usr/bin/env bash
# The control plane's figures (BENCHMARKS.md): API latency under 100 concurrent clients, the
# time from a webhook's receipt to its deploy's start, the server's idle RSS, and listing
# 1,000 projects × 3 stages.
#
#   scripts/bench-server.sh
#
# Needs `hey` (Debian's package; installed if missing) and the test registry of
# scripts/test-env.sh (the webhook's deploys pull from it). Everything runs on 127.0.0.1 with a
# fresh data directory and its own label scope; the server is the release build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v hey >/dev/null || { sudo -n apt-get install -y -q hey >/dev/null 2>&1 || apt-get install -y -q hey >/dev/null; }
scripts/test-env.sh >/dev/null
# shellcheck disable=SC1091
. target/test-env/env.sh
cargo build --quiet --release -p skipper-bin --bin skipper
BIN=target/release/skipper
DATA="$(mktemp -d "${TMPDIR:-/tmp}/skipper-bench-server.XXXXXX")"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
SCOPE="bench-server-$$"
URL="http://127.0.0.1:$PORT"
SKIPPER_SCOPE="$SCOPE" SKIPPER_DATA_DIR="$DATA" SKIPPER_ADMIN_TOKEN="$TOKEN" SKIPPER_CONFIG=/dev/null \
  RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" --log-format json >"$DATA/serve.log" 2>&1 &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  docker ps -aq --filter "label=dev.skipper.scope=$SCOPE" | xargs -r docker rm -f >/dev/null
  rm -rf "$DATA"
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "$URL/v1/health" >/dev/null && break; sleep 0.1; done
H="Authorization: Bearer $TOKEN"

echo "== idle RSS (after 5 s idle)"
sleep 5
echo "rss_kb $(ps -o rss= -p "$SERVER")"

echo "== 1,000 projects x 3 stages"
python3 - "$URL" "$TOKEN" <<'PY'
import json, sys, urllib.request
url, token = sys.argv[1], sys.argv[2]
for i in range(1000):
    body = {"name": f"p{i}", "image": "127.0.0.1:5055/team/app", "port": 8080,
            "stages": {s: {"tag_pattern": "*"} for s in ("dev", "rel", "prod")}}
    req = urllib.request.Request(f"{url}/v1/projects", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "content-type": "application/json"})
    urllib.request.urlopen(req).read()
PY
echo "rss_kb_with_1000_projects $(ps -o rss= -p "$SERVER")"

run_hey() { # label n url
  echo "== $1"
  hey -n "$2" -c 100 -H "$H" "$3" | grep -E "Requests/sec|50%|99%|Status code|\[[0-9]{3}\]"
}
run_hey "GET /v1/projects (1,000 projects, 3 stages each), 100 clients" 2000 "$URL/v1/projects"
run_hey "GET /v1/projects/p500, 100 clients" 20000 "$URL/v1/projects/p500"
run_hey "GET /v1/deploys?limit=50, 100 clients" 20000 "$URL/v1/deploys?limit=50"

echo "== webhook receipt -> deploy start (50 pushes, one at a time)"
python3 - "$URL" "$TOKEN" "$SKIPPER_TEST_REGISTRY" <<'PY'
import datetime, json, re, sys, time, urllib.request
url, token, registry = sys.argv[1], sys.argv[2], sys.argv[3]
H = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
def call(method, path, body=None, headers=H):
    req = urllib.request.Request(f"{url}{path}", method=method, headers=headers,
        data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")
call("POST", "/v1/projects", {"name": "hook", "image": f"{registry}/team/bench",
     "port": 8080, "stages": {"dev": {"tag_pattern": "*", "auto_deploy": True}}})
hook = call("GET", "/v1/settings/webhook-url")["url"].split(url, 1)[1]
lat = []
for i in range(50):
    sent = datetime.datetime.now(datetime.timezone.utc)
    call("POST", hook, {"image": f"{registry}/team/bench:t{i}"}, {"content-type": "application/json"})
    # The tag does not exist: the deploy fails at its pull; wait for its record.
    for _ in range(500):
        ds = [d for d in call("GET", "/v1/deploys?project=hook&limit=5") if d["tag"] == f"t{i}"]
        if ds and ds[0]["status"] != "in_progress":
            break
        time.sleep(0.01)
    raw = re.sub(r"(\.\d{6})\d*", r"\1", ds[0]["started_at"]).replace("Z", "+00:00")
    started = datetime.datetime.fromisoformat(raw)
    lat.append((started - sent).total_seconds() * 1000)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"webhook_to_start_ms p50 {p(0.5):.1f} p99 {p(0.99):.1f} max {lat[-1]:.1f} (n={len(lat)})")
PY
