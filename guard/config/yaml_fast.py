"""YAML for config files: the strict loader, and a fast reader for the plain block style.

``StrictLoader`` is the reference: PyYAML's safe loader (libyaml's C parser when built) with
YAML 1.2 booleans, rejecting duplicate keys. It is also slow for big route files: it builds
a Python event, node and two marks per scalar: 0.85-1.3 s for a 10,000-route file, when
a reload must take < 200 ms (issue 7).

``fast_load`` reads the part of YAML that config files are written in - block mappings and
sequences, one-line flow collections, one-line plain and quoted scalars, comments - line by
line with str methods and a few regexes, 10-15x faster. Its contract is all-or-nothing: it
returns exactly what ``yaml.load(text, Loader=StrictLoader)`` returns, or raises
``Unsupported``. It never reports an error itself: anything it does not handle (anchors,
tags, block scalars, multi-line scalars and flows, ``<<`` merges, numbers other than plain
decimals, timestamps, duplicate keys, tabs, anything that is a syntax error) raises
``Unsupported`` and the caller runs ``StrictLoader``, whose answer or error message (with
its line and column) stands. A wrong value is the one thing it must never return, so each
rule below errs towards ``Unsupported``; tests/test_config_yaml.py checks the contract against
``StrictLoader`` over generated documents and every config file in the repo.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

import yaml

__all__ = ["StrictLoader", "Unsupported", "fast_load", "load"]

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # C parser when built
_BOOL_TAG = "tag:yaml.org,2002:bool"


class StrictLoader(_BaseLoader):  # type: ignore[misc]
    """Safe loader with YAML 1.2 booleans that rejects duplicate keys.

    YAML 1.1 reads ``on``/``yes``/``no`` as booleans, which would turn ``retries.on`` into
    the key ``True``; and a repeated key silently overrides the first, hiding typos.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<` merges are meant to be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: the base constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load(text: str) -> Any:
    """The document in ``text`` (None when empty): the fast reader, else StrictLoader.

    Raises ``yaml.YAMLError`` (with marks) exactly as ``yaml.load`` with StrictLoader does.
    """
    try:
        return fast_load(text)
    except Unsupported:
        return yaml.load(text, Loader=StrictLoader)


class Unsupported(Exception):
    """Outside what fast_load reads: parse with StrictLoader instead."""


# ------------------------------------------------------------------------------ scalars

# Plain scalars are typed by StrictLoader's own resolver table (first character -> regexes,
# first match wins), so the two agree by construction. Only the common forms are built
# here; octal, hex, underscores, sexagesimal, .inf/.nan, timestamps, merges raise.
_SIMPLE_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_SIMPLE_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?")


def _unsupported(value: str) -> Any:
    raise Unsupported(value)


def _int(value: str) -> int:
    # Past 4300 digits int() raises ValueError (CPython's limit): StrictLoader's to raise.
    if len(value) < 4000 and _SIMPLE_INT.fullmatch(value):
        return int(value)
    raise Unsupported(value)


def _float(value: str) -> float:
    if _SIMPLE_FLOAT.fullmatch(value):
        return float(value)
    raise Unsupported(value)


_BUILD: Final[dict[str, Callable[[str], Any]]] = {
    "tag:yaml.org,2002:null": lambda value: None,
    _BOOL_TAG: lambda value: value[0] in "tT",  # the regex admits only true/false spellings
    "tag:yaml.org,2002:int": _int,
    "tag:yaml.org,2002:float": _float,
}
_RESOLVERS: Final[dict[str, list[tuple[Callable[[str], Any], Any]]]] = {
    first: [(_BUILD.get(tag, _unsupported), rx) for tag, rx in resolvers]
    for first, resolvers in StrictLoader.yaml_implicit_resolvers.items()
    if first is not None and resolvers
}
if StrictLoader.yaml_implicit_resolvers.get(None):  # resolvers for any first character
    raise ImportError("fast_load assumes no wildcard implicit resolvers")


def _plain(value: str) -> Any:
    """A non-empty plain scalar typed as StrictLoader types it."""
    resolvers = _RESOLVERS.get(value[0])
    if resolvers is not None:
        for build, regexp in resolvers:
            if regexp.match(value):
                return build(value)
    return value


# Characters that cannot start a plain scalar (libyaml's list). "-" may, when a non-space
# follows; "?" and ":" may in block context, but are rare enough to leave to StrictLoader.
_INDICATORS: Final = frozenset("-?:,[]{}#&*!|>'\"%@`")
# A plain scalar inside one line, block context: ends before ": ", a final ":", " #", or
# trailing spaces. libyaml's blanks are space and tab only (tabs never reach here), so
# the classes say "[ ]", not "\s", which would also match unicode spaces.
_BLOCK_PLAIN = re.compile(
    r"(?:[^-?:,\[\]{}#&*!|>'\"%@` ]|-(?=[^ ]))(?:[^: ]|:(?=[^ ])|[ ]+(?=[^ #]))*"
)
# The same inside a flow collection, where ",[]{}" also end it; a ":" before one of them is
# left to StrictLoader (libyaml versions differ on it), as is a "-" before one.
_FLOW_PLAIN = re.compile(
    r"(?:[^-?:,\[\]{}#&*!|>'\"%@` ]|-(?=[^ ,\[\]{}]))"
    r"(?:[^:, \[\]{}]|:(?=[^ ,\[\]{}?])|[ ]+(?=[^ #,\[\]{}:]))*"
)
# libyaml gives up on an implicit key longer than 1024 characters.
_MAX_KEY = 1000

