"""Job settings: one dataclass per job is its Python API, its YAML file and its command line.

The jobs' configs (:class:`cappy.train.TrainConfig`, :class:`cappy.adaptation.AdaptConfig`,
:class:`cappy.evaluate.MCEvalConfig`, :class:`cappy.evaluate.BigBenchEvalConfig`) are dataclasses built on
:class:`JobConfig`. This module is the one place that reads such a config from a mapping or a YAML file, applies
``key=value`` overrides (the command line's ``--set``, each value read as YAML), checks every name and type with an
error that names the setting, and writes the config back as YAML.

A field may hold the settings of another config (``AdaptConfig.training`` holds TrainConfig settings): declared
with ``setting(..., section=TrainConfig)``. An override reaches such a setting by its dotted name
(``training.lr=1e-4``) or, where no other field has that name, by its own (``lr=1e-4``); a YAML file writes it
nested (``training: {lr: 1.0e-4}``).

Example:
    >>> from cappy.train import TrainConfig
    >>> cfg = TrainConfig.from_yaml("adapt_cpu", parse_set(["model=cappy-mini", "train=[p.jsonl]", "output_dir=o"]))
    >>> TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    True
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from cappy.errors import InputError, InputTypeError

C = TypeVar("C", bound="JobConfig")

# YAML 1.1 (PyYAML) reads these bare words as booleans; a string setting whose choices include one takes it back
_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


class ConfigError(InputError):
    """A setting that is unknown, of the wrong type or out of range; the message names it (and its file)."""


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flags: tuple[str, ...] = (),
    choices: Iterable[Any] | None = None,
    section: type | None = None,
    exclude: Mapping[str, str] | None = None,
) -> Any:
    """A dataclass field with what the command line and the checks need to know about it.

    ``flags``: the dedicated command-line options of the field (none: only ``--set`` reaches it); ``choices``: the
    values it takes; ``section``: the config class whose settings this mapping field holds, ``exclude`` the keys of
    it the job sets itself (key -> why). A list or dict default is copied for each instance.
    Example: ``max_examples: int | None = setting(100, "prompts per task", flags=("--max-examples",))``
    """
    meta = {"help": help, "flags": tuple(flags), "choices": tuple(choices) if choices is not None else None}
    meta |= {"section": section, "exclude": dict(exclude or {})}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def parse_set(items: Iterable[str], option: str = "--set") -> dict[str, Any]:
    """``["lr=1e-4", "tasks=[a, b]"]`` -> ``{"lr": "1e-4", "tasks": ["a", "b"]}``: each value read as YAML.

    Dashes in a key become underscores; a key given twice keeps its last value (so a script may append to a
    command line). Numbers such as ``1e-4``, which YAML 1.1 reads as strings, become numbers where the setting is
    a number (:meth:`JobConfig.from_dict` converts by the field's type).
    Example: ``parse_set(["max_examples=10", "adapt=true"])`` -> ``{"max_examples": 10, "adapt": True}``
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} lr=1e-4")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{option} {item}: the value is not valid YAML ({problem})") from None
        out[key.replace("-", "_")] = value
    return out


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file is an empty mapping); anything else is an error naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} file is a YAML mapping of settings, got {type(data).__name__}")
    return data


