#!/usr/bin/env bash
# The `skipper` (or `skippy`) container image, built from this checkout: `FROM scratch` with the
# binary and exactly the shared libraries it links (and the dynamic loader), nothing else. No
# base image is pulled.
#
#   scripts/image.sh             build the binary (release), then the image skipper:dev
#   scripts/image.sh TAG         the same, tagged TAG
#   SKIPPER_IMAGE_BINARY=skippy scripts/image.sh     the agent's image, skippy:dev
#
# Idempotent: the staging root fs under $CARGO_TARGET_DIR/image-<binary> is made anew on every
# run and `docker build` replaces the tag. It needs cargo (unless SKIPPER_BIN is set), ldd and a
# running Docker engine.
#
# Environment:
#   SKIPPER_IMAGE_BINARY   skipper (default) or skippy
#   SKIPPER_IMAGE_TAG      the image's tag when no TAG argument is given (default <binary>:dev)
#   SKIPPER_IMAGE_PROFILE  the cargo profile to build (default release; `dev` builds faster)
#   SKIPPER_BIN            put this binary in the image instead of building one
#   CARGO_TARGET_DIR       cargo's target directory (default <repo>/target)
#
# What the image has: /skipper or /skippy (debug info stripped when `strip` is installed), its
# libraries at the paths ldd names, /etc/ssl/certs/ca-certificates.crt if the host has it, /tmp
# and /data. Both set SKIPPER_IN_CONTAINER=1 (apps are then reached over their shared Docker
# network). skipper's sets SKIPPER_DATA_DIR=/data, HOST=0.0.0.0, PORT=8080, ENTRYPOINT
# ["/skipper"], CMD ["serve"] and EXPOSE 8080; skippy's sets DATA_DIR=/data and ENTRYPOINT
# ["/skippy"]. There is no HEALTHCHECK: the images have no shell or curl to run one.
# deploy/skipper/docker-compose.yml and deploy/skippy/docker-compose.yml run them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BINARY="${SKIPPER_IMAGE_BINARY:-skipper}"
case "$BINARY" in
  skipper | skippy) ;;
  *) printf 'image: error: SKIPPER_IMAGE_BINARY is skipper or skippy, not %s\n' "$BINARY" >&2; exit 1 ;;
esac
TAG="${1:-${SKIPPER_IMAGE_TAG:-$BINARY:dev}}"
PROFILE="${SKIPPER_IMAGE_PROFILE:-release}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
STAGE="$TARGET_DIR/image-$BINARY"
ROOTFS="$STAGE/rootfs"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "no docker CLI"
command -v ldd >/dev/null || die "no ldd (Debian: libc-bin)"

# 1. The binary.
if [ -n "${SKIPPER_BIN:-}" ]; then
  BIN="$SKIPPER_BIN"
else
  log "building $BINARY (profile $PROFILE)"
  (cd "$ROOT" && cargo build --quiet -p skipper-bin --bin "$BINARY" --profile "$PROFILE" \
    --target-dir "$TARGET_DIR")
  case "$PROFILE" in
    dev) BIN="$TARGET_DIR/debug/$BINARY" ;;
    *) BIN="$TARGET_DIR/$PROFILE/$BINARY" ;;
  esac
fi
[ -x "$BIN" ] || die "no executable at $BIN"

# 2. The root fs: the binary, what it links, certificates, /tmp and /data.
rm -rf "$STAGE"
mkdir -p "$ROOTFS/tmp" "$ROOTFS/data"
chmod 1777 "$ROOTFS/tmp"
cp "$BIN" "$ROOTFS/$BINARY"
if command -v strip >/dev/null; then
  strip --strip-debug "$ROOTFS/$BINARY"
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
if [ "$BINARY" = skipper ]; then
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
else
  cat >"$STAGE/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
ENV DATA_DIR=/data \
    SKIPPER_IN_CONTAINER=1
VOLUME /data
ENTRYPOINT ["/skippy"]
EOF
fi
revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
log "building image $TAG (revision $revision)"
docker build --quiet --tag "$TAG" \
  --label "org.opencontainers.image.title=$BINARY" \
  --label "org.opencontainers.image.revision=$revision" \
  "$STAGE" >/dev/null
log "built $TAG ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
