"""The hand-written stubs match the compiled module, and the package type-checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_stubtest_native_module() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy.stubtest", "kiq._kiq"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_package_passes_mypy_strict() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "python/kiq"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_examples_pass_mypy_strict() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "examples"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_worker_keeps_the_functions_signature_for_type_checkers(tmp_path: Path) -> None:
    (tmp_path / "typed_jobs.py").write_text(
        "from kiq import worker\n"
        "@worker(queue='q')\n"
        "def hard(name: str, count: int) -> int:\n"
        "    return count\n"
        "total: int = hard('bob', 5)\n"
        "hard.new('bob', 5)\n"
        "hard('bob', 'five')\n"       # line 7: wrong type
        "hard.new('bob')\n"           # line 8: missing argument
    )
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(tmp_path / "typed_jobs.py")],
                         capture_output=True, text=True, cwd=ROOT)
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["7", "8"], out.stdout


def test_class_workers_and_the_verbs_are_typed_from_perform(tmp_path: Path) -> None:
    (tmp_path / "typed_verbs.py").write_text(
        "import datetime as dt\n"
        "from kiq import Enqueued, Job, Worker, worker\n"
        "class Hard(Worker):\n"
        "    def perform(self, name: str, count: int) -> None: ...\n"
        "@worker\n"
        "def ping(n: int) -> None: ...\n"
        "job: Job = Hard.new('bob', 5)\n"
        "jid: Enqueued = Hard.perform_async('bob', 5)\n"
        "Hard.perform_in(5, 'bob', 5); Hard.perform_at(dt.datetime.now(), 'bob', 5)\n"
        "Hard.set(queue='q').perform_async('bob', 5); ping.set(queue='q').perform_in(1.5, 1)\n"
        "Hard.new('only-one')\n"                      # line 11: missing argument
        "Hard.perform_async('bob', 'five')\n"         # line 12: wrong type
        "Hard.set(queue='q').perform_at(0.0, 1, 2)\n"  # line 13: wrong type
        "ping.perform_async('x')\n"                   # line 14: wrong type
    )
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(tmp_path / "typed_verbs.py")],
                         capture_output=True, text=True, cwd=ROOT)
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["11", "12", "13", "14"], out.stdout


def test_the_readmes_python_examples_that_stand_alone_pass_mypy_strict(tmp_path: Path) -> None:
    """Code blocks of README.md that define what they use (the cancel example, say) type-check."""
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    standalone = [b for b in blocks if "raise_if_cancelled" in b]
    assert standalone, "the cancel example is in the README"
    for i, block in enumerate(standalone):
        (tmp_path / f"readme_{i}.py").write_text(block)
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stdout
