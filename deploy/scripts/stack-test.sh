#!/usr/bin/env bash
# `make stack-test`: the compose stack started for real (deploy/compose.yaml with the host-network
# test override deploy/test/compose.yaml), then checked by tests/test_stack.py: API keys on with
# the bootstrap key, a monitor's checks through Kafka into PostgreSQL and back through HAProxy,
# both API processes in the pool, Prometheus scraping every target. Then tests/test_rollout.py
# rolls it to a new image under load (deploy/scripts/rollout.sh). All removed at the end.
source "$(dirname "$0")/lib.sh"
SITE_PORT=18480

start_docker
ensure_base_image
build_stack_images

# The site the monitor checks, on the host's loopback.
site=$(mktemp -d)
on_exit "rm -rf '$site'"
echo '<!doctype html><title>Stack test</title><p>errands stack test page</p>' > "$site/index.html"
port_is_free "$SITE_PORT" || fail "127.0.0.1:$SITE_PORT is in use; the test site needs it"
python3 -m http.server "$SITE_PORT" --bind 127.0.0.1 --directory "$site" > /dev/null 2>&1 &
on_exit "kill $!"

start_stack
export ERRANDS_TEST_STACK_KEY=$BOOTSTRAP_KEY
say "stack up and healthy; running tests/test_stack.py"
"$REPO/.venv/bin/pytest" -p no:cacheprovider -q "$REPO/tests/test_stack.py"

# A new release: the same build under a new label, so every container is replaced by another image.
printf 'FROM %s\nLABEL org.opencontainers.image.revision=rollout-test-%s\n' "$IMAGE" "$(date +%s)" \
    | DOCKER_BUILDKIT=0 "$DOCKER" build --quiet -t "$IMAGE" - > /dev/null
say "rolling deploy under load: tests/test_rollout.py"
ERRANDS_TEST_STACK_COMPOSE="${COMPOSE[*]}" PATH="$(dirname "$DOCKER"):$PATH" \
    "$REPO/.venv/bin/pytest" -p no:cacheprovider -q -s "$REPO/tests/test_rollout.py"