class JobConfig:
    """Base of the job config dataclasses: build from a mapping, a YAML file or overrides; write back to YAML.

    A subclass is a ``@dataclass`` whose fields are its settings; ``validate`` checks values across fields.
    Example:
        >>> @dataclass
        ... class Job(JobConfig):
        ...     steps: int = setting(10, "how many", flags=("--steps",))
        >>> Job.from_dict({"steps": "3"})
        Traceback (most recent call last):
        ConfigError: config: steps must be an integer, got '3'
        >>> Job().with_overrides(parse_set(["steps=3"])).steps
        3
    """

    #: how messages name the job, e.g. "cappy eval bigbench"
    job: ClassVar[str] = "this job"

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad setting (checks across fields; types are checked)."""

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], source: str = "config", validate: bool = True) -> C:
        """Build from a mapping of field names (a YAML file's content): unknown names and wrong types are errors
        naming the setting and ``source``; values are converted to the field types (``"1e-4"`` to 1e-4)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: settings of {cls.job} are a mapping, got {type(data).__name__}")
        fields = _fields(cls)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                raise ConfigError(unknown_message(cls, str(key), source, nested=True))
            kwargs[name] = _coerce_field(cls, fields[name], value, source, name)
        try:
            cfg = cls(**kwargs)
        except (TypeError, ValueError) as err:  # a __post_init__ check
            raise ConfigError(f"{source}: {err}") from None
        if validate:
            cfg.validate()
        return cfg

    @classmethod
    def from_yaml(
        cls: type[C], path: str | os.PathLike, overrides: Mapping[str, Any] | None = None, source: str = "overrides"
    ) -> C:
        """Read a YAML file of settings (nested sections as mappings), then apply ``overrides`` (see
        :meth:`with_overrides`). Example: ``BigBenchEvalConfig.from_yaml("job.yaml", {"max_examples": 10})``"""
        cfg = cls.from_dict(read_yaml_mapping(path, cls.__name__), source=str(path), validate=not overrides)
        return cfg.with_overrides(overrides, source) if overrides else cfg

    @classmethod
    def build(cls: type[C], config: C | None, settings: Mapping[str, Any], source: str) -> C:
        """``config`` (or the defaults) with ``settings`` on top: how a job function turns its keyword arguments
        into its config. Example: ``AdaptConfig.build(None, {"output_dir": "o", "lr": 1e-4}, "adapt()")``"""
        if config is not None and not isinstance(config, cls):
            raise InputTypeError(f"{source}: config must be a {cls.__name__}, got {type(config).__name__}")
        base = config.to_dict() if config is not None else {}
        return cls.from_dict(apply_overrides(cls, base, settings, source), source=source)

    def with_overrides(self: C, overrides: Mapping[str, Any], source: str = "overrides") -> C:
        """A copy with ``overrides`` applied: keys are field names, dotted names into a section
        (``training.lr``), or a section's setting by its own name where that is unambiguous (``lr``); ``source``
        names them in errors ("--set" says each as ``--set KEY=VALUE``).
        Example: ``cfg.with_overrides(parse_set(["max_examples=10"]), "--set")``"""
        return type(self).build(self, overrides, source)

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The settings as a mapping (nested configs as mappings; objects such as a loaded generator as they are)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The settings as YAML text (also written to ``path`` when given); :meth:`from_yaml` reads it back.

        A setting that holds a Python object (a loaded generator, a callable metric) cannot be written and is an
        error naming it. Example: ``cfg.to_yaml("job.yaml")``
        """
        data = self.to_dict()
        for name, value in data.items():
            bad = _not_yaml(value)
            if bad is not None:
                raise ConfigError(
                    f"{name} holds a {type(bad).__name__}, which a YAML file cannot hold (give a name or path)"
                )
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


# ---------------------------------------------------------------------- overrides
def apply_overrides(
    cls: type, base: Mapping[str, Any], overrides: Mapping[str, Any], source: str = "overrides"
) -> dict[str, Any]:
    """``base`` (a mapping of ``cls`` settings) with ``overrides`` set, each resolved to its field (see
    :meth:`JobConfig.with_overrides`) and converted to the field's type; errors name the key and ``source``."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in overrides.items():
        where = f"{source} {key}={_as_text(value)}" if source.startswith("--") else source
        path = resolve_key(cls, str(key).replace("-", "_"), where)
        target, owner = out, cls
        for name in path[:-1]:
            f = _fields(owner)[name]
            sub = target.get(name)
            sub = dict(sub) if isinstance(sub, Mapping) else _plain(sub) if sub is not None else {}
            if not isinstance(sub, dict):
                sub = {}
            target[name] = sub
            target, owner = sub, f.metadata.get("section") or _dataclass_of(f, owner)
        last = path[-1]
        if owner is None:  # a key of a plain mapping field (generator_options.n_threads)
            target[last] = value
        else:
            target[last] = _coerce_field(owner, _fields(owner)[last], value, where, ".".join(path))
    return out


def resolve_key(cls: type, key: str, source: str = "--set") -> list[str]:
    """The field path a setting's name reaches: ``"max_examples"`` -> ``["max_examples"]``, ``"training.lr"`` or
    (where nothing else is called so) ``"lr"`` -> ``["training", "lr"]``; unknown names are an error listing the
    close matches and the valid names."""
    found = _resolve(cls, key.split("."))
    if found is None:
        raise ConfigError(unknown_message(cls, key, source))
    if isinstance(found, str):
        raise ConfigError(f"{source}: {found}")
    return found


def field_type(cls: type, name: str) -> Any:
    """The resolved type of a config field (``int | None`` etc.), as the checks and the command line read it."""
    return _hints(cls)[name]


def settable_keys(cls: type) -> list[str]:
    """Every name an override may use: the fields, then each section's settings by their dotted names."""
    own = sorted(_fields(cls))
    nested = []
    for name, sub in _sections(cls).items():
        excluded = _fields(cls)[name].metadata.get("exclude", {})
        nested += [f"{name}.{k}" for k in settable_keys(sub) if k.split(".")[0] not in excluded]
    return own + nested


def unknown_message(cls: type, key: str, source: str, nested: bool = False) -> str:
    """``source: unknown setting 'lrr' of cappy adapt; did you mean lr? valid settings: ...``.

    ``nested``: the key came from a YAML mapping, where a section's setting must be written inside its section."""
    own = sorted(_fields(cls))
    sections = _sections(cls)
    flat = {k.rsplit(".", 1)[-1] for k in settable_keys(cls)}
    close = difflib.get_close_matches(key, sorted(set(settable_keys(cls)) | flat), n=3, cutoff=0.6)
    msg = f"{source}: unknown setting {key!r} of {getattr(cls, 'job', cls.__name__)}"
    homes = [name for name, sub in sections.items() if key in _fields(sub)]
    if nested and homes:
        msg += f"; {key} is a setting of {homes[0]}: write it inside {homes[0]}: (e.g. {homes[0]}: {{{key}: ...}})"
    elif close:
        msg += f"; did you mean {' or '.join(close)}?"
    msg += f" Valid settings: {', '.join(own)}"
    for name, sub in sections.items():
        how = f"{name}.KEY" if nested else f"{name}.KEY, or KEY alone where unambiguous"
        excluded = _fields(cls)[name].metadata.get("exclude", {})
        msg += f"; in {name} ({how}): {', '.join(sorted(set(_fields(sub)) - set(excluded)))}"
    return msg


def _resolve(cls: type, parts: list[str]) -> list[str] | str | None:
    """The path, an error message (str), or None (unknown)."""
    fields = _fields(cls)
    head, rest = parts[0], parts[1:]
    if head in fields:
        f = fields[head]
        if not rest:
            return [head]
        sub = f.metadata.get("section") or _dataclass_of(f, cls)
        if sub is not None:
            excluded = f.metadata.get("exclude", {})
            if len(rest) == 1 and rest[0] in excluded:
                return f"{head}.{rest[0]}: {excluded[rest[0]]}"
            inner = _resolve(sub, rest)
            return [head, *inner] if isinstance(inner, list) else inner
        if _is_mapping_hint(_hints(cls)[head]) and len(rest) == 1:
            return [head, rest[0]]
        return f"{head} is a single setting, not a section: write {head}=VALUE"
    if rest:
        return None
    homes = []
    for name, sub in _sections(cls).items():
        excluded = fields[name].metadata.get("exclude", {})
        if head in excluded:
            continue
        inner = _resolve(sub, [head])
        if isinstance(inner, list):
            homes.append([name, *inner])
    if len(homes) > 1:
        return f"{head} is ambiguous: write one of {', '.join('.'.join(h) for h in homes)}"
    return homes[0] if homes else None


# ---------------------------------------------------------------------- types
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls: type) -> dict[str, Any]:
    cache = cls.__dict__.get("_cappy_hints")
    if cache is None:
        cache = typing.get_type_hints(cls)
        cls._cappy_hints = cache
    return cache


