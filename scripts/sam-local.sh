#!/usr/bin/env bash
# `sam local ARGS...` on this checkout, where no container registry can be reached:
#
#   scripts/sam-local.sh invoke SearchFunction -e events/api-health.json
#   scripts/sam-local.sh start-api --port 3000
#   scripts/sam-local.sh start-docker | stop-docker     only start / stop the docker daemon
#   scripts/sam-local.sh image     only build the image (stopping a daemon it had to start)
#
# 1. the deployment tools (.venv-sam/, tools/install_deploy_tools.sh), Debian's docker.io when
#    docker is missing (apt-get, as root), and a docker daemon: when none answers, one is started
#    as root with `dockerd --bridge=none --iptables=false` (no bridge network, no iptables rules:
#    containers run on the host network and every connection stays on 127.0.0.1). It is left
#    running for the next call; `scripts/sam-local.sh stop-docker` stops it.
# 2. the offline stand-in of AWS's Lambda Python 3.12 image (tools/lambda_base_image.sh), built
#    once and rebuilt only when its inputs change;
# 3. `sam build` into .aws-sam/build ($SAM_LOCAL_BUILD_DIR) when the template, functions/, src/
#    or layers/ changed (SAM_LOCAL_NO_BUILD=1: use that folder as it is);
# 4. `sam local ARGS --skip-pull-image --docker-network host` on the built template, through
#    tools/sam_host_network.py (so that the function containers really get the host network).
#
# `sam local --env-vars` sets only variables the template declares; SAM_LOCAL_CONTAINER_ENV=FILE
# (a JSON object) adds others to every function container, e.g. AWS_ENDPOINT_URL_S3 for a local
# S3 server. Without --env-vars, the functions get scripts/sam-local-env.json (Qdrant on
# 127.0.0.1:6333, no SSM key): pass your own to point them at your Qdrant, bucket, ...
#
# With Docker and network access (a developer's machine), SAM_LOCAL_IMAGE=aws uses AWS's real
# image instead: `sam local ARGS` without the stand-in and the host network (SAM pulls
# public.ecr.aws/lambda/python:3.12 itself; the daemon's own network); see docs/deploy.md#sam-local.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BUILD_DIR="${SAM_LOCAL_BUILD_DIR:-$ROOT/.aws-sam/build}"
IMAGE_MODE="${SAM_LOCAL_IMAGE:-standin}"
DOCKERD_PIDFILE="${SAM_LOCAL_DOCKERD_PIDFILE:-/var/run/visual-search-dockerd.pid}"
DOCKERD_LOG="${SAM_LOCAL_DOCKERD_LOG:-/var/log/visual-search-dockerd.log}"

say() { echo "sam-local: $*" >&2; }
die() { echo "sam-local: error: $*" >&2; exit 1; }

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

ensure_docker_installed() {
    command -v docker >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
        || die "docker is not installed (install Debian's docker.io, or Docker, first)"
    say "installing Debian's docker.io ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q docker.io >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker.io >/dev/null 2>&1; } \
        || die "could not install docker.io with apt-get"
}

start_docker() {
    ensure_docker_installed
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "no docker daemon answers, and starting one needs root"
    say "starting dockerd --bridge=none --iptables=false (log: $DOCKERD_LOG; stop: $0 stop-docker) ..."
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # setsid: the daemon outlives this script and is not killed with its process group.
    setsid dockerd --bridge=none --iptables=false --ip-masq=false --pidfile "$DOCKERD_PIDFILE" \
        >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local waited=0
    until docker info >/dev/null 2>&1; do
        sleep 0.5
        waited=$((waited + 1))
        if [ "$waited" -ge 60 ]; then
            tail -20 "$DOCKERD_LOG" >&2
            die "dockerd did not answer within 30 s"
        fi
    done
}

stop_docker() {
    if [ ! -s "$DOCKERD_PIDFILE" ]; then
        say "no dockerd started by this script is running"
        return 0
    fi
    local pid
    pid="$(cat "$DOCKERD_PIDFILE")"
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$DOCKERD_PIDFILE"
        return 0
    fi
    say "stopping dockerd ($pid) ..."
    kill "$pid"
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    die "dockerd ($pid) did not stop within 30 s"
}

