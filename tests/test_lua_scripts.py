"""Every Lua script names every key it touches in KEYS (never a key built
inside the script), so kiq runs behind proxies that route by key and on
Redis-compatible servers that require it; and each file's header lists its
KEYS and ARGV. A static check of the scripts' source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

HERE = Path(__file__).parent.parent / "rust" / "src" / "scripts"
SCRIPTS = sorted(HERE.glob("*.lua"))
#: Files prepended to scripts (scripts/mod.rs concat!s them): checked as part of each script that uses them.
LIBRARIES = {"batch_lib.lua", "dead_lib.lua"}


def loaded(path: Path) -> str:
    """A script's text as Redis runs it: with the libraries scripts/mod.rs puts in front."""
    mod = (HERE / "mod.rs").read_text()
    front = re.search(r'concat!\(((?:\s*include_str!\("[\w.]+"\),)+)\s*include_str!\("' + re.escape(path.name) + '"', mod)
    libs = re.findall(r'include_str!\("([\w.]+)"\)', front.group(1)) if front else []
    assert set(libs) <= LIBRARIES, f"{path.name}: unknown libraries {libs}"
    return "\n".join([*((HERE / lib).read_text() for lib in libs), path.read_text()])
CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z]+)'\s*,\s*([^,)]+)")
ASSIGN = re.compile(r"\b(?:local\s+)?(\w+)\s*=\s*KEYS\[")  # also a table field: `{h = KEYS[i]}`
ASSIGN_LIST = re.compile(r"^\s*(?:local\s+)?(\w+(?:\s*,\s*\w+)*)\s*=\s*(.+)$", re.M)
KEY_EXPR = re.compile(r"(?:.*\band\s+)?KEYS\[[^\]]*\]")  # `KEYS[i]`, or `cond and KEYS[i]` (a key or false)
ASSIGN_INDEXED = re.compile(r"\b(\w+)\[(?:[^\[\]]|\[[^\]]*\])*\]\s*=\s*KEYS\[")  # a table of keys: t[name] = KEYS[i]
FUNC = re.compile(r"local function (\w+)\(([^)]*)\)")


def key_like(source: str) -> set[str]:
    """Names that only ever hold a key from KEYS: locals assigned from it, and
    parameters of local functions whose every call passes such a key."""
    lists = [m for m in ASSIGN_LIST.finditer(source) if "," in m.group(1)]
    in_list = lambda pos: any(m.start(1) <= pos < m.end(1) for m in lists)  # noqa: E731
    names = {m.group(1) for m in ASSIGN.finditer(source) if not in_list(m.start(1))}
    names |= {f"{t}[]" for t in ASSIGN_INDEXED.findall(source)}
    for m in ASSIGN_LIST.finditer(source):
        # `local a, b = KEYS[1], ARGV[1]`: pair each name with its value.
        for name, value in zip((t.strip() for t in m.group(1).split(",")), split_top(m.group(2))):
            if KEY_EXPR.fullmatch(value.strip()):
                names.add(name)
    funcs = {name: [p.strip() for p in params.split(",") if p.strip()] for name, params in FUNC.findall(source)}
    changed = True
    while changed:
        changed = False
        for func, params in funcs.items():
            for i, param in enumerate(params):
                if param in names:
                    continue
                calls = [c for c in re.finditer(rf"\b{func}\(([^)]*)\)", source)
                         if not source[max(0, c.start() - 15):c.start()].endswith("function ")]
                args = [[a.strip() for a in c.group(1).split(",")] for c in calls]
                if args and all(len(a) > i and is_key(a[i], names) for a in args):
                    names.add(param)
                    changed = True
    return names


def split_top(values: str) -> list[str]:
    """Split an expression list at its top-level commas."""
    parts, depth, cur = [], 0, ""
    for ch in values:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def is_key(expr: str, names: set[str]) -> bool:
    # A field of a table built from KEYS (`{h = KEYS[i]}`) is named by its last part: `lv.h`.
    indexed = re.fullmatch(r"(\w+)\[[^\]]*\]", expr)
    return (expr.startswith("KEYS[") or expr in names or expr.rsplit(".", 1)[-1] in names
            or (indexed is not None and f"{indexed.group(1)}[]" in names))


def undeclared(source: str) -> list[str]:
    names = key_like(source)
    return [f"{cmd} {arg.strip()}" for cmd, arg in CALL.findall(source) if not is_key(arg.strip(), names)]


@pytest.mark.parametrize("path", [p for p in SCRIPTS if p.name not in LIBRARIES], ids=lambda p: p.name)
def test_every_key_comes_from_keys(path: Path) -> None:
    source = "\n".join(line for line in loaded(path).splitlines() if not line.lstrip().startswith("--"))
    assert CALL.search(source), f"{path.name} calls no command?"
    assert undeclared(source) == [], f"{path.name} touches keys not passed in KEYS"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_the_header_names_keys_and_argv(path: Path) -> None:
    text = path.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
    for n in sorted(set(re.findall(r"KEYS\[(\d+)\]", text))):
        assert re.search(rf"KEYS\[{n}", header) or "KEYS[" in header and "..]" in header, \
            f"{path.name}: KEYS[{n}] is not described in the header"
    assert "ARGV" in header or "ARGV" not in text


def test_the_check_catches_a_key_built_inside() -> None:
    assert set(undeclared("redis.call('GET', 'queue:' .. ARGV[1])")) == {"GET 'queue:' .. ARGV[1]"}
    bad = "local k = ARGV[2]\nredis.call('DEL', k)"
    assert undeclared(bad) == ["DEL k"]
    ok = "local function kind(key) return redis.call('TYPE', key) end\nkind(KEYS[1])\nlocal w = KEYS[2]\nkind(w)"
    assert undeclared(ok) == []
    assert undeclared(ok + "\nkind(ARGV[1])") == ["TYPE key"]
    pair = "local a, b = KEYS[1], ARGV[1]\nredis.call('DEL', a)\nredis.call('DEL', b)"
    assert undeclared(pair) == ["DEL b"]
    maybe = "local p = n > 0 and KEYS[3]\nredis.call('DEL', p)\nlocal q = n > 0 and ARGV[3]\nredis.call('DEL', q)"
    assert undeclared(maybe) == ["DEL q"]