def _sections(cls: type) -> dict[str, type]:
    out = {}
    for f in dataclasses.fields(cls):
        sub = f.metadata.get("section") or _dataclass_of(f, cls)
        if sub is not None:
            out[f.name] = sub
    return out


def _dataclass_of(f: dataclasses.Field, owner: type) -> type | None:
    """The JobConfig class of a nested-config field (``adapt: AdaptConfig``), else None."""
    hint = _hints(owner)[f.name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for a in typing.get_args(hint) if union else (hint,):
        if isinstance(a, type) and issubclass(a, JobConfig):
            return a
    return None


def _is_mapping_hint(hint: Any) -> bool:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return any(a is dict or typing.get_origin(a) is dict for a in (typing.get_args(hint) if union else (hint,)))


def _coerce_field(owner: type, f: dataclasses.Field, value: Any, source: str, name: str) -> Any:
    section = f.metadata.get("section")
    if section is not None:
        return _coerce_section(section, f, value, source, name)
    return _coerce(value, _hints(owner)[f.name], f"{source}: {name}", f.metadata.get("choices"))


def _coerce_section(section: type, f: dataclasses.Field, value: Any, source: str, name: str) -> dict[str, Any]:
    """A mapping of ``section`` settings (overrides of that config): names and types checked, keys the job sets
    itself refused."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {name} must be a mapping of {section.__name__} settings, got {_show(value)}")
    out = {}
    excluded = f.metadata.get("exclude", {})
    fields = _fields(section)
    for key, v in value.items():
        k = str(key).replace("-", "_")
        if k in excluded:
            raise ConfigError(f"{source}: {name}.{k}: {excluded[k]}")
        if k not in fields:
            raise ConfigError(unknown_message(section, k, f"{source}: {name}"))
        out[k] = _coerce_field(section, fields[k], v, source, f"{name}.{k}")
    return out


def describe(hint: Any) -> str:
    """A type as the error messages say it: ``int | None`` -> "an integer or null"."""
    if hint is Any:
        return "any value"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        words = [describe(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if hint is list or origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return "a list" + ("" if item is Any else f" of {_plural(item)}")
    if hint is dict or origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    return f"a {getattr(hint, '__name__', hint)}"


def _plural(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_plural(a) for a in typing.get_args(hint) if a is not type(None))
    names = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    return names.get(hint, f"{getattr(hint, '__name__', hint)}s")


def _coerce(value: Any, hint: Any, where: str, choices: tuple[Any, ...] | None = None) -> Any:
    """``value`` as ``hint`` (the YAML reading of a setting to its field's type) or a ConfigError naming it."""
    out = _convert(value, hint, where, choices)
    if choices is not None and out is not None and out not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, choices))}, got {_show(value)}")
    return out


