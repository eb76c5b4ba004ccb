#!/usr/bin/env bash
# `make image-test`: build the image, run it as a single `errands serve` container (embedded
# PostgreSQL, read-only root file system) and check what a user relies on: the HEALTHCHECK turns
# healthy, /healthz and /readyz answer 200, the process is not root, and SIGTERM stops it with
# status 0. Everything it starts (container, volume, daemon) is removed at the end.
source "$(dirname "$0")/lib.sh"
CONTAINER=errands-image-test

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
status_of() { "$DOCKER" inspect -f "$1" "$CONTAINER"; }
is_healthy() { [[ $(status_of '{{.State.Health.Status}}') == healthy ]]; }
is_stopped() { [[ $(status_of '{{.State.Running}}') == false ]]; }

start_docker
ensure_base_image
build_image "$IMAGE" deploy/Dockerfile

port=$(free_port)
say "starting $IMAGE (errands serve on 127.0.0.1:$port)"
"$DOCKER" rm -f -v "$CONTAINER" > /dev/null 2>&1 || true
on_exit "'$DOCKER' rm -f -v '$CONTAINER' > /dev/null 2>&1"
"$DOCKER" run -d --name "$CONTAINER" --network host --read-only --tmpfs /tmp \
    --mount type=volume,target=/var/lib/errands \
    -e ERRANDS_HOST=127.0.0.1 -e ERRANDS_PORT="$port" "$IMAGE" serve > /dev/null
on_exit "((status == 0)) || '$DOCKER' logs --tail 30 '$CONTAINER' >&2"

wait_until 120 "the HEALTHCHECK reporting healthy" is_healthy
for path in /healthz /readyz; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port$path")
    [[ $code == 200 ]] || fail "GET $path answered $code, not 200"
done
uid=$("$DOCKER" exec "$CONTAINER" id -u)
[[ $uid != 0 ]] || fail "the container runs as root"

say "healthy, /healthz and /readyz 200, uid $uid; sending SIGTERM"
"$DOCKER" kill --signal TERM "$CONTAINER" > /dev/null
wait_until 40 "the container stopping after SIGTERM" is_stopped
code=$(status_of '{{.State.ExitCode}}')
[[ $code == 0 ]] || fail "exit status after SIGTERM was $code, not 0"
say "passed: healthy, /healthz and /readyz 200, non-root (uid $uid), SIGTERM exit 0"
