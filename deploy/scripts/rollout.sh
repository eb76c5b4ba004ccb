#!/usr/bin/env bash
# A rolling deploy of the compose stack to the image already on this host (pull or load it
# first: nothing is downloaded during the roll). In order, each step gated on health:
#   1. migrate, with the new image, while the old processes run (migrations are additive);
#   2. api-1, then api-2: each is stopped (it reports not ready for ERRANDS_SHUTDOWN_DRAIN_S
#      while still serving, so HAProxy takes it out of the pool before it closes), replaced,
#      and the next waits until the new one is ready and back in the pool;
#   3. worker and sink, one after the other: on SIGTERM they release what they hold.
# COMPOSE is the compose command of the stack (default: docker compose -f deploy/compose.yaml).
set -euo pipefail
read -r -a COMPOSE <<< "${COMPOSE:-docker compose -f deploy/compose.yaml}"
# HAProxy's `rise 2` with `inter 1s` (haproxy.cfg), and a margin.
POOL_SETTLE_S=${POOL_SETTLE_S:-4}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-120}

say() { printf '%s [rollout] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

api_ready() {
    docker exec "$1" python -c 'import os, urllib.request
urllib.request.urlopen("http://127.0.0.1:" + os.environ["ERRANDS_PORT"] + "/readyz", timeout=2)'
}
healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "$1") == healthy ]]; }
export -f api_ready healthy

# gate SERVICE CHECK: wait until CHECK (api_ready or healthy) passes for the service's container.
gate() {
    local id
    id=$("${COMPOSE[@]}" ps -q "$1")
    [[ -n $id ]] || { say "$1 has no container"; return 1; }
    timeout "$READY_TIMEOUT_S" bash -c "until $2 $id > /dev/null 2>&1; do sleep 1; done" \
        || { say "$1 not ready within ${READY_TIMEOUT_S}s"; docker logs --tail 20 "$id" >&2; return 1; }
}

replace() {
    say "replacing $1"
    "${COMPOSE[@]}" up -d --no-deps --no-build --force-recreate "$1" 2> /dev/null
}

say "migrating"
"${COMPOSE[@]}" run --rm --no-deps -T migrate > /dev/null
for api in api-1 api-2; do
    replace "$api"
    gate "$api" api_ready
    sleep "$POOL_SETTLE_S"
done
for background in worker sink; do
    replace "$background"
    gate "$background" healthy
done
say "done"
