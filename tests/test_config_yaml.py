"""guard.config.yaml_fast against the reference parser, and the loader's fast paths.

The contract of ``fast_load(text)``: it returns exactly what
``yaml.load(text, Loader=StrictLoader)`` returns (same types, same key order) or raises
``Unsupported``; and whenever StrictLoader fails on a text, ``fast_load`` raises
``Unsupported``, so errors and their line numbers always come from StrictLoader. Checked
here on hand-picked edge cases, on generated documents, and on every YAML file the project
ships; the project's own configs must also take the fast path, or it would be dead code.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.config import load_routes, loader, yaml_fast
from guard.config.model import ListenerConfig
from guard.config.yaml_fast import StrictLoader, Unsupported, fast_load
from guard.errors import ConfigErrors

REPO = Path(__file__).resolve().parent.parent
SHARED = Path("/work/shared")


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 != True != 1.0 here) and key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(
            same(k, k2) and same(a[k], b[k2]) for k, k2 in zip(a, b, strict=True)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def reference(text: str) -> tuple[bool, Any]:
    """(True, document) or (False, the error) from StrictLoader."""
    try:
        return True, yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as e:
        return False, e
    except (ValueError, TypeError, RecursionError) as e:  # PyYAML's own oddities
        return False, e


def check(text: str) -> bool:
    """Assert the contract on one text; True when the fast path answered."""
    ok, expected = reference(text)
    try:
        got = fast_load(text)
    except Unsupported:
        return False
    assert ok, f"fast_load accepted a text StrictLoader rejects ({expected}):\n{text}"
    assert same(got, expected), f"{got!r} != {expected!r} for:\n{text}"
    return True


# ---------------------------------------------------------------------- edge cases

SCALARS = [
    # nulls and booleans: YAML 1.2 booleans, 1.1 nulls (what StrictLoader resolves)
    "~",
    "null",
    "Null",
    "NULL",
    "nULL",
    "nulls",
    "true",
    "True",
    "TRUE",
    "tRUE",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "Yes",
    "ON",
    # numbers: the plain decimal forms are built here, the rest are left to StrictLoader
    "0",
    "-0",
    "+1",
    "12",
    "-12",
    "012",
    "0x1F",
    "0o17",
    "0b101",
    "1_000",
    "1:30",
    "1.5",
    "-1.5",
    "+1.5",
    ".5",
    "1.",
    "1e3",
    "1.0e+3",
    "1.0e3",
    "1.0E-3",
    ".inf",
    "-.inf",
    ".nan",
    "0.",
    "00.5",
    "1_0.5",
    "190:20:30.15",
    "6.8523015e+5",
    # timestamps, merges, values
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "<<",
    "=",
    "<x",
    "=x",
    # plain strings with YAML-significant characters inside
    "a b",
    "a  b",
    "a#b",
    "a #b",
    "a:b",
    "a: b",
    "a:",
    "a ,b",
    "a,b",
    "a]b",
    "a}b",
    "http://x:80/a?b#c",
    "-x",
    "-",
    "- x",
    "--",
    "---",
    "...",
    "?x",
    "? x",
    ":x",
    ": x",
    "a'b",
    'a"b',
    "a\\b",
    "%x",
    "@x",
    "`x",
    "!x",
    "&x",
    "*x",
    "|",
    ">",
    "|-",
    ">+",
    "x!",
    "x&",
    "x*",
    "x|",
    "x>",
    "x?",
    "x%",
    "x@",
    "é",
    "日本",
    "a\u00a0b",
    "\u00a0",
    "a\u2028b",
    "\U0001f600",
    "emoji \U0001f600 x",
    "x\x7f",
    # quoted
    "''",
    '""',
    "'a'",
    "'it''s'",
    "'a' b",
    "'a' # c",
    "'a'#c",
    '"a"',
    '"a\\"b"',
    '"a\\\\b"',
    '"\\x41"',
    '"\\u00e9"',
    '"\\U0001F600"',
    '"\\ud800"',
    '"\\n\\t\\/"',
    '"\\N"',
    '"\\_"',
    '"\\e"',
    '"\\z"',
    '"\\x4"',
    '"unterminated',
    "'unterminated",
    '"a" x',
    "'a'b",
    '"a#b"',
    '"a: b"',
    "'{a}'",
    '"[x]"',
    '"\\ "',
    '"\\0"',
    # flows
    "[]",
    "{}",
    "[ ]",
    "{ }",
    "[a]",
    "[a, b]",
    "[a,b]",
    "[ a , b ]",
    "[a, ]",
    "[, a]",
    "[a b, c]",
    "[a, [b, c]]",
    "[a, {b: c}]",
    "{a: b}",
    "{a: b, c: d}",
    "{a:b}",
    "{a: }",
    "{a}",
    "{a, b}",
    "{a: b, a: c}",
    "{a: [b, c], d: {e: f}}",
    "[a: b]",
    "{a: b} c",
    "{a: b} # c",
    "{a: b}#c",
    "[a] [b]",
    "{1: a, 1.0: b}",
    "{true: a, 1: b}",
    "[-a, b]",
    "[- a]",
    "[-]",
    "[a, -]",
    "[a:]",
    "[a:, b]",
    "{a: b:}",
    "{? a: b}",
    "[a#b]",
    "[a #b]",
    "{a: 'b', c: \"d\"}",
    "[~, null, true, 1, 1.5, x]",
    "{a: b,}",
    "[a, b",
    "{a: b",
    "[[[]]]",
    "[{}]",
    "{a: {}}",
    "[a:b]",
    "{url: http://x:1/y}",
    "[:a]",
    "[?a]",
    "{a: ?b}",
    "{a: -b}",
    "{-a: b}",
    "[a:?b]",
    "[a:[b]]",
    "{a:{b: c}}",
    "[a,,b]",
]

DOCS = [
    "",
    "\n\n",
    "# only a comment\n",
    "a: 1\n",
    "a: 1",
    "a:\n",
    "a:",
    "a: b\nb: c\n",
    "a: b\na: c\n",
    "a:\n  b: c\n  d: e\nf: g\n",
    "a:\n- b\n- c\nd: e\n",
    "a:\n  - b\n  - c\n",
    "- a\n- b\n",
    "- a: 1\n  b: 2\n- c\n",
    "- a:\n  - x\n  b: 1\n",
    "- a:\n- b\n",
    "-\n  - x\n",
    "-\n- x\n",
    "- - x\n",
    "-   a: 1\n    b: 2\n",
    "- a: 1\n   b: 2\n",
    "- a: 1\n     b: 2\n",
    "a: b\n  c\n",
    "a: b\n  # c\n",
    "a: b\n  #c\nd: e\n",
    "a:\n  b\n",
    "a: 1\n b: 2\n",
    "  a: 1\n  b: 2\n",
    "  a: 1\nb: 2\n",
    "a: |\n  x\n",
    "a: >\n  x\n",
    "a: &x 1\nb: *x\n",
    "a: !!str 1\n",
    "<<: {a: 1}\nb: 2\n",
    "a: {b: 1}\n<<: {c: 2}\n",
    "---\na: 1\n",
    "a: 1\n---\nb: 2\n",
    "a: 1\n...\n",
    "%YAML 1.1\n---\na: 1\n",
    "a: 1\r\nb: 2\r\n",
    "a:\t1\n",
    "\ta: 1\n",
    "\ufeffa: 1\n",
    "? a\n: b\n",
    "a : b\n",
    "a  :  b  \n",
    "a:b\n",
    "a:b: c\n",
    "a:: b\n",
    "'a': b\n",
    '"a b": c\n',
    '"a": b\n',
    "'a':b\n",
    "'a' : b\n",
    "a b: c\n",
    "a #b: c\n",
    "a#b: c\n",
    "1: a\n1.0: b\n",
    "true: a\n1: b\n",
    "null: a\n~: b\n",
    "on: a\nyes: b\n",
    "x" * 1100 + ": a\n",
    "a: " + "x" * 5000 + "\n",
    "a:\n  - b: 1\n    c:\n      - d\n  - e\n",
    "a: [b,\n  c]\n",
    "a: {b: c,\n  d: e}\n",
    "a: 'b\n  c'\n",
    'a: "b\n  c"\n',
    "a: b\n- c\n",
    "- a\nb: c\n",
    "a: b # c\nd: e #f\n",
    "a: b #\n",
    "a: # c\n  b: d\n",
    "a: # c\n",
    "- # c\n  a: b\n",
    "- # c\n- d\n",
    "a: - b\n",
    "a: -\n",
    "a: x\n\n\nb: y\n",
    "a:\n\n  b: c\n",
    "a:\n  b: c\n\n  d: e\n",
    "- a\n  - b\n",
    "a:\n    - b\n  c: d\n",
    "[a, b]\n",
    "{a: b}\n",
    "a\n",
    "'a'\n",
]


@pytest.mark.parametrize("value", SCALARS)
@pytest.mark.parametrize("template", ["a: {}\n", "- {}\n", "a: [{}]\n", "a: {{k: {}}}\n"])
def test_scalars_match_the_reference(template: str, value: str) -> None:
    check(template.replace("{}", value) if "{{" not in template else "a: {k: " + value + "}\n")


@pytest.mark.parametrize("value", SCALARS)
def test_scalar_keys_match_the_reference(value: str) -> None:
    check(f"{value}: x\n")
    check(f"- {value}: x\n  y: z\n")
    check(f"a: {{{value}: x}}\n")


@pytest.mark.parametrize("text", DOCS)
def test_documents_match_the_reference(text: str) -> None:
    check(text)


def test_common_shapes_take_the_fast_path() -> None:
    texts = [
        "a: 1\nb: [x, y]\nc: {d: e}\n",
        "routes:\n  - name: a\n    match: {host: a.b, path_prefix: /x}\n    service: s\n",
        "routes:\n- name: a\n  service: s\n",
        'services:\n  s:\n    servers: ["127.0.0.1:9001", "[::1]:80"]  # two\n',
        "a: 'it''s'\nb: \"x\\ty\"\nc: ~\nd: true\ne: 1.5\nf: -3\n",
    ]
    for text in texts:
        assert check(text), text


# ---------------------------------------------------------------- generated documents

KEYS = st.sampled_from(
    ["a", "b", "name", "on", "yes", "null", "1", "1.5", "true", "x y", "'q'", '"k"', "-k"]
)
SCALAR = st.sampled_from(SCALARS)
NOISE = st.text(alphabet=" -:#,[]{}'\"&*!|>?%@`~.01abnt\\", max_size=12)


@st.composite
def lines(draw: st.DrawFn) -> str:
    indent = " " * draw(st.integers(0, 6))
    kind = draw(st.sampled_from(["key", "key", "keyval", "entry", "entrykey", "noise"]))
    if kind == "key":
        return f"{indent}{draw(KEYS)}:"
    if kind == "keyval":
        return f"{indent}{draw(KEYS)}: {draw(st.one_of(SCALAR, NOISE))}"
    if kind == "entry":
        return f"{indent}- {draw(st.one_of(SCALAR, NOISE))}"
    if kind == "entrykey":
        return f"{indent}- {draw(KEYS)}: {draw(SCALAR)}"
    return indent + draw(NOISE)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines(), max_size=10))
def test_generated_documents_match_the_reference(doc: list[str]) -> None:
    check("\n".join(doc) + "\n")


def to_yaml(value: Any, indent: int, style: str) -> str:
    """Block YAML for generated data, in the styles route files use."""
    pad = " " * indent
    if isinstance(value, dict) and value and style == "block":
        out = []
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                out.append(f"{pad}{k}:\n{to_yaml(v, indent + 2, style)}")
            else:
                out.append(f"{pad}{k}: {yaml.safe_dump(v, default_flow_style=True).strip()}")
        return "\n".join(out)
    if isinstance(value, list) and value and style == "block":
        out = []
        for v in value:
            body = (
                to_yaml(v, indent + 2, style).lstrip(" ")
                if isinstance(v, dict | list)
                else (yaml.safe_dump(v, default_flow_style=True).strip())
            )
            out.append(f"{pad}- {body}")
        return "\n".join(out)
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return pad + dumped.removesuffix("\n...")


WORDS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8
)
DATA = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**6), 10**6),
        WORDS,
        st.floats(allow_nan=False, allow_infinity=False, width=32),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(alphabet="abcxyz_-", min_size=1, max_size=6), inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=3), DATA, min_size=1))
def test_generated_data_round_trips(data: dict[str, Any]) -> None:
    for style in ("block", "flow"):
        text = to_yaml(data, 0, style) + "\n"
        check(text)
        check(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


# ----------------------------------------------------------------- the project's files


def project_yaml() -> list[Path]:
    roots = [REPO / "configs", REPO / "routes", REPO / "tests" / "corpus", SHARED / "examples"]
    return sorted(p for root in roots if root.exists() for p in root.rglob("*.y*ml"))


@pytest.mark.parametrize("path", project_yaml(), ids=lambda p: str(p))
def test_project_files_match_the_reference(path: Path) -> None:
    check(path.read_text(encoding="utf-8"))


def test_project_configs_take_the_fast_path() -> None:
    paths = [REPO / "configs" / "guard.yaml", *sorted((REPO / "routes").glob("*.yaml"))]
    paths += sorted((SHARED / "examples").rglob("*.yaml"))
    for path in paths:
        assert check(path.read_text(encoding="utf-8")), path


def test_errors_still_come_from_the_reference_with_lines(tmp_path: Path) -> None:
    # duplicate key: the fast reader sees it, and leaves the message to StrictLoader
    text = "routes: []\nservices:\n  s: {servers: ['a:1']}\n  s: {servers: ['b:1']}\n"
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigErrors) as info:
        load_routes(tmp_path / "r.yaml", {})
    assert "line 4, column 3: found duplicate key 's'" in str(info.value)


# --------------------------------------------------------------------- parse cache


def web() -> dict[str, ListenerConfig]:
    return {"web": ListenerConfig(name="web", protocol="http", host="127.0.0.1", port=80)}


def route_file(name: str, host: str) -> str:
    return textwrap.dedent(f"""\
        routes:
          - name: {name}
            listener: web
            match: {{host: {host}}}
            service: {name}
        services:
          {name}: {{servers: ["127.0.0.1:9001"]}}
        """)


def age(path: Path, seconds: float = 60) -> None:
    """Give a file an old mtime, as files untouched by a deploy have."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # utime cannot age a file's ctime, so the files written here would all be "racy".
    monkeypatch.setattr(loader, "_RACY_NS", 0)


