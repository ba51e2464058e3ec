#!/usr/bin/env bash
# The real components Skipper's engine tests run against: test images, two local registries and
# a Caddy (scripts/caddy.sh).
#
#   scripts/test-env.sh          install what is missing, build the test images, start both
#                                registries, push every image, write target/test-env/env.sh
#   scripts/test-env.sh stop     stop the registries and Caddy, delete their storage
#   scripts/test-env.sh status   print the environment file
#
# Idempotent: run it before every test run (the README's test command does). It needs a running
# Docker engine and, when packages are missing, apt-get (as root or through sudo).
#
# Environment:
#   SKIPPER_TEST_REGISTRY_PORT        open registry port on 127.0.0.1 (default 5055)
#   SKIPPER_TEST_AUTH_REGISTRY_PORT   htpasswd registry port on 127.0.0.1 (default 5056)
#   SKIPPER_TEST_REGISTRY_NOTIFY_URL  if set, both registries POST push/pull events here
#   SKIPPER_TEST_REGISTRY_NOTIFY_AUTH if set, sent as the Authorization header of those events
#   SKIPPER_TEST_ENV_DIR              state directory (default <repo>/target/test-env)
#
# What it provides (all written to $SKIPPER_TEST_ENV_DIR/env.sh, `export KEY=value` lines, the
# last one SKIPPER_TEST_ENV_READY=1):
#   - local images skipper-test/app:{v1,v2,unhealthy,crash,slow,healthcheck} (testdata/images/)
#   - 127.0.0.1:$SKIPPER_TEST_REGISTRY_PORT/team/app:<variant>       no authentication
#   - 127.0.0.1:$SKIPPER_TEST_AUTH_REGISTRY_PORT/team/app:<variant>  user skipper, skipper-pass
#     (the script logs out again, so tests must pass credentials explicitly)
#   - SKIPPER_TEST_CADDY_{ADMIN,HTTP,BIN}: see scripts/caddy.sh (its ports: SKIPPER_TEST_CADDY_*_PORT)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${SKIPPER_TEST_ENV_DIR:-$ROOT/target/test-env}"
ENV_FILE="$STATE_DIR/env.sh"
OPEN_PORT="${SKIPPER_TEST_REGISTRY_PORT:-5055}"
AUTH_PORT="${SKIPPER_TEST_AUTH_REGISTRY_PORT:-5056}"
NOTIFY_URL="${SKIPPER_TEST_REGISTRY_NOTIFY_URL:-}"
NOTIFY_AUTH="${SKIPPER_TEST_REGISTRY_NOTIFY_AUTH:-}"
AUTH_USER="skipper"
AUTH_PASSWORD="skipper-pass"
LOCAL_REPO="skipper-test/app"
REMOTE_REPO="team/app"
VARIANTS=(v1 v2 unhealthy crash slow healthcheck stubborn)
PACKAGES=(busybox-static docker-registry apache2-utils docker-compose)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'test-env: error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return
  fi
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

check_docker() {
  command -v docker >/dev/null || die "the docker CLI is not installed"
  docker info >/dev/null 2>&1 ||
    die "cannot reach the Docker engine at ${DOCKER_HOST:-unix:///var/run/docker.sock} (is it running? set DOCKER_HOST)"
}

busybox_path() {
  local b
  for b in /bin/busybox /usr/bin/busybox; do
    if [ -x "$b" ]; then printf '%s\n' "$b"; return; fi
  done
  die "busybox-static is installed but /bin/busybox is missing"
}

# Each variant is built from testdata/images/<variant> plus a copy of the static busybox. Every
# Dockerfile is FROM scratch, so the build pulls nothing.
build_images() {
  local busybox v ctx
  busybox="$(busybox_path)"
  for v in "${VARIANTS[@]}"; do
    ctx="$STATE_DIR/build/$v"
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cp -R "$ROOT/testdata/images/$v/." "$ctx/"
    cp "$busybox" "$ctx/busybox"
    if ! docker build -q -t "$LOCAL_REPO:$v" "$ctx" >"$STATE_DIR/build-$v.log" 2>&1; then
      cat "$STATE_DIR/build-$v.log" >&2
      die "docker build of $LOCAL_REPO:$v failed"
    fi
  done
  log "built ${VARIANTS[*]/#/$LOCAL_REPO:}"
}

