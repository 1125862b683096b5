"""A foreign run's gin file (Mesh TF's `operative_config.gin`, t5x's `config.gin`) read as data, never executed.

gin files can import modules, so `gin.parse_config` on a downloaded file would run code. Here a file is a list of
`[scope/]configurable.parameter = value` bindings and `MACRO = value` macros; values are Python literals, `%MACRO`
references or `@configurable` references (kept as the string "@name"). Module prefixes are dropped:
`mesh_tensorflow.transformer.transformer_layers.SelfAttention.num_heads` is `SelfAttention.num_heads`.
"""

from __future__ import annotations

import ast
import re

_REFERENCE = re.compile(r"@[\w.]+(\(\))?")
_MACRO_REF = re.compile(r"%[\w.]+")


class GinText:
    def __init__(self, text: str, source: str = "gin text"):
        self.source = source
        self.bindings: dict[str, object] = {}
        for key, value in _statements(text):
            self.bindings[_short_key(key)] = value

    def get(self, configurable: str, parameter: str, *, scope: str | None = None, default=None):
        """The value bound to `[scope/]configurable.parameter` (the scoped binding wins), macros resolved. Asked
        without a scope for a name bound only in scopes, the value those scopes agree on: an operative_config.gin
        that gin wrote binds `encoder/SelfAttention.shared_kv` and `decoder/SelfAttention.shared_kv`, not
        `SelfAttention.shared_kv`. Scopes that disagree are an error naming them."""
        for key in ([f"{scope}/{configurable}.{parameter}"] if scope else []) + [f"{configurable}.{parameter}"]:
            if key in self.bindings:
                return self._resolve(self.bindings[key], key)
        if scope is None:
            suffix = f"/{configurable}.{parameter}"
            scoped = {key: self._resolve(value, key) for key, value in self.bindings.items() if key.endswith(suffix)}
            if len({repr(value) for value in scoped.values()}) > 1:
                raise ValueError(f"{self.source}: {', '.join(f'{k} = {v!r}' for k, v in sorted(scoped.items()))}; "
                                 f"t5scale builds one value of {configurable}.{parameter} for every scope.")
            if scoped:
                return next(iter(scoped.values()))
        return default

    def macro(self, name: str, default=None):
        return self._resolve(self.bindings[name], name) if name in self.bindings else default

    def _resolve(self, value, key: str, depth: int = 0):
        if isinstance(value, str) and _MACRO_REF.fullmatch(value):
            name = value[1:]
            if name not in self.bindings or depth > 20:
                raise ValueError(f"{self.source}: {key} = {value}, but the file defines no macro {name!r}.")
            return self._resolve(self.bindings[name], name, depth + 1)
        return value


def _short_key(key: str) -> str:
    """'encoder/mesh_tensorflow.transformer.transformer.make_layer_stack.num_layers' -> 'encoder/make_layer_stack.
    num_layers'; a macro ('d_model') stays as it is."""
    scope, _, name = key.rpartition("/")
    parts = name.split(".")
    short = ".".join(parts[-2:]) if len(parts) > 2 else name
    return f"{scope}/{short}" if scope else short


def _statements(text: str):
    """(key, value) for each binding; bracketed values may span lines. Imports and includes are skipped."""
    pending = ""
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if not line.strip() and not pending:
            continue
        pending = f"{pending} {line.strip()}" if pending else line.strip()
        if _depth(pending) > 0 or pending.endswith("\\"):
            pending = pending.rstrip("\\")
            continue
        statement, pending = pending, ""
        if statement.startswith(("import ", "from ", "include ")) or "=" not in statement:
            continue
        key, value = (s.strip() for s in statement.split("=", 1))
        yield key, _value(value)


def _strip_comment(line: str) -> str:
    """`line` without a trailing comment: the first '#' outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[:i].rstrip()
    return line.rstrip()


def _depth(text: str) -> int:
    return sum(text.count(o) - text.count(c) for o, c in ("()", "[]", "{}"))


def _value(text: str):
    """A Python literal; @references and %macros (also inside lists) become strings."""
    quoted = _MACRO_REF.sub(lambda m: repr(m[0]), _REFERENCE.sub(lambda m: repr(m[0].removesuffix("()")), text))
    try:
        return ast.literal_eval(quoted)
    except (ValueError, SyntaxError):
        return text
