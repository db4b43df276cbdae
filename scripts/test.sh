#!/usr/bin/env bash
# Runs every test: the Rust core's (cargo test) and the Python suite (pytest),
# against redis-servers and Ruby Sidekiq processes the tests start themselves.
# Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/setup.sh"

echo "==> cargo test"
cargo test --quiet

echo "==> pytest"
# pytest exits 5 when no test ran; that is a failure here too.
"$PY" -m pytest "$@"
