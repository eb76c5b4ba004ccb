# Sourced by the container scripts in this folder. It gives each script the Debian packages it
# needs, a private Docker daemon that lives as long as the script (its own data root, sockets and
# pid file, host networking only), and the base image built with debootstrap from the Debian
# mirror apt already uses, since image registries may be out of reach.
#
# State kept between runs on one machine, so reruns are fast:
#   $ERRANDS_CI_STATE (/var/lib/errands-ci)  the daemon's data root: base image, layers, build cache
#   $ERRANDS_CI_CACHE (/var/cache/errands-ci)  the debootstrap tarball
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${ERRANDS_CI_STATE:-/var/lib/errands-ci}
CACHE=${ERRANDS_CI_CACHE:-/var/cache/errands-ci}
IMAGE=${ERRANDS_IMAGE:-errands:latest}
DOCKER=/usr/bin/docker
export DOCKER_HOST="unix://$STATE/docker.sock"
# The image's FROM line names the base image; ours is imported under that name.
BASE_IMAGE=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$REPO/deploy/Dockerfile" | head -n 1)
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates

say() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "$(basename "$0")" "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

# Cleanup steps run in reverse order on every exit, success or failure.
CLEANUPS=()
on_exit() { CLEANUPS=("$1" "${CLEANUPS[@]}"); }
run_cleanups() {
    local status=$? step
    trap - EXIT INT TERM
    for step in "${CLEANUPS[@]}"; do eval "$step" || say "cleanup step failed: $step"; done
    exit "$status"
}
trap run_cleanups EXIT
trap 'exit 130' INT TERM

# wait_until SECONDS WHAT COMMAND...: poll COMMAND once a second until it succeeds.
wait_until() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" > /dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "$what did not happen within ${seconds}s"
        sleep 1
    done
}

need_packages() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q 'ok installed' \
            || missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return
    say "installing ${missing[*]}"
    local attempt
    for attempt in 1 2 3 4 5 6; do
        # Another apt-get may hold the dpkg lock for a while: wait for it rather than fail.
        if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            -o DPkg::Lock::Timeout=120 --no-install-recommends "${missing[@]}" > /dev/null; then
            return
        fi
        say "apt-get failed (attempt $attempt), retrying in 10s"
        sleep 10
    done
    fail "could not install ${missing[*]}"
}

start_docker() {
    [[ $(id -u) == 0 ]] || fail "the container scripts run as root (they start their own dockerd)"
    need_packages docker.io docker-compose debootstrap curl
    mkdir -p "$STATE" "$CACHE"
    # One run at a time per machine: the daemon and its data root are shared between runs.
    exec 9> "$STATE/lock"
    flock -w 900 9 || fail "another container run held $STATE/lock for 15 minutes"
    stop_docker # a run killed before its cleanup may have left its daemon behind
    say "starting dockerd (data root $STATE/docker)"
    dockerd --data-root "$STATE/docker" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
        -H "$DOCKER_HOST" --bridge=none --iptables=false --ip-masq=false \
        > "$STATE/dockerd.log" 2>&1 &
    on_exit stop_docker
    wait_until 60 "dockerd answering on $DOCKER_HOST" "$DOCKER" info \
        || { tail -n 20 "$STATE/dockerd.log" >&2; exit 1; }
}

stop_docker() {
    [[ -s $STATE/dockerd.pid ]] || return 0
    local pid
    pid=$(cat "$STATE/dockerd.pid")
    if kill -0 "$pid" 2> /dev/null; then
        local running
        running=$("$DOCKER" ps -q 2> /dev/null || true)
        [[ -z $running ]] || "$DOCKER" rm -f $running > /dev/null 2>&1 || true
        kill "$pid"
        local deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2> /dev/null && ((SECONDS < deadline)); do sleep 0.5; done
        kill -0 "$pid" 2> /dev/null && kill -9 "$pid"
    fi
    rm -f "$STATE/dockerd.pid"
}

