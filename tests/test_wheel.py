"""The wheel users install: one abi3 manylinux2014 wheel that installs and runs
a real job on every CPython from 3.11 on, with no Rust toolchain in sight.

scripts/setup.sh builds the wheel once (scripts/build_wheel.sh) and installs that
same file into .venv, which the rest of the suite runs against. Here it goes into
fresh virtualenvs of each CPython pyenv has (``~/.pyenv/versions/3.X.*``),
created without pip and filled by this interpreter's pip (``--python``), from the
wheel file only (``--no-index``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import redis

from support import RedisServer

ROOT = Path(__file__).parent.parent
VERSIONS = ("3.11", "3.12", "3.13")

JOB_SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from kiq import Kiq, Worker, current_job

out = Path(sys.argv[2])
seen = []

class Touch(Worker, name="WheelTouch"):
    def perform(self, word: str) -> None:
        out.write_text(f"{self.jid} {word} {sys.version_info[0]}.{sys.version_info[1]}")

# Async jobs (started eagerly on 3.12+): one done before any wait, one after
# waits; each sees its own job and runs as an asyncio task, and a task it
# creates does not start before the job's next wait (asyncio's default order).
class Later(Worker, name="WheelAsync"):
    async def perform(self, word: str, waits: int) -> None:
        started: list[int] = []

        async def inner() -> None:
            started.append(1)

        task = asyncio.create_task(inner())
        lazy = not started
        await task
        for _ in range(waits):
            await asyncio.sleep(0.001)
        job = current_job()
        seen.append((word, job is not None and job.jid == self.jid, asyncio.current_task() is not None, lazy))

app = Kiq(sys.argv[1], workers=[Touch, Later], shutdown_timeout=5)
jid = app.enqueue(Touch.new("ran"))
for i in range(20):
    app.enqueue(Later.new(f"a{i}", i % 3))
app.flush(10)
with app:
    deadline = time.monotonic() + 30
    while not (out.exists() and len(seen) == 20) and time.monotonic() < deadline:
        time.sleep(0.02)
assert sorted(seen) == sorted((f"a{i}", True, True, True) for i in range(20)), seen
print(jid)
"""


def the_wheel() -> Path:
    """The wheel setup.sh built and installed ($KIQ_WHEEL, else the one in dist/)."""
    given = os.environ.get("KIQ_WHEEL")
    if given:
        return Path(given)
    found = sorted(glob.glob(str(ROOT / "dist" / "kiq-*-abi3-manylinux2014_x86_64*.whl")))
    if len(found) != 1:
        pytest.fail(f"expected one wheel in dist/ (built by scripts/build_wheel.sh), found {found}")
    return Path(found[0])


def pythons() -> dict[str, Path]:
    """The newest pyenv CPython of each wanted minor version that is present."""
    found: dict[str, Path] = {}
    base = Path.home() / ".pyenv" / "versions"
    for minor in VERSIONS:
        candidates = sorted(base.glob(f"{minor}.*/bin/python{minor}"), key=lambda p: [
            int(x) if x.isdigit() else 0 for x in p.parent.parent.name.split(".")])
        if candidates:
            found[minor] = candidates[-1]
    return found


def no_rust_env(venv: Path) -> dict[str, str]:
    """The environment of a machine without Rust: the venv and the system's bin directories only."""
    path = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    for tool in ("cargo", "rustc", "maturin"):
        assert shutil.which(tool, path=path) is None, f"{tool} is on {path}"
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {**keep, "PATH": path, "VIRTUAL_ENV": str(venv)}


def test_the_wheel_is_abi3_and_manylinux2014() -> None:
    wheel = the_wheel()
    assert wheel.name.endswith("-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"), wheel.name
    out = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert 'consistent with the following platform tag: "manylinux_2_17_x86_64"' in text, out.stdout
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "kiq/_kiq.abi3.so" in names and "kiq/_kiq.pyi" in names and "kiq/py.typed" in names
        assert z.getinfo("kiq/_kiq.abi3.so").file_size < 8 << 20  # stripped (24 MB with line tables)


def test_the_suite_runs_the_installed_wheel() -> None:
    """The kiq these tests import is that wheel's files, not the source tree."""
    import kiq
    from kiq import _kiq

    assert Path(kiq.__file__).parent.parent.name == "site-packages", kiq.__file__
    with zipfile.ZipFile(the_wheel()) as z:
        built = hashlib.sha256(z.read("kiq/_kiq.abi3.so")).hexdigest()
    assert hashlib.sha256(Path(_kiq.__file__).read_bytes()).hexdigest() == built


def test_some_python_is_there_to_try() -> None:
    assert pythons(), f"none of CPython {', '.join(VERSIONS)} is in ~/.pyenv/versions"


@pytest.mark.parametrize("minor", VERSIONS)
def test_wheel_installs_and_runs_a_job(minor: str, tmp_path: Path, redis_server: RedisServer,
                                       r: redis.Redis) -> None:
    python = pythons().get(minor)
    if python is None:
        pytest.skip(f"CPython {minor} is not in ~/.pyenv/versions")
    venv = tmp_path / "venv"
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(venv)], check=True)
    env = no_rust_env(venv)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-index",
         "--no-deps", "--only-binary", ":all:", str(the_wheel())],
        check=True, env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )

    version = subprocess.run([str(venv / "bin" / "kiq"), "--version"], capture_output=True, text=True, env=env,
                             cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    lines = version.stdout.splitlines()
    assert lines[0].startswith("kiq 0.") and str(venv) in lines[0], version.stdout
    assert lines[1].startswith("core: rustc ") and "release" in lines[1] and "_kiq.abi3.so" in lines[1]
    assert lines[2].startswith(f"python: CPython {minor}."), version.stdout

    out = tmp_path / "ran.txt"
    (tmp_path / "job.py").write_text(JOB_SCRIPT)
    run = subprocess.run([str(venv / "bin" / "python"), "job.py", redis_server.url, str(out)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=90)
    assert run.returncode == 0, run.stderr
    jid = run.stdout.strip()
    assert out.read_text() == f"{jid} ran {minor}"
    assert r.get("stat:processed") == "21"
