#!/usr/bin/env bash
# The `skipper` container image, built from this checkout: `FROM scratch` with the `skipper`
# binary and exactly the shared libraries it links (and the dynamic loader), nothing else. No
# base image is pulled.
#
#   scripts/image.sh             build the binary (release), then the image skipper:dev
#   scripts/image.sh TAG         the same, tagged TAG
#
# Idempotent: the staging root fs under $CARGO_TARGET_DIR/image is made anew on every run and
# `docker build` replaces the tag. It needs cargo (unless SKIPPER_BIN is set), ldd and a running
# Docker engine.
#
# Environment:
#   SKIPPER_IMAGE_TAG      the image's tag when no TAG argument is given (default skipper:dev)
#   SKIPPER_IMAGE_PROFILE  the cargo profile to build (default release; `dev` builds faster)
#   SKIPPER_BIN            put this binary in the image instead of building one
#   CARGO_TARGET_DIR       cargo's target directory (default <repo>/target)
#
# What the image has: /skipper (debug info stripped when `strip` is installed), its libraries
# at the paths ldd names, /etc/ssl/certs/ca-certificates.crt if the host has it, /tmp and /data.
# It sets SKIPPER_DATA_DIR=/data, HOST=0.0.0.0, PORT=8080 and SKIPPER_IN_CONTAINER=1 (Skipper
# then reaches the apps over their shared Docker network), ENTRYPOINT ["/skipper"],
# CMD ["serve"] and EXPOSE 8080. There is no HEALTHCHECK: the image has no shell or curl to run
# one. deploy/skipper/docker-compose.yml runs it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${1:-${SKIPPER_IMAGE_TAG:-skipper:dev}}"
PROFILE="${SKIPPER_IMAGE_PROFILE:-release}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
STAGE="$TARGET_DIR/image"
ROOTFS="$STAGE/rootfs"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "no docker CLI"
command -v ldd >/dev/null || die "no ldd (Debian: libc-bin)"

# 1. The binary.
if [ -n "${SKIPPER_BIN:-}" ]; then
  BIN="$SKIPPER_BIN"
else
  log "building skipper (profile $PROFILE)"
  (cd "$ROOT" && cargo build --quiet -p skipper-bin --bin skipper --profile "$PROFILE" \
    --target-dir "$TARGET_DIR")
  case "$PROFILE" in
    dev) BIN="$TARGET_DIR/debug/skipper" ;;
    *) BIN="$TARGET_DIR/$PROFILE/skipper" ;;
  esac
fi
[ -x "$BIN" ] || die "no executable at $BIN"

# 2. The root fs: the binary, what it links, certificates, /tmp and /data.
rm -rf "$STAGE"
mkdir -p "$ROOTFS/tmp" "$ROOTFS/data"
chmod 1777 "$ROOTFS/tmp"
cp "$BIN" "$ROOTFS/skipper"
if command -v strip >/dev/null; then
  strip --strip-debug "$ROOTFS/skipper"
fi
# `ldd` lines are `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and, for the loader,
# `/lib64/ld-linux-x86-64.so.2 (0x...)`; linux-vdso has no file. A static binary links nothing.
if libs="$(ldd "$BIN" 2>/dev/null)"; then
  while read -r lib; do
    [ -n "$lib" ] || continue
    [ -e "$lib" ] || die "ldd names $lib, which does not exist"
    # -L: the file itself at the path the binary asks for (most are symlinks).
    cp -L --parents "$lib" "$ROOTFS"
  done < <(printf '%s\n' "$libs" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
else
  log "$BIN links no shared libraries"
fi
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp -L --parents /etc/ssl/certs/ca-certificates.crt "$ROOTFS"
fi

# 3. The image.
cat >"$STAGE/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
ENV SKIPPER_DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8080 \
    SKIPPER_IN_CONTAINER=1
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["/skipper"]
CMD ["serve"]
EOF
revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
log "building image $TAG (revision $revision)"
docker build --quiet --tag "$TAG" \
  --label "org.opencontainers.image.title=skipper" \
  --label "org.opencontainers.image.revision=$revision" \
  "$STAGE" >/dev/null
log "built $TAG ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