# The mirror and suite apt uses on this machine (deb822 .sources or a one-line sources.list).
debian_mirror() {
    local uri
    uri=$(grep -h -m 1 -E '^URIs:' /etc/apt/sources.list.d/*.sources 2> /dev/null \
        | awk '{print $2}' | grep -v -- '-security' | head -n 1 || true)
    [[ -n $uri ]] || uri=$(grep -h -E '^deb ' /etc/apt/sources.list 2> /dev/null \
        | awk '{print $2}' | head -n 1 || true)
    [[ -n $uri ]] || fail "no Debian mirror found in /etc/apt/sources.list*"
    echo "$uri"
}

ensure_base_image() {
    if "$DOCKER" image inspect "$BASE_IMAGE" > /dev/null 2>&1; then return; fi
    local mirror suite key tarball
    mirror=$(debian_mirror)
    suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
    # The host's extra CA certificates go into the base image, so HTTPS from a build trusts
    # what the host trusts; they are part of the cache key.
    key=$({ echo "$mirror $suite $BASE_PACKAGES"; cat /usr/local/share/ca-certificates/* 2> /dev/null || true; } \
        | sha256sum | cut -c 1-12)
    tarball=$CACHE/base-$suite-$key.tar
    if [[ ! -s $tarball ]]; then
        say "building the base image with debootstrap ($suite from $mirror)"
        local root
        root=$(mktemp -d "$CACHE/root.XXXXXX")
        on_exit "rm -rf '$root'"
        debootstrap --variant=minbase --include="$BASE_PACKAGES" "$suite" "$root" "$mirror" \
            > "$CACHE/debootstrap.log" 2>&1 || { tail -n 20 "$CACHE/debootstrap.log" >&2; fail "debootstrap"; }
        if compgen -G '/usr/local/share/ca-certificates/*' > /dev/null; then
            cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
            chroot "$root" update-ca-certificates > /dev/null 2>&1
        fi
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -c . > "$tarball.partial"
        mv "$tarball.partial" "$tarball"
    fi
    say "importing $tarball as $BASE_IMAGE"
    "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        "$tarball" "$BASE_IMAGE" > /dev/null
}

# pip inside a build uses the package index the host's pip uses (read from the host's pip
# configuration, never written in a file): printed as --build-arg options.
pip_build_args() {
    local name value
    for name in index-url extra-index-url; do
        value=$(pip3 config get "global.$name" 2> /dev/null || true)
        local variable="PIP_${name^^}"
        variable=${variable//-/_}
        [[ -n ${!variable:-} ]] && value=${!variable}
        # file:// indexes lie on the host's disk, out of a build's reach.
        value=$(tr ' ' '\n' <<< "$value" | grep -v '^file:' | tr '\n' ' ' | sed 's/ *$//')
        [[ -n $value ]] && printf -- '--build-arg\n%s=%s\n' "$variable" "$value"
    done
    return 0
}

# build_image TAG DOCKERFILE [TARGET]: build from the repository's sources, with host networking.
build_image() {
    local tag=$1 dockerfile=$2 target=${3:-} args
    mapfile -t args < <(pip_build_args)
    [[ -n $target ]] && args+=(--target "$target")
    say "building $tag${target:+ ($target)}"
    # Only the files an image needs go into the build context, so no .venv or .git is sent.
    tar -C "$REPO" -c pyproject.toml constraints.txt README.md src deploy \
        | DOCKER_BUILDKIT=0 "$DOCKER" build --quiet --network host -f "$dockerfile" \
            "${args[@]}" -t "$tag" - > /dev/null
}

# The compose stack of deploy/compose.yaml with the host-network test override
# (deploy/test/compose.yaml): stand-in images, every port on 127.0.0.1.
STACK_PROJECT=errands-stack-test
STACK_SERVICES=(postgres kafka migrate api-1 api-2 worker sink lb prometheus)
STACK_PORTS=(18400 18401 18402 18405 18411 18412 18432 18490 18492)
LB=http://127.0.0.1:18400
# Grafana is not started (it has no stand-in), but compose reads its settings all the same.
export GRAFANA_ADMIN_PASSWORD=${GRAFANA_ADMIN_PASSWORD:-not-started}

STACK_FILE=$STATE/stack.yaml
COMPOSE=(docker-compose --ansi never -p "$STACK_PROJECT" -f "$STACK_FILE")

# Docker refuses published ports with host networking, and an override cannot remove the ports
# compose.yaml lists: the stack runs from the two files merged, without them.
write_stack_file() {
    docker-compose -f "$REPO/deploy/compose.yaml" -f "$REPO/deploy/test/compose.yaml" config \
        | "$REPO/.venv/bin/python" -c '
import sys, yaml
merged = yaml.safe_load(sys.stdin)
for service in merged["services"].values():
    service.pop("ports", None)
yaml.safe_dump(merged, sys.stdout)' > "$STACK_FILE"
}

port_is_free() { ! (: < "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

build_stack_images() {
    build_image "$IMAGE" deploy/Dockerfile
    local standin
    for standin in postgres tansu haproxy prometheus; do
        build_image "errands-test/$standin" deploy/test/Dockerfile "$standin"
    done
}

stop_stack() {
    ((status == 0)) || { "${COMPOSE[@]}" ps; "${COMPOSE[@]}" logs --no-color --tail 20; } >&2 || true
    timeout 120 "${COMPOSE[@]}" down -v --remove-orphans -t 30 > /dev/null 2>&1
}

# start_stack: every service up and healthy; BOOTSTRAP_KEY is the key made at first start.
start_stack() {
    [[ -x $REPO/.venv/bin/python ]] || fail "no .venv: run make stack-test, which makes it first"
    write_stack_file
    # A run killed before its cleanup leaves containers the daemon restarts: remove them first.
    "${COMPOSE[@]}" down -v --remove-orphans > /dev/null 2>&1 || true
    local port
    for port in "${STACK_PORTS[@]}"; do
        port_is_free "$port" || fail "127.0.0.1:$port is in use; the test stack needs it"
    done
    on_exit stop_stack
    say "starting the stack: ${STACK_SERVICES[*]}"
    timeout 300 "${COMPOSE[@]}" up -d --no-build "${STACK_SERVICES[@]}" > "$STATE/compose-up.log" 2>&1 \
        || { tail -n 20 "$STATE/compose-up.log" >&2; fail "docker-compose up"; }
    local service
    for service in api-1 api-2 worker sink; do
        wait_until 120 "$service healthy" is_healthy "$service"
    done
    wait_until 30 "the load balancer ready" curl -sf --max-time 2 "$LB/readyz"
    BOOTSTRAP_KEY=$("${COMPOSE[@]}" logs --no-color migrate | grep -o 'errands_[A-Za-z0-9_-]*' | head -n 1)
    [[ -n $BOOTSTRAP_KEY ]] || fail "migrate printed no bootstrap key"
}

container_of() { "${COMPOSE[@]}" ps -q "$1"; }
is_healthy() { [[ $("$DOCKER" inspect -f '{{.State.Health.Status}}' "$(container_of "$1")") == healthy ]]; }