registry_config() { # name port auth(0|1)
  local name="$1" port="$2" auth="$3"
  cat <<EOF
# Written by scripts/test-env.sh.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DATA_DIR/$name
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: skipper-test-$name
EOF
  if [ "$auth" = 1 ]; then
    cat <<EOF
auth:
  htpasswd:
    realm: skipper-test
    path: $DATA_DIR/htpasswd
EOF
  fi
  if [ -n "$NOTIFY_URL" ]; then
    cat <<EOF
notifications:
  endpoints:
    - name: skipper-test
      url: $NOTIFY_URL
      timeout: 2s
      threshold: 3
      backoff: 1s
      ignoredmediatypes:
        - application/octet-stream
EOF
    if [ -n "$NOTIFY_AUTH" ]; then
      cat <<EOF
      headers:
        Authorization: ["$NOTIFY_AUTH"]
EOF
    fi
  fi
}

# The HTTP status of GET /v2/ (000 when nothing answers).
registry_status() {
  curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/v2/" 2>/dev/null || true
}

pid_is_registry() {
  local pid="$1"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'docker-registry'
}

stop_registry() { # name
  local pidfile="$STATE_DIR/registry-$1.pid" pid i
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if pid_is_registry "$pid"; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 50); do
      pid_is_registry "$pid" || break
      sleep 0.1
    done
    pid_is_registry "$pid" && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile" "$STATE_DIR/registry-$1.sum"
}

start_registry() { # name port auth(0|1)
  local name="$1" port="$2" auth="$3"
  local config="$STATE_DIR/registry-$name.yml" pidfile="$STATE_DIR/registry-$name.pid"
  local sumfile="$STATE_DIR/registry-$name.sum" logfile="$STATE_DIR/registry-$name.log"
  local want i status
  registry_config "$name" "$port" "$auth" >"$config.new"
  want="$(sha256sum "$config.new" | cut -d' ' -f1)"
  if [ -f "$pidfile" ] && pid_is_registry "$(cat "$pidfile")" &&
    [ "$(cat "$sumfile" 2>/dev/null)" = "$want" ]; then
    rm -f "$config.new"
    log "registry $name already running on 127.0.0.1:$port"
    return
  fi
  stop_registry "$name"
  mv "$config.new" "$config"
  status="$(registry_status "$port")"
  if [ "$status" != 000 ]; then
    die "127.0.0.1:$port is already in use by something else; set SKIPPER_TEST_$( [ "$auth" = 1 ] && echo AUTH_ )REGISTRY_PORT"
  fi
  mkdir -p "$DATA_DIR/$name"
  setsid docker-registry serve "$config" >"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for i in $(seq 100); do
    status="$(registry_status "$port")"
    if [ "$status" = 200 ] || [ "$status" = 401 ]; then
      echo "$want" >"$sumfile"
      log "registry $name listening on 127.0.0.1:$port"
      return
    fi
    pid_is_registry "$(cat "$pidfile")" || break
    sleep 0.1
  done
  tail -n 20 "$logfile" >&2 || true
  die "registry $name did not start on 127.0.0.1:$port (log: $logfile)"
}

start_registries() {
  DATA_DIR=""
  if [ -f "$STATE_DIR/data-dir" ]; then
    DATA_DIR="$(cat "$STATE_DIR/data-dir")"
    [ -d "$DATA_DIR" ] || DATA_DIR=""
  fi
  if [ -z "$DATA_DIR" ]; then
    DATA_DIR="$(mktemp -d "${TMPDIR:-/tmp}/skipper-test-registry.XXXXXX")"
    echo "$DATA_DIR" >"$STATE_DIR/data-dir"
  fi
  if [ ! -s "$DATA_DIR/htpasswd" ]; then
    htpasswd -Bbn "$AUTH_USER" "$AUTH_PASSWORD" >"$DATA_DIR/htpasswd"
  fi
  start_registry open "$OPEN_PORT" 0
  start_registry auth "$AUTH_PORT" 1
}

# Pushes one image and prints its manifest digest.
push() { # image
  local out
  if ! out="$(docker push "$1" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "docker push $1 failed (the engine must treat 127.0.0.0/8 registries as insecure, its default)"
  fi
  printf '%s\n' "$out" | sed -n 's/.*digest: \(sha256:[0-9a-f]\{64\}\).*/\1/p' | tail -n 1
}

