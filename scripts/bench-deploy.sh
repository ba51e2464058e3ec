#!/usr/bin/env bash
# Wall time of one health-gated deploy: `skipper deploy` against the same work done by hand.
#
#   scripts/bench-deploy.sh [RUNS]        (default 10 pairs, after one warm-up pair)
#
# (a) skipper   skipper deploy <registry>/team/app:v1 --health-path /health --pull missing
#               (embedded mode: SQLite store, reconcile, lease, create, start, HTTP health gate,
#               records)
# (b) by hand   docker run -d -p 127.0.0.1::8080 --label ... <image>, then curl /health every
#               50 ms until it answers 200
#
# The two sides run alternately, one pair at a time, so both see the same machine. Both start
# from the same state: the image is present locally, the network exists, and the previous run's
# container is removed first (for skipper with `skipper rm`, so its store holds no instance
# either; that removal is not timed). Each pair's times and ratio go to stdout and to
# target/bench-deploy.csv; the summary gives the medians, the median ratio and the worst pair.
#
# Needs what scripts/test-env.sh needs (it runs it) and a release build of skipper (built here).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-10}"
OUT="$ROOT/target/bench-deploy"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-deploy: error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Internal: the untimed clean-up before each (a). Removes every instance skipper knows in this scope.
if [ "${1:-}" = _skipper-clean ]; then
  ids="$("$SKIPPER" ps --json | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4 || true)"
  for id in $ids; do "$SKIPPER" rm "$id" --json >/dev/null; done
  docker ps -aq --filter "label=dev.skipper.scope=$SKIPPER_SCOPE" | xargs -r docker rm -f >/dev/null
  exit 0
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
HAND_CMD="cid=\$(docker run -d --network $NETWORK -p 127.0.0.1::8080 --label dev.skipper.scope=$HAND_SCOPE $IMAGE) && addr=\$(docker port \$cid 8080/tcp | head -n 1) && until curl -fso /dev/null http://\$addr/health; do sleep 0.05; done"
HAND_CLEAN="docker ps -aq --filter label=dev.skipper.scope=$HAND_SCOPE | xargs -r docker rm -f >/dev/null"

mkdir -p "$(dirname "$OUT")"
log "$RUNS pairs (plus one warm-up pair), run alternately, on $(nproc) cores, Docker $(docker version --format '{{.Server.Version}}')"
now_ms() { date +%s%3N; }
time_it() { # command → milliseconds on stdout
  local t0 t1
  t0="$(now_ms)"
  bash -c "$1" >/dev/null
  t1="$(now_ms)"
  echo $((t1 - t0))
}
: >"$OUT.csv"
echo "pair,skipper_ms,hand_ms,ratio" >>"$OUT.csv"
for i in $(seq 0 "$RUNS"); do
  "$ROOT/scripts/bench-deploy.sh" _skipper-clean
  a="$(time_it "$SKIPPER_CMD")"
  bash -c "$HAND_CLEAN"
  b="$(time_it "$HAND_CMD")"
  if [ "$i" -eq 0 ]; then continue; fi # the warm-up pair
  r="$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')"
  printf 'pair %2d: skipper %4d ms, by hand %4d ms, ratio %s\n' "$i" "$a" "$b" "$r"
  echo "$i,$a,$b,$r" >>"$OUT.csv"
done
bash -c "$HAND_CLEAN"

# Every timed skipper run must have been a fresh deploy (nothing to replace), or the prepare
# step did not clean up and the two sides did different work.
history="$("$SKIPPER" history --json -n 1000)"
deploys="$(grep -o '"status":"succeeded"' <<<"$history" | wc -l || true)"
replacing="$(grep -o '"replaced":\["' <<<"$history" | wc -l || true)"
[ "$deploys" -eq "$((RUNS + 1))" ] || die "expected $((RUNS + 1)) successful deploys, found $deploys"
[ "$replacing" -eq 0 ] || die "$replacing deploys replaced an instance: the prepare step did not clean up"

# pair,skipper_ms,hand_ms,ratio
sort -t, -k2,2n <(tail -n +2 "$OUT.csv") | awk -F, '{ a[NR] = $2 } END { print "skipper median", a[int((NR + 1) / 2)], "ms" }'
sort -t, -k3,3n <(tail -n +2 "$OUT.csv") | awk -F, '{ b[NR] = $3 } END { print "by hand median", b[int((NR + 1) / 2)], "ms" }'
sort -t, -k4,4n <(tail -n +2 "$OUT.csv") | awk -F, '{ r[NR] = $4 } END { print "ratio (skipper / by hand): median", r[int((NR + 1) / 2)], "max", r[NR] }'
log "raw numbers: $OUT.csv"
