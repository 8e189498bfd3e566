#!/usr/bin/env bash
# Builds, offline, a stand-in for AWS's Lambda Python 3.12 base image
# (public.ecr.aws/lambda/python:3.12) and tags it as `sam local` looks for it, so that
# `sam local invoke` / `start-api --skip-pull-image` run where no container registry can be reached.
#
#   a Debian 12 root filesystem (debootstrap --variant=minbase from deb.debian.org, plus the shared
#   libraries CPython and the manylinux wheels load) with:
#   /var/lang/        the python3.12 `sam build` uses (pyenv's, without its site-packages and tests)
#   /var/runtime/     awslambdaric (the runtime interface client) and boto3, as the managed runtime
#                     ships them, and `bootstrap`, which runs `python3.12 -m awslambdaric $_HANDLER`
#   /var/task, /opt   the function's code and its layers (sam local mounts / adds them)
#   /lambda-entrypoint.sh, and the environment of AWS's image (LAMBDA_TASK_ROOT, PATH, ...)
#
# `sam local` adds its Runtime Interface Emulator (/var/rapid/aws-lambda-rie) and the layers on top
# in an image of its own and starts the emulator as the entry point; the emulator starts
# /var/runtime/bootstrap.
#
# Cached: the image carries a label with a hash of its inputs (this script, the interpreter's
# version, the pins); an image with the same label is kept and nothing is rebuilt. Needs root
# (debootstrap) and a running docker daemon (scripts/sam-local.sh starts one).
#
#   tools/lambda_base_image.sh            build when missing or outdated, print the image name
#   tools/lambda_base_image.sh --check    exit 0 when the image is up to date, 1 when not
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

REPO=public.ecr.aws/lambda/python
TAGS=(3.12 3.12-x86_64)
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
RUNTIME_PINS="awslambdaric==4.2.2 boto3==1.44.8"
# What CPython's extension modules and the dependency layer's wheels (onnxruntime, numpy,
# pillow, grpcio) load besides libc; libstdc++ and libgcc come with minbase.
PACKAGES=libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,zlib1g,libncursesw6,libreadline8,libuuid1,libexpat1,libnsl2,libtirpc3,libcrypt1,ca-certificates,tzdata

die() { echo "lambda base image: $*" >&2; exit 1; }
log() { echo "lambda base image: $*" >&2; }

[ "$(uname -m)" = x86_64 ] || die "only x86_64 is built here (this machine is $(uname -m))"
command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the docker daemon is not running (scripts/sam-local.sh starts it)"

find_py312() {
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}" candidate
    for candidate in "${SAM_PYTHON:-}" "$ROOT/.venv-sam/bin/python3.12" \
        "$(ls -d "$pyenv_root"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V | tail -1 || true)" \
        "$(command -v python3.12 2>/dev/null || true)"; do
        if [ -n "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            # the real interpreter behind a venv or a pyenv shim
            "$candidate" -c 'import sys; print(sys._base_executable)'
            return 0
        fi
    done
    return 1
}
PY312="$(find_py312)" || die "no python3.12 found (pyenv install 3.12, or set SAM_PYTHON)"
PREFIX="$("$PY312" -c 'import sys; print(sys.base_prefix)')"
VERSION="$("$PY312" -c 'import platform; print(platform.python_version())')"
INPUTS="$( (cat "${BASH_SOURCE[0]}"; echo "$VERSION $PREFIX $RUNTIME_PINS $PACKAGES $SUITE") | sha256sum | cut -c1-12)"
IMAGE="$REPO:${TAGS[0]}"

current="$(docker image inspect "$IMAGE" --format '{{ index .Config.Labels "visual-search.lambda-standin" }}' 2>/dev/null || true)"
if [ "$current" = "$INPUTS" ]; then
    [ "${1:-}" = --check ] && exit 0
    echo "$IMAGE"
    exit 0
fi
[ "${1:-}" = --check ] && exit 1
[ "$(id -u)" = 0 ] || die "building the image needs root (debootstrap); run as root"
if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing Debian's debootstrap ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; } \
        || die "could not install debootstrap"
fi