# `sam build` only when its inputs changed since the last build into $BUILD_DIR.
build_if_needed() {
    local stamp="$BUILD_DIR/.inputs" inputs
    if [ "${SAM_LOCAL_NO_BUILD:-0}" = 1 ]; then
        [ -f "$BUILD_DIR/template.yaml" ] || die "SAM_LOCAL_NO_BUILD=1, but $BUILD_DIR holds no build"
        return 0
    fi
    inputs="$(find template.yaml functions src layers -type f \
        ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -printf '%p %s %T@\n' \
        | sort | sha256sum | cut -c1-16)"
    if [ -f "$BUILD_DIR/template.yaml" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
        return 0
    fi
    say "sam build into $BUILD_DIR ..."
    "$SAM" build --template-file template.yaml --build-dir "$BUILD_DIR" >&2 \
        || die "sam build failed"
    echo "$inputs" >"$stamp"
}

[ $# -ge 1 ] || usage
case "$1" in
    -h | --help) usage ;;
    start-docker) start_docker; exit 0 ;;
    stop-docker) stop_docker; exit 0 ;;
    image)
        docker info >/dev/null 2>&1 && running=1 || running=0
        start_docker
        status=0
        bash tools/lambda_base_image.sh >/dev/null || status=$?
        [ "$running" = 1 ] || stop_docker
        exit "$status"
        ;;
esac

bash tools/install_deploy_tools.sh
SAM="$ROOT/.venv-sam/bin/sam"
PY312="$(ls "$ROOT"/.venv-sam/bin/python3.12 2>/dev/null || true)"
[ -x "$SAM" ] || die "aws-sam-cli is missing from .venv-sam/ (bash tools/install_deploy_tools.sh)"
[ -n "$PY312" ] || die "sam build needs a python3.12 (pyenv install 3.12, or set SAM_PYTHON)"
export SAM_CLI_TELEMETRY=0
# `sam build` runs the python3.12 of .venv-sam
export PATH="$ROOT/.venv-sam/bin:$PATH"

subcommand="$1"
shift
case "$subcommand" in
    invoke | start-api | start-lambda) ;;
    *) exec "$SAM" local "$subcommand" "$@" ;; # generate-event, callback, ...: no docker needed
esac

extra=(--template-file "$BUILD_DIR/template.yaml")
case " $* " in
    *" --env-vars "* | *" -n "*) ;;
    *) extra+=(--env-vars "$ROOT/scripts/sam-local-env.json") ;;
esac
case " $* " in
    *" --parameter-overrides "*) ;;
    *) extra+=(--parameter-overrides "QdrantUrl=http://127.0.0.1:6333") ;;
esac

case "$IMAGE_MODE" in
    aws)
        # AWS's image, pulled by SAM, on the daemon's own network (the launcher only adds
        # SAM_LOCAL_CONTAINER_ENV's variables here).
        docker info >/dev/null 2>&1 || die "no docker daemon answers (start Docker first)"
        build_if_needed
        exec "$ROOT/.venv-sam/bin/python" tools/sam_host_network.py local "$subcommand" "${extra[@]}" "$@"
        ;;
    standin)
        start_docker
        bash tools/lambda_base_image.sh >/dev/null
        # Each `sam local` rebuilds its image of the stand-in plus the layers under the same tag: drop
        # the untagged ones left behind (they carry the stand-in's label; images in use are kept).
        docker image prune -f --filter label=visual-search.lambda-standin >/dev/null \
            || say "could not remove unused images of earlier runs"
        build_if_needed
        exec "$ROOT/.venv-sam/bin/python" tools/sam_host_network.py local "$subcommand" "${extra[@]}" \
            --skip-pull-image --docker-network host --container-host 127.0.0.1 \
            --container-host-interface 127.0.0.1 "$@"
        ;;
    *) die "SAM_LOCAL_IMAGE must be standin (default) or aws, not $IMAGE_MODE" ;;
esac