@pytest.mark.usefixtures("no_racy_window")
def test_unchanged_files_are_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        (tmp_path / f"r{i}.yaml").write_text(route_file(f"r{i}", f"h{i}.test"))
        age(tmp_path / f"r{i}.yaml")
    first = load_routes(tmp_path, web())
    parsed: list[str] = []
    real = yaml_fast.load

    def counting(text: str) -> Any:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(yaml_fast, "load", counting)
    again = load_routes(tmp_path, web())
    assert parsed == []
    assert again == first
    # New content of the same size is seen: the mtime moved.
    (tmp_path / "r1.yaml").write_text(route_file("r1", "x1.test"))
    age(tmp_path / "r1.yaml", 30)
    changed = load_routes(tmp_path, web())
    assert len(parsed) == 1
    assert [r.match.host for r in changed.routes] == ["h0.test", "x1.test", "h2.test"]


def test_recently_written_files_are_not_trusted_to_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file rewritten within the file system's timestamp granularity can keep its mtime,
    # ctime and size; only files older than that window are remembered (git's "racy" rule).
    path = tmp_path / "r.yaml"
    path.write_text(route_file("a", "a.test"))
    load_routes(tmp_path, web())
    assert str(path) not in loader._PARSED
    monkeypatch.setattr(loader, "_RACY_NS", 0)
    load_routes(tmp_path, web())
    assert str(path) in loader._PARSED
    path.rename(tmp_path / "s.yaml")
    load_routes(tmp_path, web())
    assert str(path) not in loader._PARSED  # forgotten with the file