started=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lambda-base.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
FS="$WORK/rootfs"
log "building $IMAGE ($INPUTS): Debian $SUITE root filesystem from $MIRROR (1-3 minutes) ..."
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$FS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
# What a runtime image does not need: package caches and lists, documentation, translations.
rm -rf "$FS"/var/cache/apt/* "$FS"/var/lib/apt/lists/* "$FS"/usr/share/doc/* "$FS"/usr/share/man/* \
    "$FS"/usr/share/locale/* "$FS"/usr/share/info/*

log "python $VERSION from $PREFIX into /var/lang ..."
mkdir -p "$FS/var/lang"
tar -C "$PREFIX" -c \
    --exclude='lib/python3.12/site-packages/*' --exclude='lib/python3.12/test' \
    --exclude='lib/python3.12/idlelib' --exclude='lib/python3.12/tkinter' \
    --exclude='lib/python3.12/turtledemo' --exclude='lib/python3.12/ensurepip' \
    --exclude='lib/python3.12/lib-dynload/_tkinter*' --exclude='lib/python3.12/config-3.12-*' \
    --exclude='*.a' bin lib include \
    | tar -C "$FS/var/lang" -x
ln -sf python3.12 "$FS/var/lang/bin/python3"
ln -sf python3.12 "$FS/var/lang/bin/python"

log "awslambdaric and boto3 into /var/runtime ..."
"$PY312" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-compile \
    --target "$FS/var/runtime" $RUNTIME_PINS >"$WORK/pip.log" 2>&1 \
    || { tail -20 "$WORK/pip.log" >&2; die "pip could not install $RUNTIME_PINS"; }

cat >"$FS/var/runtime/bootstrap" <<'EOF'
#!/bin/sh
# The python3.12 runtime: awslambdaric talks to the Runtime API and calls the handler. Imports
# look in the function (/var/task), then the layers (/opt/python), then the runtime, as in Lambda.
export PYTHONPATH="${LAMBDA_TASK_ROOT}:/opt/python/lib/python3.12/site-packages:/opt/python:${LAMBDA_RUNTIME_DIR}"
exec /var/lang/bin/python3.12 -m awslambdaric "${_HANDLER:-$AWS_LAMBDA_FUNCTION_HANDLER}"
EOF
cat >"$FS/lambda-entrypoint.sh" <<'EOF'
#!/bin/sh
# The entry point, as in AWS's base images: the runtime's bootstrap under the Runtime Interface
# Emulator, unless a Runtime API is already there. `sam local` replaces it with
# /var/rapid/aws-lambda-rie, which starts /var/runtime/bootstrap itself.
if [ $# -ne 1 ]; then
    echo "entrypoint requires the handler name to be the first argument" >&2
    exit 142
fi
export _HANDLER="$1"
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    exec /var/rapid/aws-lambda-rie /var/runtime/bootstrap
fi
exec /var/runtime/bootstrap
EOF
chmod 755 "$FS/var/runtime/bootstrap" "$FS/lambda-entrypoint.sh"
mkdir -p "$FS/var/task" "$FS/opt" "$FS/var/rapid" "$FS/tmp"
chmod 1777 "$FS/tmp"

log "importing into docker ..."
tar -C "$FS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV TZ=:/etc/localtime' \
    --change 'ENV PATH=/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin' \
    --change 'ENV LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib' \
    --change 'ENV LAMBDA_TASK_ROOT=/var/task' \
    --change 'ENV LAMBDA_RUNTIME_DIR=/var/runtime' \
    --change 'WORKDIR /var/task' \
    --change 'ENTRYPOINT ["/lambda-entrypoint.sh"]' \
    --change "LABEL visual-search.lambda-standin=$INPUTS" \
    - "$IMAGE" >/dev/null
for tag in "${TAGS[@]:1}"; do
    docker tag "$IMAGE" "$REPO:$tag"
done
# The check every build ends with: the interpreter starts, finds its libraries and the runtime client.
docker run --rm --network none --entrypoint /var/lang/bin/python3.12 -e PYTHONPATH=/var/runtime "$IMAGE" \
    -c 'import ssl, sqlite3, ctypes, lzma, bz2, awslambdaric, boto3' \
    || die "the image's python3.12 does not start or misses a library"
log "built $IMAGE in $((SECONDS - started)) s ($(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$IMAGE"