logout_auth() { docker logout "127.0.0.1:$AUTH_PORT" >/dev/null 2>&1 || true; }

push_images() {
  local v open auth d
  declare -gA DIGESTS=()
  for v in "${VARIANTS[@]}"; do
    open="127.0.0.1:$OPEN_PORT/$REMOTE_REPO:$v"
    docker tag "$LOCAL_REPO:$v" "$open"
    d="$(push "$open")"
    DIGESTS[$v]="$d"
  done
  trap logout_auth EXIT
  printf '%s' "$AUTH_PASSWORD" |
    docker login -u "$AUTH_USER" --password-stdin "127.0.0.1:$AUTH_PORT" >/dev/null 2>&1 ||
    die "docker login to 127.0.0.1:$AUTH_PORT failed"
  for v in "${VARIANTS[@]}"; do
    auth="127.0.0.1:$AUTH_PORT/$REMOTE_REPO:$v"
    docker tag "$LOCAL_REPO:$v" "$auth"
    push "$auth" >/dev/null
  done
  logout_auth
  trap - EXIT
  # Drop the registry tags again so that pulls in tests really come from the registries; the
  # skipper-test/app:* tags keep the images themselves.
  for v in "${VARIANTS[@]}"; do
    docker rmi "127.0.0.1:$OPEN_PORT/$REMOTE_REPO:$v" "127.0.0.1:$AUTH_PORT/$REMOTE_REPO:$v" \
      >/dev/null 2>&1 || true
  done
  log "pushed to 127.0.0.1:$OPEN_PORT/$REMOTE_REPO and 127.0.0.1:$AUTH_PORT/$REMOTE_REPO"
}

write_env() {
  local tmp="$ENV_FILE.tmp" v
  {
    echo "# Written by scripts/test-env.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ). Source it, or read KEY=value."
    echo "export SKIPPER_TEST_REGISTRY=127.0.0.1:$OPEN_PORT"
    echo "export SKIPPER_TEST_AUTH_REGISTRY=127.0.0.1:$AUTH_PORT"
    echo "export SKIPPER_TEST_AUTH_USER=$AUTH_USER"
    echo "export SKIPPER_TEST_AUTH_PASSWORD=$AUTH_PASSWORD"
    echo "export SKIPPER_TEST_REPOSITORY=$REMOTE_REPO"
    echo "export SKIPPER_TEST_LOCAL_REPOSITORY=$LOCAL_REPO"
    echo "export SKIPPER_TEST_VARIANTS=\"${VARIANTS[*]}\""
    echo "export SKIPPER_TEST_REGISTRY_DATA=$DATA_DIR"
    echo "export SKIPPER_TEST_REGISTRY_NOTIFY_URL=$NOTIFY_URL"
    for v in "${VARIANTS[@]}"; do
      echo "export SKIPPER_TEST_DIGEST_${v^^}=${DIGESTS[$v]}"
    done
    if [ -f "$STATE_DIR/caddy.env" ]; then cat "$STATE_DIR/caddy.env"; fi
    echo "export SKIPPER_TEST_ENV_READY=1"
  } >"$tmp"
  mv "$tmp" "$ENV_FILE"
  log "ready: $ENV_FILE"
}

cmd_start() {
  mkdir -p "$STATE_DIR"
  rm -f "$ENV_FILE"
  install_packages
  check_docker
  build_images
  start_registries
  SKIPPER_TEST_ENV_DIR="$STATE_DIR" "$ROOT/scripts/caddy.sh" start
  push_images
  write_env
}

cmd_stop() {
  SKIPPER_TEST_ENV_DIR="$STATE_DIR" "$ROOT/scripts/caddy.sh" stop
  stop_registry open
  stop_registry auth
  if [ -f "$STATE_DIR/data-dir" ]; then
    DATA_DIR="$(cat "$STATE_DIR/data-dir")"
    case "$DATA_DIR" in
      */skipper-test-registry.*) rm -rf "$DATA_DIR" ;;
    esac
    rm -f "$STATE_DIR/data-dir"
  fi
  rm -f "$ENV_FILE"
  log "registries stopped"
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) if [ -f "$ENV_FILE" ]; then cat "$ENV_FILE"; else die "not started ($ENV_FILE missing)"; fi ;;
  *) die "usage: $0 [start|stop|status]" ;;
esac
