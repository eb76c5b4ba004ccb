#!/usr/bin/env bash
# `make image`: build the Errands image (errands:latest) in the private Docker daemon.
source "$(dirname "$0")/lib.sh"
start_docker
ensure_base_image
build_image "$IMAGE" deploy/Dockerfile
say "built $IMAGE"
