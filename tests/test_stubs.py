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
