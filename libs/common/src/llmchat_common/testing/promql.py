"""Which metrics a PromQL expression reads, and the expressions of Grafana dashboards and
Prometheus rule files: so tests can check every query against the metric catalogue (and against
what a real Prometheus scraped from the services).

Not a PromQL parser: a tokenizer that drops everything that cannot be a metric name (strings,
label matchers, durations, grouping label lists, function and operator keywords, numbers,
Grafana variables) and keeps the identifiers left over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "atan2",
        "inf",
        "nan",
    }
)
# Followed by a parenthesized list of label names (not expressions).
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(
    r"0[xX][0-9a-fA-F]+"
    r"|(?:[0-9]+(?:\.[0-9]+)?(?:ms|[smhdwy]))+"  # durations (offset 5m, @ 1h30m)
    r"|(?:[0-9]*\.[0-9]+|[0-9]+\.?)(?:[eE][+-]?[0-9]+)?"
)
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|[A-Za-z0-9_]+)")  # Grafana: $model, ${model:regex}
_MATCH_OPS = ("=~", "!~", "!=", "=")
_PLAIN_NAMES = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*(?:\|[A-Za-z_:][A-Za-z0-9_:]*)*")


@dataclass(frozen=True)
class _Token:
    kind: str  # ident | string | punct | selector
    text: str
    pos: int


class PromQLSyntaxError(ValueError):
    pass


def _read_string(expr: str, pos: int) -> tuple[str, int]:
    """The (unescaped enough) content of the string literal starting at `pos`, and the position
    after it."""
    quote = expr[pos]
    i = pos + 1
    out: list[str] = []
    while i < len(expr):
        char = expr[i]
        if char == "\\" and quote != "`" and i + 1 < len(expr):
            out.append(expr[i + 1])
            i += 2
            continue
        if char == quote:
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise PromQLSyntaxError(f"unterminated string at {pos} in {expr!r}")


def _skip_brackets(expr: str, pos: int) -> int:
    """Past the `[...]` (range, subquery, Grafana's old [[var]]) starting at `pos`."""
    depth = 0
    i = pos
    while i < len(expr):
        if expr[i] == "[":
            depth += 1
        elif expr[i] == "]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise PromQLSyntaxError(f"unterminated [ at {pos} in {expr!r}")


def _matcher_names(expr: str, pos: int) -> tuple[list[str], int]:
    """Metric names a `{...}` block at `pos` selects by itself (`__name__="x"`, or a bare
    quoted name as Prometheus 3 allows), and the position after the block."""
    names: list[str] = []
    i = pos + 1
    label: str | None = None
    op: str | None = None
    pending_string: str | None = None  # a string not (yet) known to be a matcher's value
    while i < len(expr):
        char = expr[i]
        if char.isspace():
            i += 1
        elif char == "}":
            if pending_string is not None:
                names.append(pending_string)
            return names, i + 1
        elif char == ",":
            if pending_string is not None:
                names.append(pending_string)
            pending_string, label, op = None, None, None
            i += 1
        elif char in "\"'`":
            value, i = _read_string(expr, i)
            if label is not None and op is not None:
                if label == "__name__":
                    if op == "=":
                        names.append(value)
                    elif op == "=~" and _PLAIN_NAMES.fullmatch(value):
                        names.extend(value.split("|"))
                label, op = None, None
            else:
                pending_string = value  # {"metric"} or {"label"="value"}
        elif char == "$":
            match = _VARIABLE.match(expr, i)
            i = match.end() if match else i + 1
        elif (m := _IDENT.match(expr, i)) is not None:
            label = m.group()
            i = m.end()
        elif (op_text := next((o for o in _MATCH_OPS if expr.startswith(o, i)), None)) is not None:
            if pending_string is not None:
                label, pending_string = pending_string, None
            op = op_text
            i += len(op_text)
        else:
            i += 1
    raise PromQLSyntaxError(f"unterminated {{ at {pos} in {expr!r}")


def _tokens(expr: str) -> Iterator[_Token]:
    i = 0
    while i < len(expr):
        char = expr[i]
        if char.isspace():
            i += 1
        elif char == "#":  # comment to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end + 1
        elif char in "\"'`":
            _, i = _read_string(expr, i)
        elif char == "[":
            i = _skip_brackets(expr, i)
        elif char == "{":
            names, end = _matcher_names(expr, i)
            for name in names:
                yield _Token("selector", name, i)
            i = end
        elif char == "$":
            match = _VARIABLE.match(expr, i)
            i = match.end() if match else i + 1
        elif char.isdigit() or (char == "." and i + 1 < len(expr) and expr[i + 1].isdigit()):
            match = _NUMBER.match(expr, i)
            i = match.end() if match and match.end() > i else i + 1
        elif (m := _IDENT.match(expr, i)) is not None:
            yield _Token("ident", m.group(), i)
            i = m.end()
        else:
            yield _Token("punct", char, i)
            i += 1


def _skip_parens(tokens: list[_Token], index: int) -> int:
    """Index after the parenthesized group starting at tokens[index] (a "(")."""
    depth = 0
    for j in range(index, len(tokens)):
        if tokens[j].kind == "punct" and tokens[j].text == "(":
            depth += 1
        elif tokens[j].kind == "punct" and tokens[j].text == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    raise PromQLSyntaxError(f"unbalanced ( at {tokens[index].pos}")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (`vllm:num_requests_running` included)."""
    tokens = list(_tokens(expr))
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        opens = following is not None and following.kind == "punct" and following.text == "("
        if token.kind == "selector":
            names.add(token.text)
        elif token.kind == "ident":
            word = token.text.lower()
            if word in LABEL_LIST_KEYWORDS and opens:
                i = _skip_parens(tokens, i + 1)
                continue
            if not (opens or word in KEYWORDS or word in AGGREGATIONS):
                names.add(token.text)
        i += 1
    return names


# -- where the expressions live ------------------------------------------------------------
def _panels(node: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(node, dict):
        return
    for key in ("panels", "rows"):  # rows: the pre-5.0 dashboard schema
        for child in node.get(key) or []:
            if isinstance(child, dict):
                yield child
                yield from _panels(child)


def dashboard_exprs(path: Path) -> list[str]:
    """Every `targets[].expr` of a Grafana dashboard JSON (panels nested in rows included)."""
    document = json.loads(Path(path).read_text())
    if isinstance(document.get("dashboard"), dict):  # the HTTP API's envelope
        document = document["dashboard"]
    exprs: list[str] = []
    for panel in _panels(document):
        for target in panel.get("targets") or []:
            expr = target.get("expr") if isinstance(target, dict) else None
            if isinstance(expr, str) and expr.strip():
                exprs.append(expr)
    return exprs


def rule_exprs(path: Path) -> list[str]:
    """Every `groups[].rules[].expr` of a Prometheus rule file (alerting and recording)."""
    document = yaml.safe_load(Path(path).read_text()) or {}
    exprs: list[str] = []
    for group in document.get("groups") or []:
        for rule in group.get("rules") or []:
            expr = rule.get("expr")
            if expr is not None and str(expr).strip():
                exprs.append(str(expr))
    return exprs
