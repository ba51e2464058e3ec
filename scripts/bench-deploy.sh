#!/usr/bin/env bash
# Wall time of one health-gated deploy: `skipper deploy` against the same work done by hand.
#
#   scripts/bench-deploy.sh [RUNS]        (default 10 runs per side, after one warm-up run)
#
# (a) skipper   skipper deploy <registry>/team/app:v1 --health-path /health --pull missing
#               (embedded mode: SQLite store, reconcile, lease, create, start, HTTP health gate,
#               records)
# (b) by hand   docker run -d -p 127.0.0.1::8080 --label ... <image>, then curl /health every
#               0.1s until it answers 200
#
# Both sides start from the same state: the image is present locally, the network exists, and
# hyperfine's --prepare removes the previous run's container (for skipper with `skipper rm`, so
# its store holds no instance either; that removal is not timed). Results: hyperfine's summary
# and the ratio on stdout, the raw numbers in target/bench-deploy.json (and .csv).
#
# Needs what scripts/test-env.sh needs (it runs it), plus Debian's hyperfine (installed if
# missing) and a release build of skipper (built here).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-10}"
OUT="$ROOT/target/bench-deploy"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-deploy: error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Internal: hyperfine's --prepare for (a). Removes every instance skipper knows in this scope.
if [ "${1:-}" = _skipper-clean ]; then
  ids="$("$SKIPPER" ps --json | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4 || true)"
  for id in $ids; do "$SKIPPER" rm "$id" --json >/dev/null; done
  docker ps -aq --filter "label=dev.skipper.scope=$SKIPPER_SCOPE" | xargs -r docker rm -f >/dev/null
  exit 0
fi

if ! command -v hyperfine >/dev/null; then
  command -v apt-get >/dev/null || die "hyperfine is missing and there is no apt-get to install it"
  log "installing hyperfine"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hyperfine >/dev/null
fi

"$ROOT/scripts/test-env.sh"
# shellcheck disable=SC1091
. "$ROOT/target/test-env/env.sh"
log "building the release binary"
(cd "$ROOT" && cargo build --release --quiet -p skipper-bin --bin skipper)

IMAGE="$SKIPPER_TEST_REGISTRY/$SKIPPER_TEST_REPOSITORY:v1"
RUN_ID="bench-$$"
NETWORK="skipper-$RUN_ID"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/skipper-bench.XXXXXX")"
export SKIPPER="$ROOT/target/release/skipper"
export SKIPPER_DATA_DIR="$STATE/data"
export SKIPPER_CONFIG="$STATE/skipper.yaml"
export SKIPPER_SCOPE="$RUN_ID-skipper"
export SKIPPER_STOP_GRACE=1s
HAND_SCOPE="$RUN_ID-hand"
printf 'global:\n  network: %s\n' "$NETWORK" >"$SKIPPER_CONFIG"

cleanup() {
  local s
  for s in "$SKIPPER_SCOPE" "$HAND_SCOPE"; do
    docker ps -aq --filter "label=dev.skipper.scope=$s" | xargs -r docker rm -f >/dev/null 2>&1 || true
  done
  docker network rm "$NETWORK" >/dev/null 2>&1 || true
  rm -rf "$STATE"
}
trap cleanup EXIT

# The same starting point for both: the image present, the network made.
docker pull -q "$IMAGE" >/dev/null
docker network create --label "dev.skipper.scope=$RUN_ID" "$NETWORK" >/dev/null

SKIPPER_CMD="$SKIPPER deploy $IMAGE --health-path /health --pull missing --json"
HAND_CMD="cid=\$(docker run -d --network $NETWORK -p 127.0.0.1::8080 --label dev.skipper.scope=$HAND_SCOPE $IMAGE) && addr=\$(docker port \$cid 8080/tcp | head -n 1) && until curl -fso /dev/null http://\$addr/health; do sleep 0.1; done"
HAND_CLEAN="docker ps -aq --filter label=dev.skipper.scope=$HAND_SCOPE | xargs -r docker rm -f >/dev/null"

mkdir -p "$(dirname "$OUT")"
log "$RUNS runs each (plus one warm-up) on $(nproc) cores, Docker $(docker version --format '{{.Server.Version}}')"
hyperfine --warmup 1 --runs "$RUNS" --style basic \
  --export-json "$OUT.json" --export-csv "$OUT.csv" \
  --command-name "skipper deploy" --prepare "\"$ROOT/scripts/bench-deploy.sh\" _skipper-clean" "$SKIPPER_CMD" \
  --command-name "docker run + curl loop" --prepare "$HAND_CLEAN" "$HAND_CMD"

# Every timed skipper run must have been a fresh deploy (nothing to replace), or the prepare
# step did not clean up and the two sides did different work.
history="$("$SKIPPER" history --json -n 1000)"
deploys="$(grep -o '"status":"succeeded"' <<<"$history" | wc -l || true)"
replacing="$(grep -o '"replaced":\["' <<<"$history" | wc -l || true)"
[ "$deploys" -eq "$((RUNS + 1))" ] || die "expected $((RUNS + 1)) successful deploys, found $deploys"
[ "$replacing" -eq 0 ] || die "$replacing deploys replaced an instance: the prepare step did not clean up"

# command,mean,stddev,median,user,system,min,max (seconds)
awk -F, 'NR == 2 { a = $2; am = $4 } NR == 3 { b = $2; bm = $4 }
  END {
    printf "\nskipper deploy: mean %.0f ms, median %.0f ms\n", a * 1000, am * 1000
    printf "by hand:        mean %.0f ms, median %.0f ms\n", b * 1000, bm * 1000
    printf "ratio (skipper / by hand): %.2f on the mean, %.2f on the median\n", a / b, am / bm
  }' "$OUT.csv"
log "raw numbers: $OUT.json"
