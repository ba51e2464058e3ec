#!/usr/bin/env bash
# The fleet figures (BENCHMARKS.md): N simulated agents on one `skipper serve` on this machine:
# the server's memory per idle agent, the heartbeat load it carries, and how long a work order
# takes from being queued to being answered at that load.
#
#   scripts/bench-agents.sh [N] [orders]     # default 10000 agents, 500 orders
#
# Release builds of `skipper` and the load tool (skipper-bin/examples/agents_load.rs), a fresh
# data directory, the server on 127.0.0.1. Each agent holds two sockets, like `skippy` (its
# long-poll and its kept heartbeat connection), so the server and the tool need about 2N open
# files each; when the hard limit (ulimit -Hn) is lower, the agents open a fresh connection per
# heartbeat instead (SKIPPER_BENCH_HEARTBEAT_CLOSE=1 forces that) and the output says so.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-10000}"
ORDERS="${2:-500}"
cargo build --quiet --release -p skipper-bin --bin skipper --example agents_load
HARD="$(ulimit -Hn)"
ulimit -n "$HARD"
CLOSE=()
if [ "${SKIPPER_BENCH_HEARTBEAT_CLOSE:-0}" = 1 ] || { [ "$HARD" != unlimited ] && [ $((2 * N + 200)) -gt "$HARD" ]; }; then
  CLOSE=(--heartbeat-close)
  echo "heartbeats: a fresh connection each (2 x $N sockets do not fit the open-files limit $HARD)"
else
  echo "heartbeats: a kept connection per agent, like skippy"
fi
DATA="$(mktemp -d "${TMPDIR:-/tmp}/skipper-bench-agents.XXXXXX")"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
URL="http://127.0.0.1:$PORT"
SKIPPER_SCOPE="bench-agents-$$" SKIPPER_DATA_DIR="$DATA/server" SKIPPER_ADMIN_TOKEN="$TOKEN" \
  SKIPPER_CONFIG=/dev/null RUST_LOG=warn target/release/skipper serve --listen "127.0.0.1:$PORT" \
  >"$DATA/serve.log" 2>&1 &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  if [ -s "$DATA/serve.log" ]; then
    echo "server log (last 5 lines of $(wc -l <"$DATA/serve.log")):"
    tail -n 5 "$DATA/serve.log"
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "$URL/v1/health" >/dev/null && break; sleep 0.1; done
sleep 2
echo "machine $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "agents $N, open-files limit $HARD"
SKIPPER_ADMIN_TOKEN="$TOKEN" target/release/examples/agents_load --url "$URL" --agents "$N" \
  --orders "$ORDERS" --server-pid "$SERVER" --max-time 15m "${CLOSE[@]}" ${SKIPPER_BENCH_ARGS:-}
echo "load average after $(cut -d' ' -f1-3 /proc/loadavg)"
