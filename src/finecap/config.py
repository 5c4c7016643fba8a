"""The typed configuration layer every finecap setting goes through.

A concern (data, encoder, decoder, optimisation, SCST, a reward term, decoding, a command's
options) is one `Settings` class: a pydantic model whose fields carry their types, ranges and
docstrings. Values are coerced and checked when a recipe, a `--set` override, a command line or
a saved `config.json` is read: unknown keys, wrong types, NaN/inf and out-of-range values fail
at once with `ConfigError`, one message naming the key, the value and what was expected.

Components chosen by name (encoders, decoders, rewards) register their own settings class
beside their factory (`finecap.registry.Registry.register(name, config=...)`); a field that
holds such a component is validated by the class its `name` selects (`by_name`), so an LSTM
field on a transformer is an unknown key, as in Hugging Face's per-model configs.

Recipes are YAML files (`configs/`, or any path): `base: OTHER.yaml` is read first (beside
the recipe, then among the shipped recipes) and overridden section by section; `--set
a.b.0.c=value` addresses nested keys and list items; `--config NAME` finds a shipped recipe.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
)

from finecap.errors import UserError

RECIPES_DIR = Path(__file__).parent / "configs"

S = TypeVar("S", bound="Settings")


class ConfigError(UserError, ValueError):
    """A setting that cannot be used; the message names the file/key, the value and the fault."""


class Settings(BaseModel):
    """Base of every finecap settings class: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        use_attribute_docstrings=True,
        validate_default=True,
        protected_namespaces=(),
    )

    @classmethod
    def load(cls: type[S], data: Any, source: str = "config", context: dict | None = None) -> S:
        """Validate `data` (a mapping) as this class; errors become one `ConfigError`."""
        try:
            return cls.model_validate(data, context=context)
        except ValidationError as err:
            raise ConfigError(format_errors(err, data, source, cls)) from None

    def replace(self: S, **changes: Any) -> S:
        """A validated copy with some fields changed (a dataclass-style `replace`)."""
        return type(self).load({**self.model_dump(), **changes}, type(self).__name__)

    def to_dict(self) -> dict:
        """Plain JSON/YAML data (what `load` reads back)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- field types

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
"""A probability or share, in [0, 1]."""
PathStr = Annotated[
    str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)
]
"""A file or folder name kept as text (as configs and metrics.json record it); a `Path` is
accepted."""


def _registered(kind: str, names: Callable[[], Iterable[str]]) -> Callable[[str], str]:
    def check(value: str) -> str:
        known = sorted(names())
        if value not in known:
            raise ValueError(f"unknown {kind} {value!r}; registered: {', '.join(known)}")
        return value

    return check


def registered_name(kind: str, names: Callable[[], Iterable[str]]) -> Any:
    """A str field that must name a registered component (checked at load)."""
    return Annotated[str, AfterValidator(_registered(kind, names))]


def by_name(
    kind: str, config_class: Callable[[str], type[Settings]], default: str | None = None
) -> Callable[[Any, ValidatorFunctionWrapHandler], Any]:
    """A wrap validator for a field holding a registered component's settings: the mapping's
    `name` picks the settings class (`config_class(name)`), which then validates it."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, Settings):
            value = value.model_dump()
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping with a `name` ({kind}), got {value!r}")
        name = value.get("name", default)
        if not isinstance(name, str):
            raise ValueError(f"`name` (which {kind}) must be a string, got {name!r}")
        try:
            cls = config_class(name)
        except KeyError as err:
            raise ValueError(str(err).strip("\"'")) from None
        return cls.model_validate({**value, "name": name})

    return validate


# --------------------------------------------------------------------------- error messages


def format_errors(err: ValidationError, data: Any, source: str, root: type | None = None) -> str:
    """One line per problem: `source: key.path: what is wrong (got VALUE)`."""
    lines = []
    for e in err.errors(include_url=False):
        path, node_class = _key_path(e["loc"], data, root)
        where = f"{source}: {'.'.join(path)}" if path else source
        if e["type"] == "extra_forbidden":
            known = ""
            if node_class is not None:
                owner = node_class.model_fields.get("name")
                of = f" of {owner.default}" if owner is not None and owner.default else ""
                known = f"; the keys{of}: {', '.join(node_class.model_fields)}"
            lines.append(f"{where}: unknown key{known}")
            continue
        message = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "missing":
            lines.append(f"{where}: required, not given")
        elif e["type"] in ("value_error", "assertion_error") and isinstance(e["input"], dict):
            lines.append(f"{where}: {message}")
        else:
            lines.append(f"{where}: {message} (got {_short(e.get('input'))})")
    return "\n".join(dict.fromkeys(lines))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _key_path(loc: tuple, data: Any, root: type | None) -> tuple[list[str], type | None]:
    """The user's key path of an error location (pydantic inserts union tags and validator
    names that are not keys), and the settings class of the mapping the last key sits in."""
    path: list[str] = []
    node, cls = data, root
    parent_cls = root
    for i, item in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and item in node:
            parent_cls = cls
            path.append(str(item))
            node, cls = node[item], _field_class(cls, str(item), node[item])
        elif isinstance(node, list) and isinstance(item, int) and item < len(node):
            path.append(str(item))
            node, cls = node[item], _item_class(cls, node[item])
        elif last and item != "__root__":
            parent_cls = cls
            path.append(str(item))
    return path, parent_cls


