"""What a settings model declares, read for the configuration reference (``config_docs``):
each field's key, type, default, limits and meaning, nested models flattened into dotted keys.

A knob's meaning is its pydantic ``description``, else a dataclass field's
``metadata["description"]``, else the comment written beside it in the source: the comment
block right above the field, then a comment at the end of its line. A one-line comment of a
few words after a blank line heads a group of fields (``# Drain.``) and describes none.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = ["REQUIRED", "ConfigDocsError", "Knob", "Table", "field_rows", "is_model", "knobs",
           "plain", "source_comments", "type_name"]

_HEADER_MAX_WORDS = 6
_NOT_DESCRIPTIONS = ("noqa", "type:", "pragma", "fmt:")
REQUIRED = object()  # the default of a field that has none

class ConfigDocsError(RuntimeError):
    """The models hold something the generator cannot document (named in the message)."""


@dataclass(frozen=True)
class Knob:
    """One documented setting: its key (dotted inside a model), type, default and meaning."""

    key: str
    type: str
    default: Any
    description: str


# -- reading the models --------------------------------------------------------------------


def is_model(tp: Any) -> bool:
    return inspect.isclass(tp) and (issubclass(tp, BaseModel) or dataclasses.is_dataclass(tp))


def source_comments(cls: type) -> dict[str, str]:
    """Field name -> the comments written beside it in ``cls``'s source (see module doc)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    standalone: dict[int, str] = {}  # 1-based line -> comment text, for comment-only lines
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        row, col = tok.start
        text = tok.string.lstrip("#").strip()
        if lines[row - 1][:col].strip():
            trailing[row] = text
        else:
            standalone[row] = text
    tree = ast.parse(source)
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
    out: dict[str, str] = {}
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        parts: list[str] = []
        row = node.lineno - 1
        block: list[str] = []
        while row in standalone:
            block.insert(0, standalone[row])
            row -= 1
        if block and not _is_group_header(block, row, lines):
            parts.append(" ".join(block))
        end = node.end_lineno or node.lineno
        parts += [trailing[r] for r in range(node.lineno, end + 1)
                  if r in trailing and not trailing[r].startswith(_NOT_DESCRIPTIONS)]
        nxt = body[i + 1] if i + 1 < len(body) else None
        if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            parts.append(inspect.cleandoc(nxt.value.value))
        if parts:
            out[node.target.id] = " ".join(parts)
    return out


def _is_group_header(block: list[str], row_above: int, lines: list[str]) -> bool:
    """A lone short comment after a blank line (``# Drain.``) names a group of fields."""
    blank_above = row_above < 1 or not lines[row_above - 1].strip()
    return len(block) == 1 and blank_above and len(block[0].split()) <= _HEADER_MAX_WORDS


def _constraints(metadata: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for item in metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"),
                           ("min_length", "length ≥"), ("max_length", "length ≤")):
            value = getattr(item, attr, None)
            if value is not None and isinstance(item, (annotated_types.BaseMetadata,
                                                       annotated_types.GroupedMetadata)):
                out.append(f"{sign} {value}")
    return out


def type_name(tp: Any) -> str:
    """A reader's name for an annotation.

    >>> type_name(int | None), type_name(Literal["cpu", "cuda"]), type_name(dict[str, Any])
    ('int | None', '"cpu" | "cuda"', 'dict[str, any]')
    """
    if tp is type(None) or tp is None:
        return "None"
    if tp is Any:
        return "any"
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a) if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join(type_name(a) for a in args)}]" if args else base
    if inspect.isclass(tp):
        return {"SecretStr": "secret", "Path": "path", "PosixPath": "path"}.get(
            tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def field_rows(cls: type) -> Iterator[tuple[str, Any, Any, str, list[str]]]:
    """(name, annotation, default, explicit description, constraints) of a model's fields."""
    if issubclass(cls, BaseModel):
        for name, info in cls.model_fields.items():
            yield name, info.annotation, _pydantic_default(info), info.description or "", \
                _constraints(info.metadata)
        return
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(typing.cast(Any, cls)):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        yield f.name, hints.get(f.name, f.type), default, str(f.metadata.get("description", "")), []


def _pydantic_default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return REQUIRED if info.default is PydanticUndefined else info.default


def _model_arg(tp: Any) -> tuple[str, type] | None:
    """('item' | 'value', model) when ``tp`` is a list of models or a mapping to models."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _model_arg(inner[0]) if len(inner) == 1 else None
    if origin in (list, tuple, Sequence) and args and is_model(args[0]):
        return "item", args[0]
    if origin in (dict, Mapping) and len(args) == 2 and is_model(args[1]):
        return "value", args[1]
    return None


def plain(value: Any) -> Any:
    """``value`` as JSON-able data (models as dicts, paths as strings, secrets hidden)."""
    if isinstance(value, BaseModel):
        return plain(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, SecretStr):
        return "(secret)"
    return value


@dataclass(frozen=True)
class Table:
    """A model documented as rows of knobs, plus tables of the models it holds."""

    title: str
    model: type
    knobs: list[Knob]
    per_key: list[tuple[str, type, dict[str, Any]]]  # (key, item model, key -> default)
    items: list[tuple[str, type]]  # (key, model of a list's items)


def knobs(model: type, prefix: str = "") -> Table:
    """Walk ``model``: scalars become knobs, nested models are flattened into dotted keys,
    mappings to models and lists of models get tables of their own."""
    comments = source_comments(model)
    rows: list[Knob] = []
    per_key: list[tuple[str, type, dict[str, Any]]] = []
    items: list[tuple[str, type]] = []
    for name, tp, default, described, limits in field_rows(model):
        key = f"{prefix}{name}"
        meaning = described or comments.get(name, "")
        if is_model(tp) and default is not REQUIRED and not (get_origin(tp) or get_args(tp)):
            nested = knobs(tp, prefix=f"{key}.")
            rows += nested.knobs
            per_key += nested.per_key
            items += nested.items
            continue
        holds = _model_arg(tp)
        if holds is not None and holds[0] == "value" and isinstance(default, Mapping):
            per_key.append((key, holds[1], dict(default)))
            continue
        if holds is not None and holds[0] == "item":
            items.append((key, holds[1]))
        type_text = type_name(tp) + (f" ({', '.join(limits)})" if limits else "")
        rows.append(Knob(key=key, type=type_text, default=default, description=meaning))
    return Table(title=prefix, model=model, knobs=rows, per_key=per_key, items=items)