def _convert(value: Any, hint: Any, where: str, choices: tuple[Any, ...] | None = None) -> Any:
    if hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where} may not be null; it must be {describe(hint)}")
        # an instance of a member type as it is; else the first member that converts it
        for a in args:
            if isinstance(a, type) and a is not type(None) and not _is_scalar(a) and isinstance(value, a):
                return value
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where, choices)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {describe(hint)}, got {_show(value)}")
    if value is None:
        raise ConfigError(f"{where} may not be null; it must be {describe(hint)}")
    if hint is list or origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        items = list(value) if isinstance(value, list | tuple) else [value]
        try:
            return [_convert(v, item, where) for v in items]
        except ConfigError:
            raise ConfigError(f"{where} must be {describe(hint)}, got {_show(value)}") from None
    if hint is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {_show(value)}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
            raise ConfigError(f"{where} must be an integer, got {_show(value)}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {_show(value)}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {_show(value)}")
        return float(value)
    if hint is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare no/off/yes/on as a boolean: a choice of that word
            word = next((w for w in _YAML_BOOL_WORDS[value] if choices and w in choices), None)
            if word is None:
                raise ConfigError(f"{where} must be a string, got {_show(value)}")
            return word
        if not isinstance(value, str | os.PathLike | int | float):
            raise ConfigError(f"{where} must be a string, got {_show(value)}")
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            if issubclass(hint, JobConfig):
                return hint.from_dict(value, source=where, validate=False)
            known = {f.name for f in dataclasses.fields(hint)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {unknown} of a {hint.__name__}; known: {sorted(known)}")
            return hint(**value)
        raise ConfigError(f"{where} must be {describe(hint)}, got {_show(value)}")
    return value


def _is_scalar(t: type) -> bool:
    return t in (bool, int, float, str)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_text(value: Any) -> str:
    """A value as it was written after ``--set KEY=``."""
    if isinstance(value, str):
        return value
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
    except yaml.YAMLError:
        return repr(value)


def _plain(value: Any) -> Any:
    """Nested configs as mappings, lists and mappings copied; other objects as they are (not copied: a setting may
    hold a loaded generator or a candidate list)."""
    if isinstance(value, JobConfig):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _not_yaml(value: Any) -> Any:
    """The first part of ``value`` a YAML file cannot hold, or None."""
    if value is None or isinstance(value, bool | int | float | str):
        return None
    if isinstance(value, list):
        return next((b for b in map(_not_yaml, value) if b is not None), None)
    if isinstance(value, dict):
        bad_key = next((k for k in value if not isinstance(k, str)), None)
        if bad_key is not None:
            return bad_key
        return next((b for b in map(_not_yaml, value.values()) if b is not None), None)
    return value
