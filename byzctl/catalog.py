"""What is available in each config group, with parameters and their docs (`byzctl list`)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any

from byzctl.config.schema import options

KINDS = {
    "aggregators": "aggregator",
    "preaggs": "preagg",
    "attacks": "attack",
    "topologies": "topology",
    "datasets": "dataset",
    "models": "model",
    "devices": "device",
    "graphs": "graph",
    "security": "security",
    "loggers": "logger",
}
HIDDEN = {"_target_", "name"}


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written as a string literal under each dataclass field, base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for prev, node in zip(body, body[1:]):
            if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                    and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def _default(fl: dataclasses.Field[Any]) -> Any:
    if fl.default is not dataclasses.MISSING:
        value = fl.default
    elif fl.default_factory is not dataclasses.MISSING:
        value = fl.default_factory()
    else:
        return None
    return value.value if hasattr(value, "value") else value


def describe(kind: str) -> list[dict[str, Any]]:
    """One entry per option: name, one-line doc, parameters {name: {type, default, doc}}, and for
    rules, pre-aggregators and attacks the `paper` it implements and its `convention` where
    implementations differ (each component's own class attributes)."""
    group = KINDS[kind]
    out = []
    for name, cls in options(group).items():
        docs = field_docs(cls)
        params = {
            fl.name: {"type": str(fl.type).replace("typing.", ""), "default": _default(fl), "doc": docs.get(fl.name, "")}
            for fl in dataclasses.fields(cls)
            if fl.name not in HIDDEN
        }
        if group in ("device", "graph", "security"):
            params.pop("name", None)
        fn = getattr(cls, "fn", None)
        doc = inspect.getdoc(fn) if fn is not None else inspect.getdoc(cls)
        first = " ".join((doc or "").split("\n\n")[0].split())
        entry: dict[str, Any] = {"name": name, "group": group, "doc": first, "params": params}
        if hasattr(cls, "paper"):
            entry.update(paper=cls.paper, convention=getattr(cls, "convention", ""))
        out.append(entry)
    return out
