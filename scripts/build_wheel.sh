#!/usr/bin/env bash
# Builds the wheel users install, into dist/: one abi3 wheel (CPython 3.11 and
# later), tagged manylinux2014 (glibc 2.17 and later: Ubuntu 18.04+, RHEL/Alma 8+,
# Amazon Linux 2, Debian 10+), stripped. zig (the `ziglang` package from PyPI)
# links it against glibc 2.17's symbols, so no manylinux container is needed.
# With --sdist, the source distribution too.
#
# zig links its own unwinder into the extension, not libgcc_s: so no Python
# thread may be inside the core when the interpreter finalizes (glibc's
# pthread_exit would unwind it with libgcc's unwinder and crash). kiq joins its
# threads before that (see corelog.py and Kiq.stop); tests/test_stop.py checks.
#
# Skips the build when dist/ holds a wheel built from the same sources and
# toolchain. Needs cargo; uses $PY (default .venv/bin/python) for maturin and
# ziglang, installing them there when missing. Prints the wheel's path last.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || { echo "error: no Python at $PY (run scripts/setup.sh, or set PY)" >&2; exit 1; }
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo (the Rust toolchain) is required to build kiq" >&2; exit 1; }
if ! "$PY" -c 'import maturin, ziglang' >/dev/null 2>&1; then
  echo "==> installing maturin and ziglang" >&2
  "$PY" -m pip install -q "maturin>=1.9.4,<2" "ziglang>=0.13"
fi
# maturin looks for zig as `python3 -m ziglang` on PATH.
export PATH="$(dirname "$PY"):$PATH"

# Everything the wheel is built from, and the tools that build it.
stamp="$(
  {
    find Cargo.toml Cargo.lock build.rs pyproject.toml README.md LICENSE rust python -type f \
      ! -name '*.so' ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
    rustc --version
    "$PY" -m maturin --version
  } | sha256sum | cut -d' ' -f1
)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
wheel="dist/kiq-${version}-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"

if [ -f "$wheel" ] && [ "$(cat dist/.stamp 2>/dev/null)" = "$stamp" ]; then
  echo "==> wheel up to date: $wheel" >&2
else
  echo "==> building the wheel (release, abi3, manylinux2014, zig)" >&2
  rm -f dist/kiq-*.whl dist/.stamp
  "$PY" -m maturin build --release --strip --zig --compatibility manylinux2014 --out dist --quiet >&2
  [ -f "$wheel" ] || { echo "error: maturin did not write $wheel" >&2; ls dist >&2; exit 1; }
  echo "$stamp" > dist/.stamp
fi
if [ "${1:-}" = "--sdist" ]; then
  "$PY" -m maturin sdist --out dist >&2
fi
echo "$ROOT/$wheel"
