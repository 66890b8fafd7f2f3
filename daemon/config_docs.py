"""The configuration reference, generated from the settings models so it cannot drift.

``python -m daemon.config_docs > docs/configuration.md`` writes it; ``--check FILE`` exits 1
when FILE differs (``tests/test_config_docs.py`` does the same). It walks :class:`Settings`
and every model a setting holds: a nested pydantic model or dataclass is documented key by
key, and a JSON-override setting (``ADAPTD_POLICY``, ``ADAPTD_TRAIN``, ``ADAPTD_EVAL``) by the
model it is validated against (:data:`JSON_OVERRIDES`).

What a knob means and its default are read by ``config_fields``; defaults are the models'
own (never the environment of the process that runs this).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_origin

from pydantic import SecretStr

from daemon.config_fields import (
    REQUIRED,
    ConfigDocsError,
    Knob,
    Table,
    field_rows,
    is_model,
    knobs,
    plain,
    source_comments,
    type_name,
)
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
_BUILTIN_VALUE = "a built-in demo secret"


def _load(ref: str) -> type:
    module, _, name = ref.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigDocsError(f"JSON_OVERRIDES names {ref}, which does not import: {exc}") from None
    if not is_model(cls):
        raise ConfigDocsError(f"{ref} is not a pydantic model or a dataclass")
    return typing.cast(type, cls)


# -- rendering -----------------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "-"


def _json(value: Any) -> str:
    if value is REQUIRED:
        return "required"
    return json.dumps(plain(value), ensure_ascii=False)


def _env_value(value: Any) -> str:
    """A default as it would be written in the environment."""
    if value is REQUIRED:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return _BUILTIN_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    as_plain = plain(value)
    return (json.dumps(as_plain, ensure_ascii=False) if isinstance(as_plain, (dict, list))
            else str(as_plain))


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


def _model_sections(table: Table, heading: str, level: int) -> list[str]:
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
        as_plain = {label: plain(value) for label, value in defaults.items()}
        for k in sub.knobs:
            cells = [_cell(_code(json.dumps(_dig(as_plain[label], k.key), ensure_ascii=False)))
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
    nested = any(is_model(tp) for _, tp, *_ in field_rows(settings_cls))
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
    comments = source_comments(settings_cls)
    for name, tp, default, described, limits in field_rows(settings_cls):
        env = _env_name(settings_cls, name)
        meaning = described or comments.get(name, "")
        if is_model(tp):
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


def _example(table: Table) -> str:
    """A one-key override: the first top-level knob, at its default."""
    first = next((k for k in table.knobs if "." not in k.key and k.default is not REQUIRED), None)
    return json.dumps({first.key: plain(first.default)}) if first else "{}"


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