def _field_class(cls: type | None, key: str, value: Any) -> Any:
    """The settings class (or list marker) that validates `value` at `cls.key`."""
    if cls is None or not (isinstance(cls, type) and issubclass(cls, Settings)):
        return None
    field = cls.model_fields.get(key)
    if field is None:
        return None
    lookup = getattr(cls, "NAMED_FIELDS", {}).get(key)
    if lookup is not None:
        return ("list", lookup) if isinstance(value, list) else _lookup(lookup, value)
    return _settings_in(field.annotation)


def _item_class(cls: Any, value: Any) -> Any:
    if isinstance(cls, tuple) and cls[0] == "list":
        return _lookup(cls[1], value)
    return None


def _lookup(lookup: Callable[[str], type], value: Any) -> type | None:
    try:
        return lookup(value.get("name")) if isinstance(value, dict) else None
    except (KeyError, TypeError):  # an unknown or unhashable name: no class to name keys of
        return None


def _settings_in(annotation: Any) -> type | None:
    if isinstance(annotation, type) and issubclass(annotation, Settings):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _settings_in(arg)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- recipes


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with 1.2 floats: `1e-4` is a number (YAML 1.1 needs `1.0e-4`)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line value as YAML 1.2 (numbers, booleans, null, lists, mappings, strings)."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError:
        return text


def list_recipes() -> list[str]:
    """Names of the shipped recipes (`finecap train --config NAME`)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def find_recipe(name: str | Path) -> Path:
    """A recipe path, or the shipped recipe called `name` (with or without `.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    hint = f"; shipped recipes: {', '.join(list_recipes())}" if path.parent == Path(".") else ""
    raise ConfigError(f"{name}: no such recipe file{hint}")


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The YAML of a recipe as a dict, its `base:` chain merged in (base first)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read recipe ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    return merge(read_recipe(_find_base(path, base, _seen), (*_seen, path.resolve())), data)


def _find_base(path: Path, base: Any, seen: tuple[Path, ...]) -> Path:
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: must be a recipe file name, got {base!r}")
    candidates = [path.parent / base, RECIPES_DIR / Path(base).name]
    for candidate in candidates:
        if candidate.is_file():
            if candidate.resolve() in (*seen, path.resolve()):
                raise ConfigError(f"{path}: base: {base} includes itself")
            return candidate
    where = " and ".join(str(c) for c in candidates)
    raise ConfigError(f"{path}: base: {base}: no such file (looked for {where})")


def merge(base: dict, override: dict) -> dict:
    """Section-by-section merge: nested mappings merge, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(data: dict, assignment: str) -> None:
    """Apply an override `optim.lr=1e-4` or `scst.rewards.0.weight=2` to recipe data."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {assignment!r}: expected KEY.PATH=VALUE, e.g. optim.lr=1e-4")
    *parents, last = key.split(".")
    node: Any = data
    for depth, part in enumerate(parents):
        node = _child(node, part, key, ".".join(parents[: depth + 1]))
    if not isinstance(node, dict | list):
        where = ".".join(parents)
        raise ConfigError(f"--set {key}: {where} is {node!r}, not a section")
    if isinstance(node, list):
        node[_index(node, last, key)] = parse_value(raw)
    else:
        node[last] = parse_value(raw)


def _child(node: Any, part: str, key: str, where: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {where} is {node!r}, not a section")
    if node.get(part) is None:  # absent, or `section: null` in the recipe
        node[part] = {}
    return node[part]


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(
            f"--set {key}: {part!r} is not an item of a list of {len(node)} (0..{len(node) - 1})"
        )
    return int(part)


def load_settings(
    cls: type[S], recipe: str | Path, overrides: Iterable[str] = (), **extra: Any
) -> S:
    """Read a recipe (name or path), apply `--set` overrides, then `extra` (nested mappings
    a caller sets, e.g. the command line's --output-dir), validate as `cls`."""
    path = find_recipe(recipe)
    data = read_recipe(path)
    for assignment in overrides:
        set_dotted(data, assignment)
    return cls.load(merge(data, extra), str(path))