@pytest.mark.usefixtures("no_racy_window")
def test_cached_documents_are_not_changed_by_validation(tmp_path: Path) -> None:
    # Unchanged files share their parsed document between reloads, so validation must
    # treat it as read-only: the second load equals a load from a fresh parse.
    text = (SHARED / "examples" / "routes" / "demo.yaml").read_text()
    (tmp_path / "demo.yaml").write_text(text)
    age(tmp_path / "demo.yaml")
    listeners = loader.load_config(SHARED / "examples" / "guard.yaml").listeners
    first = load_routes(tmp_path, listeners)
    assert load_routes(tmp_path, listeners) == first
    cached = loader._PARSED[str(tmp_path / "demo.yaml")][1]
    assert same(cached, yaml.load(text, Loader=StrictLoader))


@pytest.mark.usefixtures("no_racy_window")
def test_bad_file_is_reported_every_time(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("routes:\n  - name: [unclosed\n")
    age(path)
    for _ in range(2):
        with pytest.raises(ConfigErrors, match="line 3"):
            load_routes(path, web())


# ------------------------------------------------------------ loader fast path


def routes_text(entries: list[str], services: str = "s: {servers: ['127.0.0.1:1']}") -> str:
    body = "".join(f"  - {e}\n" for e in entries)
    return f"routes:\n{body}services:\n  {services}\n"


ROUTE_VALUES = st.sampled_from(
    [
        "x",
        "",
        " ",
        "1",
        "true",
        "~",
        "[a]",
        "{a: b}",
        "web",
        "tcp",
        "s",
        "per",
        "/",
        "/a",
        "/a b",
        "a",
        "*.x.y",
        "{key}.x",
        "A.B",
        "a:1",
        "GET",
        "get",
        "[GET, post]",
        "[G T]",
        "{X-A: 1}",
        "{x a: 1}",
        "5",
        "-1",
        "1.5",
        "{max_message: 1KiB}",
        "{average: 2}",
        "{average: 1, by: header:x}",
        "{average: 1, by: nope}",
    ]
)
ROUTE_KEYS = st.sampled_from(
    [
        "name",
        "listener",
        "service",
        "match",
        "strip_prefix",
        "priority",
        "websocket",
        "rate_limit",
        "nope",
    ]
)
MATCH_KEYS = st.sampled_from(["host", "path_prefix", "path", "methods", "headers", "sni", "x"])


@st.composite
def route_entry(draw: st.DrawFn) -> str:
    fields = draw(st.dictionaries(ROUTE_KEYS, ROUTE_VALUES, max_size=7))
    if draw(st.booleans()):
        fields.update(
            name=f"r{draw(st.integers(0, 3))}",
            listener=draw(st.sampled_from(["web", "pg", "dns", "gone"])),
            service=draw(st.sampled_from(["s", "per", "missing"])),
        )
    if draw(st.booleans()):
        match = draw(st.dictionaries(MATCH_KEYS, ROUTE_VALUES, max_size=3))
        fields["match"] = "{" + ", ".join(f"{k}: {v}" for k, v in match.items()) + "}"
    return "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


LISTENERS = {
    "web": ListenerConfig(name="web", protocol="http", host="127.0.0.1", port=80),
    "pg": ListenerConfig(name="pg", protocol="tcp", host="127.0.0.1", port=81),
    "dns": ListenerConfig(name="dns", protocol="udp", host="127.0.0.1", port=82),
}
SERVICES = (
    "{s: {servers: ['127.0.0.1:1']}, "
    "per: {container: {driver: process, command: [x]}, per_key: true}}"
)


def outcome(path: Path) -> Any:
    try:
        return load_routes(path, LISTENERS)
    except ConfigErrors as e:
        return [str(x) for x in e.errors]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(route_entry(), min_size=1, max_size=4))
def test_route_fast_path_agrees_with_the_full_walk(entries: list[str]) -> None:
    # Same routes, or the same messages in the same order, with the fast paths on and off.
    text = "routes:\n" + "".join(f"  - {e}\n" for e in entries) + f"services: {SERVICES}\n"
    if not reference(text)[0]:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.yaml"
        path.write_text(text)
        fast = outcome(path)
        again = outcome(path)  # the routes of the last load, remembered
        loader._FAST_PATHS = False
        try:
            slow = outcome(path)
        finally:
            loader._FAST_PATHS = True
    assert fast == slow, text
    assert again == slow, text


def test_space_or_control_regex_is_isspace_or_c0() -> None:
    # _url_path's regex replaced `any(c.isspace() or ord(c) < 0x20 ...)`; same set, all of it.
    rx = loader._SPACE_OR_CONTROL
    for code in range(sys.maxunicode + 1):
        c = chr(code)
        assert bool(rx.match(c)) == (c.isspace() or code < 0x20), hex(code)
