"""The configuration reference, generated from the settings models so it cannot drift.

``python -m daemon.config_docs > docs/configuration.md`` writes it; ``--check FILE`` exits 1
when FILE differs (``tests/test_config_docs.py`` does the same). It walks :class:`Settings`
and every model a setting holds: a nested pydantic model or dataclass is documented key by
key, and a JSON-override setting (``ADAPTD_POLICY``, ``ADAPTD_TRAIN``, ``ADAPTD_EVAL``) by the
model it is validated against (:data:`JSON_OVERRIDES`).

A knob's meaning is its pydantic ``description``, else a dataclass field's
``metadata["description"]``, else the comment written beside it in the source: the comment
block right above the field, then a comment at the end of its line. A one-line comment of a
few words after a blank line heads a group of fields (``# Drain.``) and describes none.
Defaults are the models' own (never the environment of the process that runs this).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import importlib
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from daemon.settings import Settings

__all__ = ["JSON_OVERRIDES", "ConfigDocsError", "Knob", "knobs", "main", "render"]

# Settings that take one JSON object of overrides, and the model that validates it.
JSON_OVERRIDES: dict[str, str] = {
    "policy": "policies.config:PolicyConfig",
    "train": "workers.training.config:TrainConfig",
    "eval": "workers.training.config:EvalConfig",
    "data": "workers.training.config:DataConfig",
    "gate": "workers.training.config:GateConfig",
}

COMMAND = "python -m daemon.config_docs > docs/configuration.md"
_HEADER_MAX_WORDS = 6
_NOT_DESCRIPTIONS = ("noqa", "type:", "pragma", "fmt:")
_REQUIRED = object()
_BUILTIN_VALUE = "a built-in demo secret"


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


def _is_model(tp: Any) -> bool:
    return inspect.isclass(tp) and (issubclass(tp, BaseModel) or dataclasses.is_dataclass(tp))


def _source_comments(cls: type) -> dict[str, str]:
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


def _fields(cls: type) -> Iterator[tuple[str, Any, Any, str, list[str]]]:
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
            default = _REQUIRED
        yield f.name, hints.get(f.name, f.type), default, str(f.metadata.get("description", "")), []


def _pydantic_default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return _REQUIRED if info.default is PydanticUndefined else info.default


def _model_arg(tp: Any) -> tuple[str, type] | None:
    """('item' | 'value', model) when ``tp`` is a list of models or a mapping to models."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _model_arg(inner[0]) if len(inner) == 1 else None
    if origin in (list, tuple, Sequence) and args and _is_model(args[0]):
        return "item", args[0]
    if origin in (dict, Mapping) and len(args) == 2 and _is_model(args[1]):
        return "value", args[1]
    return None


def _plain(value: Any) -> Any:
    """``value`` as JSON-able data (models as dicts, paths as strings, secrets hidden)."""
    if isinstance(value, BaseModel):
        return _plain(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, SecretStr):
        return "(secret)"
    return value


@dataclass(frozen=True)
class _Table:
    """A model documented as rows of knobs, plus tables of the models it holds."""

    title: str
    model: type
    knobs: list[Knob]
    per_key: list[tuple[str, type, dict[str, Any]]]  # (key, item model, key -> default)
    items: list[tuple[str, type]]  # (key, model of a list's items)


def knobs(model: type, prefix: str = "") -> _Table:
    """Walk ``model``: scalars become knobs, nested models are flattened into dotted keys,
    mappings to models and lists of models get tables of their own."""
    comments = _source_comments(model)
    rows: list[Knob] = []
    per_key: list[tuple[str, type, dict[str, Any]]] = []
    items: list[tuple[str, type]] = []
    for name, tp, default, described, limits in _fields(model):
        key = f"{prefix}{name}"
        meaning = described or comments.get(name, "")
        if _is_model(tp) and default is not _REQUIRED and not (get_origin(tp) or get_args(tp)):
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
    return _Table(title=prefix, model=model, knobs=rows, per_key=per_key, items=items)


def _load(ref: str) -> type:
    module, _, name = ref.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigDocsError(f"JSON_OVERRIDES names {ref}, which does not import: {exc}") from None
    if not _is_model(cls):
        raise ConfigDocsError(f"{ref} is not a pydantic model or a dataclass")
    return typing.cast(type, cls)


# -- rendering -----------------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "-"


def _json(value: Any) -> str:
    if value is _REQUIRED:
        return "required"
    return json.dumps(_plain(value), ensure_ascii=False)


def _env_value(value: Any) -> str:
    """A default as it would be written in the environment."""
    if value is _REQUIRED:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return _BUILTIN_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    plain = _plain(value)
    return json.dumps(plain, ensure_ascii=False) if isinstance(plain, (dict, list)) else str(plain)


def _code(text: str) -> str:
    """``text`` as inline code, except the words that stand for no value."""
    return text if text in ("required", "unset", _BUILTIN_VALUE) else f"`{text}`"