# Double-quoted escapes that map to one character; \x, \u, \U are decoded below. Others
# (\N, \_, \L, \P, line continuations...) are rare: StrictLoader reads them.
_ESCAPES: Final = {"\\": "\\", '"': '"', "/": "/", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_HEX_DIGITS: Final = {"x": 2, "u": 4, "U": 8}
_HEX = re.compile(r"[0-9A-Fa-f]+")


def _quoted(s: str, i: int) -> tuple[str, int]:
    """The quoted scalar starting at ``s[i]`` and the index after its closing quote."""
    quote = s[i]
    if quote == "'":
        parts: list[str] = []
        start = i + 1
        while True:
            end = s.find("'", start)
            if end < 0:
                raise Unsupported("multi-line quoted scalar")
            if s.startswith("'", end + 1):  # '' is one quote
                parts.append(s[start : end + 1])
                start = end + 2
                continue
            parts.append(s[start:end])
            return "".join(parts), end + 1
    end = s.find('"', i + 1)
    if end < 0:
        raise Unsupported("multi-line quoted scalar")
    if "\\" not in s[i + 1 : end]:
        return s[i + 1 : end], end + 1
    out: list[str] = []
    j = i + 1
    while True:
        c = s[j]  # IndexError (unterminated) becomes Unsupported in fast_load
        if c == '"':
            return "".join(out), j + 1
        if c != "\\":
            out.append(c)
            j += 1
            continue
        code = s[j + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            j += 2
        elif code in _HEX_DIGITS:
            digits = s[j + 2 : j + 2 + _HEX_DIGITS[code]]
            if len(digits) != _HEX_DIGITS[code] or not _HEX.fullmatch(digits):
                raise Unsupported("bad escape")
            point = int(digits, 16)
            if 0xD800 <= point <= 0xDFFF or point > 0x10FFFF:
                raise Unsupported("bad escape")
            out.append(chr(point))
            j += 2 + len(digits)
        else:
            raise Unsupported("escape")


# ------------------------------------------------------------------------- flow (one line)


def _skip(s: str, i: int) -> int:
    while s[i] == " ":
        i += 1
    return i


def _flow_node(s: str, i: int) -> tuple[Any, int]:
    c = s[i]
    if c == "[":
        return _flow_seq(s, i)
    if c == "{":
        return _flow_map(s, i)
    if c == '"' or c == "'":
        return _quoted(s, i)
    m = _FLOW_PLAIN.match(s, i)
    if m is None:
        raise Unsupported("flow node")
    return _plain(m.group().rstrip(" ")), m.end()


def _flow_seq(s: str, i: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    i = _skip(s, i + 1)
    if s[i] == "]":
        return out, i + 1
    while True:
        value, i = _flow_node(s, i)
        out.append(value)
        i = _skip(s, i)
        c = s[i]
        if c == "]":
            return out, i + 1
        if c != ",":
            raise Unsupported("flow sequence")  # incl. [a: b] single-pair mappings
        i = _skip(s, i + 1)
        if s[i] == "]":
            raise Unsupported("trailing comma")


def _flow_map(s: str, i: int) -> tuple[dict[Any, Any], int]:
    out: dict[Any, Any] = {}
    i = _skip(s, i + 1)
    if s[i] == "}":
        return out, i + 1
    while True:
        start = i
        key, i = _flow_node(s, i)
        i = _skip(s, i)
        # "key: value" only: a key without ":", "{a:b}" and "{a: }" are left to StrictLoader.
        if s[i] != ":" or s[i + 1] != " " or i - start > _MAX_KEY:
            raise Unsupported("flow mapping")
        if key.__class__ is dict or key.__class__ is list or key in out:
            raise Unsupported("flow key")
        i = _skip(s, i + 1)
        if s[i] in ",}":
            raise Unsupported("empty flow value")
        out[key], i = _flow_node(s, i)
        i = _skip(s, i)
        c = s[i]
        if c == "}":
            return out, i + 1
        if c != ",":
            raise Unsupported("flow mapping")
        i = _skip(s, i + 1)
        if s[i] == "}":
            raise Unsupported("trailing comma")


# A one-line flow collection without nesting, quotes or comments inside, e.g.
# {host: a, path_prefix: /b} or [GET, POST], then nothing but spaces or a comment: split
# with str methods instead of scanning character by character (one per route line).
_FLAT_MAP = re.compile(r"\{([^{}\[\]\"'#]*)\}(?: +(?:#.*)?)?")
_FLAT_SEQ = re.compile(r"\[([^{}\[\]\"'#]*)\](?: +(?:#.*)?)?")


def _flat_map(inner: str) -> dict[Any, Any] | None:
    """``{inner}`` when every key and value is a simple plain scalar; None to scan it."""
    out: dict[Any, Any] = {}
    if not inner.strip(" "):
        return out
    indicators, resolvers = _INDICATORS, _RESOLVERS
    for part in inner.split(","):
        key, sep, value = part.partition(": ")
        key = key.strip(" ")
        value = value.strip(" ")
        if (
            not (sep and key and value)
            or key[0] in indicators
            or value[0] in indicators
            or ": " in value
            or ":?" in part
            or key[-1] == ":"
            or value[-1] == ":"
        ):
            return None
        if key[0] in resolvers:
            key = _plain(key)
        if key in out:
            return None
        out[key] = _plain(value) if value[0] in resolvers else value
    return out


def _flat_seq(inner: str) -> list[Any] | None:
    """``[inner]`` when every item is a simple plain scalar; None to scan it."""
    out: list[Any] = []
    if not inner.strip(" "):
        return out
    indicators, resolvers = _INDICATORS, _RESOLVERS
    for item in inner.split(","):
        item = item.strip(" ")
        if not item or item[0] in indicators or ": " in item or ":?" in item or item[-1] == ":":
            return None
        out.append(_plain(item) if item[0] in resolvers else item)
    return out


# ------------------------------------------------------------------------------- block

_PENDING: Final = object()  # "key:" or "-" with nothing after: the value is on later lines

# Lines "key: scalar" or "key: {flat: mapping}" already read -> (indent, key, value), e.g.
# "    listener: web". A big route file repeats many of them, and a reload re-reads a file
# that is mostly unchanged: a line seen before, at the indent of the mapping being filled,
# needs only the duplicate-key check. Shared by all calls (and threads: dict operations
# are atomic), bounded by clearing it.
_LINES: dict[str, tuple[int, Any, Any]] = {}
_MAX_LINES = 200_000


def _end_of_value(rest: str, i: int) -> None:
    """After a quoted or flow value only spaces and a comment (after a space) may follow."""
    tail = rest[i:]
    if tail and (tail[0] != " " or tail.lstrip(" ")[:1] not in ("", "#")):
        raise Unsupported("text after value")


def _value(rest: str) -> Any:
    """The value written after ``key: `` or ``- `` (leading spaces removed)."""
    if not rest or rest[0] == "#":
        return _PENDING
    c = rest[0]
    # Fast path, the common case: a plain scalar with nothing special in it.
    if (
        c not in _INDICATORS
        and " #" not in rest
        and ": " not in rest
        and rest[-1] != ":"
        and rest[-1] != " "
    ):
        return _plain(rest)
    if c == '"' or c == "'":
        value, end = _quoted(rest, 0)
    elif c == "{" or c == "[":
        m = (_FLAT_MAP if c == "{" else _FLAT_SEQ).fullmatch(rest)
        if m is not None:
            flat = (_flat_map if c == "{" else _flat_seq)(m.group(1))
            if flat is not None:
                return flat
        value, end = _flow_node(rest, 0)
    else:
        m = _BLOCK_PLAIN.match(rest)
        if m is None:
            raise Unsupported("value")  # an indicator: anchor, tag, block scalar, ...
        value, end = _plain(m.group().rstrip(" ")), m.end()
    _end_of_value(rest, end)
    return value


# The usual key: a plain word. Others (quoted, with spaces, ...) go through _BLOCK_PLAIN.
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
_NOT_SIMPLE: Final = object()


def _key(content: str, memo: dict[str, Any]) -> tuple[Any, str] | None:
    """``(key, rest)`` when the line is ``key: rest``; None when it is not a key line.

    ``memo`` caches, per raw word, whether it is a simple key and what it resolves to:
    a file repeats the same few keys thousands of times.
    """
    word, sep, rest = content.partition(": ")
    if not sep:
        if content[-1] != ":":
            word = ""  # no simple key here; try the general path
        else:
            word, rest = content[:-1], ""
    if word:
        key = memo.get(word, _PENDING)
        if key is _PENDING:
            if _SIMPLE_KEY.fullmatch(word) and len(word) <= _MAX_KEY:
                key = _plain(word)
            else:
                key = _NOT_SIMPLE
            memo[word] = key
        if key is not _NOT_SIMPLE:
            return key, rest.lstrip(" ")
    c = content[0]
    if c == '"' or c == "'":
        key, end = _quoted(content, 0)
    elif c == "{" or c == "[":
        return None  # a flow node; a flow collection as a key is left to StrictLoader
    else:
        m = _BLOCK_PLAIN.match(content)
        if m is None:
            return None
        key, end = _plain(m.group().rstrip(" ")), m.end()
    colon = end
    while content.startswith(" ", colon):
        colon += 1
    if not content.startswith(":", colon):
        return None
    if colon + 1 < len(content) and content[colon + 1] != " ":
        raise Unsupported("key:value")
    if colon > _MAX_KEY:
        raise Unsupported("long key")
    return key, content[colon + 1 :].lstrip(" ")


# Characters libyaml rejects or treats specially (tab, CR, NEL and other line breaks, BOM,
# C0/C1 controls, surrogates, non-characters): any of them and StrictLoader reads the file.
_UNUSUAL = re.compile(
    "[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


def fast_load(text: str) -> Any:
    """The document in ``text`` as StrictLoader would build it, or raise Unsupported."""
    # For ASCII, isprintable() is exactly 0x20-0x7e, and ~3x faster than the regex.
    if not (text.replace("\n", "").isprintable() if text.isascii() else not _UNUSUAL.search(text)):
        raise Unsupported("unusual character")
    try:
        return _block(text)
    except (IndexError, RecursionError):
        raise Unsupported("truncated") from None


def _block(text: str) -> Any:
    """Block structure, line by line. This loop is the hot path: common cases are inlined."""
    root: Any = None
    # The open block collections, outermost first: the indent of their keys or dashes, and
    # the dict or list. A sentinel at indent -1 ends every pop loop.
    indents: list[int] = [-1]
    objects: list[Any] = [None]
    top_indent = -1
    top: Any = None
    # A "key:" or "-" with nothing after it: its value starts on a later line, or is null.
    pending = False
    p_obj: Any = None
    p_key: Any = None
    p_indent = 0
    keys: dict[str, Any] = {}  # raw word -> resolved key, or _NOT_SIMPLE (see _key)
    plain, resolvers, indicators = _plain, _RESOLVERS, _INDICATORS
    flat_map_line = _FLAT_MAP.fullmatch
    lines = _LINES
    if len(lines) > _MAX_LINES:
        lines.clear()
    for line in text.split("\n"):
        if not pending:
            seen = lines.get(line)
            if seen is not None and seen[0] == top_indent and top.__class__ is dict:
                key, value = seen[1], seen[2]
                if key in top:
                    raise Unsupported("duplicate key")
                if value.__class__ is dict:
                    value = value.copy()  # no two documents share a mutable value
                top[key] = value
                continue
        content = line.lstrip(" ")
        if not content or content[0] == "#":
            continue
        indent = len(line) - len(content)
        entry = content[0] == "-" and (len(content) == 1 or content[1] == " ")
        if not indent and content.startswith(("---", "...", "%")):
            raise Unsupported("document marker or directive")
        if pending:
            pending = False
            # The value is a block collection starting here if this line is indented
            # deeper, or is a "- " entry at the key's own indent; otherwise it is null.
            if indent > p_indent or (entry and indent == p_indent and p_obj.__class__ is dict):
                child: Any = [] if entry else {}
                if p_obj.__class__ is dict:
                    p_obj[p_key] = child
                else:
                    p_obj.append(child)
                indents.append(indent)
                objects.append(child)
                top_indent, top = indent, child
            elif p_obj.__class__ is list:
                p_obj.append(None)
        elif top is None:
            if root is not None:
                raise Unsupported("content after the document")
            root = [] if entry else {}
            indents.append(indent)
            objects.append(root)
            top_indent, top = indent, root
        # Close the collections this line is outside of. A sequence may sit at its parent
        # key's indent; a line there that is not an entry closes it.
        if top_indent != indent or (not entry and top.__class__ is list):
            while top_indent > indent or (
                top_indent == indent and not entry and top.__class__ is list
            ):
                indents.pop()
                objects.pop()
                top_indent, top = indents[-1], objects[-1]
            if top_indent != indent:
                raise Unsupported("indentation")  # e.g. a multi-line plain scalar
        if entry:
            if top.__class__ is not list:
                raise Unsupported("entry in a mapping")
            # "- value", "- key: value" (starts a mapping at the key's column) or "-".
            content = content[1:].lstrip(" ")
            if not content or content[0] == "#":
                pending, p_obj, p_key, p_indent = True, top, None, indent
                continue
            if content[0] == "-" and (len(content) == 1 or content[1] == " "):
                raise Unsupported("nested entry on one line")
            kv = _key(content, keys)
            if kv is None:
                top.append(_value(content))
                continue
            item: dict[Any, Any] = {}
            top.append(item)
            indent = len(line) - len(content)
            indents.append(indent)
            objects.append(item)
            top_indent, top = indent, item
            key, rest = kv
        else:
            # "key: value" with a plain word for key, inline; anything else through _key.
            word, sep, rest = content.partition(": ")
            key = keys.get(word, _NOT_SIMPLE) if sep else _NOT_SIMPLE
            if key is _NOT_SIMPLE:
                kv = _key(content, keys)
                if kv is None:
                    raise Unsupported("not a key")
                key, rest = kv
            elif rest[:1] == " ":
                rest = rest.lstrip(" ")
            if key in top:
                raise Unsupported("duplicate key")  # StrictLoader words the error
        if not rest or rest[0] == "#":
            top[key] = None  # null unless a block collection follows; keeps the key order
            pending, p_obj, p_key, p_indent = True, top, key, indent
        elif (
            rest[0] not in indicators
            and " #" not in rest
            and ": " not in rest
            and rest[-1] != ":"
            and rest[-1] != " "
        ):
            value = plain(rest) if rest[0] in resolvers else rest
            top[key] = value
            if not entry:
                lines[line] = (indent, key, value)
        elif (
            rest[0] == "{" and (m := flat_map_line(rest)) and (flat := _flat_map(m[1])) is not None
        ):
            top[key] = flat  # e.g. match: {host: a.example.com, path_prefix: /api}
            if not entry:
                lines[line] = (indent, key, flat.copy())
        else:
            top[key] = _value(rest)
    if pending and p_obj.__class__ is list:
        p_obj.append(None)
    return root
