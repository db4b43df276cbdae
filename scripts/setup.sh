#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: system packages (when
# missing and running as root), the virtualenv in .venv, and kiq itself: the
# wheel scripts/build_wheel.sh builds (once; skipped when nothing changed),
# installed into .venv, so the tests run exactly what users install.
# Source it; it leaves PY pointing at the venv's python and KIQ_WHEEL at the wheel.
# After editing kiq's Python or Rust code, source it again (a few seconds when
# only Python changed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ "${KIQ_WITH_RUBY:-1}" = "1" ]; then
  command -v sidekiq >/dev/null 2>&1 || need_apt+=(ruby-sidekiq)
  ruby -e 'require "rack"; require "webrick"' >/dev/null 2>&1 || need_apt+=(ruby-rack ruby-webrick)
  ruby -e 'require "active_job"' >/dev/null 2>&1 || need_apt+=(ruby-activejob)
fi
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The dashboard's browser tests drive Debian's Chromium through chromedriver (Selenium).
if [ "${KIQ_WITH_BROWSER:-1}" = "1" ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${need_apt[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: missing ${need_apt[*]}; install them (apt-get install ${need_apt[*]}) or run as root" >&2
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo (the Rust toolchain) is required to build kiq" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
PY="$ROOT/.venv/bin/python"
if ! "$PY" -c 'import maturin, ziglang, auditwheel, pytest, pytest_timeout, hypothesis, redis, croniter, mypy, pytest_benchmark, opentelemetry.sdk, starlette, jinja2, uvicorn, selenium' >/dev/null 2>&1; then
  echo "==> installing Python build and test tools into .venv"
  "$PY" -m pip install -q -U pip
  "$PY" -m pip install -q "maturin>=1.9.4,<2" "ziglang>=0.13" "auditwheel>=6" "pytest>=8" "pytest-timeout>=2.3" \
    "hypothesis>=6" "redis>=5" "croniter>=2" "mypy>=1.10" "pytest-benchmark>=4" "opentelemetry-api>=1.20" \
    "opentelemetry-sdk>=1.20" "starlette>=0.40" "jinja2>=3.1" "uvicorn>=0.30" "selenium>=4.20"
fi

KIQ_WHEEL="$(PY="$PY" "$ROOT/scripts/build_wheel.sh" | tail -1)"
# Left by `maturin develop` in older checkouts: it would shadow nothing, but mislead.
rm -f "$ROOT"/python/kiq/_kiq*.so
sum="$(sha256sum "$KIQ_WHEEL" | cut -d' ' -f1)"
# Reinstalled when the wheel changed, or when something else (`maturin develop`) replaced it.
installed_from_wheel='import kiq, pathlib, sys; sys.exit(pathlib.Path(kiq.__file__).parent.parent.name != "site-packages")'
if [ "$(cat .venv/.kiq-wheel 2>/dev/null)" != "$sum" ] || ! "$PY" -c "$installed_from_wheel" >/dev/null 2>&1; then
  echo "==> installing $(basename "$KIQ_WHEEL") into .venv"
  "$PY" -m pip install -q --no-deps --force-reinstall "$KIQ_WHEEL"
  echo "$sum" > .venv/.kiq-wheel
fi
"$PY" -c 'import kiq' || { echo "error: kiq does not import from the installed wheel" >&2; exit 1; }
export PY KIQ_WHEEL
