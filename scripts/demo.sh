#!/usr/bin/env bash
# Runs the demo: a kiq worker processing 100,000 jobs against Redis, with a
# progress bar and the enqueue and processing rates. Uses $REDIS_URL when set,
# else a throwaway local redis-server on a free port.
set -euo pipefail
KIQ_WITH_RUBY=0 . "$(dirname "$0")/setup.sh"
exec "$PY" -m kiq.demo "$@"