def _env_name(settings_cls: type[Settings], name: str) -> str:
    info = settings_cls.model_fields[name]
    alias = info.validation_alias or info.alias
    if isinstance(alias, str):
        return alias.upper()
    return f"{settings_cls.model_config.get('env_prefix', '')}{name}".upper()


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _model_sections(table: _Table, heading: str, level: int) -> list[str]:
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    out += [f"| `{k.key}` | {_cell(k.type)} | {_cell(_code(_json(k.default)))} | "
            f"{_cell(k.description)} |" for k in table.knobs]
    for key, model, defaults in table.per_key:
        labels = list(defaults)
        sub = knobs(model)
        out += ["", f"{'#' * (level + 1)} `{heading}` `{key}.<{'|'.join(labels)}>`: "
                    f"{model.__name__}", ""]
        if model.__doc__:
            out += [inspect.cleandoc(model.__doc__).split("\n\n")[0].replace("\n", " "), ""]
        out += [f"| key | type | {' | '.join(labels)} | meaning |",
                f"|---|---|{'---|' * len(labels)}---|"]
        plain = {label: _plain(value) for label, value in defaults.items()}
        for k in sub.knobs:
            cells = [_cell(_code(json.dumps(_dig(plain[label], k.key), ensure_ascii=False)))
                     for label in labels]
            out.append(f"| `{k.key}` | {_cell(k.type)} | {' | '.join(cells)} | "
                       f"{_cell(k.description)} |")
    for key, model in table.items:
        sub = knobs(model)
        out += ["", f"{'#' * (level + 1)} `{heading}` `{key}[]`: {model.__name__}", ""]
        if model.__doc__:
            out += [inspect.cleandoc(model.__doc__).replace("\n\n", "\n").replace("\n", " "), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{k.key}` | {_cell(k.type)} | {_cell(_code(_json(k.default)))} | "
                f"{_cell(k.description)} |" for k in sub.knobs]
    return out


def _dig(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def _intro(settings_cls: type[Settings]) -> list[str]:
    prefix = settings_cls.model_config.get("env_prefix", "")
    delimiter = settings_cls.model_config.get("env_nested_delimiter")
    env_file = settings_cls.model_config.get("env_file")
    out = [
        "# Configuration reference",
        "",
        f"Generated from the settings models by `{COMMAND}`; edit the models, not this file "
        "(`tests/test_config_docs.py` fails when the two differ).",
        "",
        f"Every process (API, worker, beat, CLI) builds one `{_qualname(settings_cls)}` at "
        f"start from its environment (prefix `{prefix}`)"
        + (f" and a `{env_file}` file in its working directory" if env_file else "")
        + ", and passes it down; a bad value stops it at start with a message naming the "
          "setting.",
    ]
    nested = any(_is_model(tp) for _, tp, *_ in _fields(settings_cls))
    if delimiter and nested:
        out += ["", f"A setting that holds a nested model is set key by key, joined with "
                    f"`{delimiter}` (`{prefix}<SETTING>{delimiter}<KEY>`)."]
    return out


def render(settings_cls: type[Settings] = Settings,
           overrides: Mapping[str, str] | None = None) -> str:
    """The whole reference as Markdown."""
    overrides = JSON_OVERRIDES if overrides is None else overrides
    out = _intro(settings_cls)
    out += ["", f"## Process settings (`{_qualname(settings_cls)}`)", "",
            "| environment | type | default | meaning |", "|---|---|---|---|"]
    json_sections: list[tuple[str, type]] = []
    nested_sections: list[tuple[str, type]] = []
    comments = _source_comments(settings_cls)
    for name, tp, default, described, limits in _fields(settings_cls):
        env = _env_name(settings_cls, name)
        meaning = described or comments.get(name, "")
        if _is_model(tp):
            nested_sections.append((env, tp))
            meaning = f"{meaning} Keys: [{env}](#{env.lower()}).".strip()
        elif get_origin(tp) is dict or tp is dict:
            if name not in overrides:
                raise ConfigDocsError(
                    f"setting {name!r} holds a JSON object: name the model that validates it "
                    f"in daemon.config_docs.JSON_OVERRIDES")
            json_sections.append((env, _load(overrides[name])))
            meaning = f"{meaning}. JSON object, keys: [{env}](#{env.lower()}).".lstrip(". ")
        type_text = type_name(tp) + (f" ({', '.join(limits)})" if limits else "")
        out.append(f"| `{env}` | {_cell(type_text)} | {_cell(_code(_env_value(default)))} | "
                   f"{_cell(meaning)} |")
    for env, model in nested_sections:
        delimiter = settings_cls.model_config.get("env_nested_delimiter") or "__"
        out += ["", f"## {env}", "", f"`{_qualname(model)}`: one JSON object in `{env}`, or "
                f"key by key as `{env}{delimiter}<KEY>`.", ""]
        if model.__doc__:
            out += [inspect.cleandoc(model.__doc__).split("\n\n")[0].replace("\n", " "), ""]
        out += _model_sections(knobs(model), env, 2)
    for env, model in json_sections:
        example = _example(knobs(model))
        out += ["", f"## {env}", "",
                f"One JSON object validated as `{_qualname(model)}` when the process starts. "
                "Keys left out keep their defaults, also inside nested objects; an unknown key "
                f"is an error. Example: `{env}='{example}'`.", ""]
        if model.__doc__:
            out += [inspect.cleandoc(model.__doc__).split("\n\n")[0].replace("\n", " "), ""]
        out += _model_sections(knobs(model), env, 2)
    return "\n".join(out) + "\n"


def _example(table: _Table) -> str:
    """A one-key override: the first top-level knob, at its default."""
    first = next((k for k in table.knobs if "." not in k.key and k.default is not _REQUIRED), None)
    return json.dumps({first.key: _plain(first.default)}) if first else "{}"


def main(argv: Sequence[str] | None = None, *, write: Callable[[str], Any] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.config_docs", description=__doc__
                                     .split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", type=Path, metavar="FILE",
                        help="exit 1 if FILE differs from the generated reference")
    args = parser.parse_args(argv)
    text = render()
    if args.check is not None:
        try:
            current = args.check.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"{args.check}: {exc}", file=sys.stderr)
            return 1
        if current != text:
            print(f"{args.check} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    (write or sys.stdout.write)(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
