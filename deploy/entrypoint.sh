#!/bin/sh
# The container's entrypoint, and what CI runs here in its place (tests/test_deploy.py): migrate, then serve.
#
# `companion db upgrade` takes PostgreSQL's advisory lock around the upgrade, so
# several containers starting at once migrate once (the others wait, then find
# nothing to do); `companion run` then checks the schema again (a no-op) and serves.
set -eu
companion db upgrade
exec companion run --host "${COMPANION_SERVER__HOST:-0.0.0.0}" --workers "${COMPANION_WORKERS:-1}" "$@"
