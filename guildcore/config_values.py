"""Raw setting values: reading them out of text, checking them one by one.

This module covers reading YAML (alone, or the ``performance:`` block of a
markdown file) into ``RawMap`` trees that keep the line of every key; turning
one raw value (from YAML, an environment variable or a keyword argument) into
the typed value a setting holds, or into a ``ConfigError`` naming the key,
where the value came from, the bad value and what to write instead; and
rendering typed values back as a user would write them (``guild init``,
``guild config show``). It does not know which keys exist or how sources
merge: see ``config.py``, the only module meant to use this one.

Units. Sizes are int bytes. Decimal units are powers of 1000, binary units
powers of 1024, and unit names are case-insensitive (``512mb`` is 512 MB):

    B = 1    kB = 1000    MB = 10**6    GB = 10**9    TB = 10**12
             KiB = 1024   MiB = 2**20   GiB = 2**30   TiB = 2**40

Durations are float seconds: ``250ms``, ``30s``, ``10m`` (or ``min``),
``1h``, ``2d``, or a plain number of seconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

from guildcore._records import Frozen
from guildcore.errors import ConfigError

TYPE_CHECKING = False  # typing costs ~3 ms at import; mypy reads this name as typing's
if TYPE_CHECKING:
    from fractions import Fraction
    from typing import Any

    import yaml  # imported where used: ~20 ms that only reading a file needs

__all__ = [
    "GB",
    "GIB",
    "KB",
    "KIB",
    "MB",
    "MIB",
    "Kind",
    "Origin",
    "RawMap",
    "bad_value",
    "from_python",
    "parse_duration",
    "parse_size",
    "performance_block",
    "plain",
    "read_text",
    "read_yaml",
    "render_duration",
    "render_scalar",
    "render_size",
]

KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12
KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40

_SIZE_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": KB, "mb": MB, "gb": GB, "tb": TB,
    "kib": KIB, "mib": MIB, "gib": GIB, "tib": TIB,
}  # fmt: skip
# Largest first, so rendering picks the shortest exact form.
_SIZE_DISPLAY = (
    (TIB, "TiB"), (TB, "TB"), (GIB, "GiB"), (GB, "GB"), (MIB, "MiB"), (MB, "MB"), (KIB, "KiB"), (KB, "kB"),
)  # fmt: skip
# In milliseconds, so that both tables hold ints: ``fractions`` (with
# ``decimal``, ~2.5 ms) is imported only when a text value is parsed.
_DURATION_MS_UNITS: dict[str, int] = {
    "": 1000, "s": 1000, "sec": 1000, "secs": 1000,
    "ms": 1,
    "m": 60_000, "min": 60_000, "mins": 60_000,
    "h": 3_600_000, "hr": 3_600_000, "hrs": 3_600_000,
    "d": 86_400_000,
}  # fmt: skip
# Patterns as text, compiled (and cached by ``re``) at their first use: a
# compile costs 0.1-0.5 ms, and a Guild made with the defaults parses none.
_NUMBER_UNIT = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$"
_NONE_WORDS = frozenset({"none", "null", "off"})


class Origin(Frozen):
    """Where a value came from: ``.guild/instructions.md line 14``, ``env GUILD_X``."""

    _fields = ("source", "line")
    __slots__ = _fields
    source: str
    line: int | None

    def __init__(self, source: str, line: int | None = None) -> None:
        self._set("source", source)
        self._set("line", line)

    def __str__(self) -> str:
        return self.source if self.line is None else f"{self.source} line {self.line}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def bad_value(value: object, key: str, origin: Origin | None, expected: str) -> ConfigError:
    """The error for one bad value: ``bad value 'lots' for 'pool.max_agents' in X; expected ...``."""
    where = f" in {origin}" if origin is not None else ""
    return ConfigError(
        f"bad value {_show(value)} for {key!r}{where}; {expected}",
        source=origin.source if origin else None,
        line=origin.line if origin else None,
        key=key,
        value=value,
    )


# -- converters: raw value -> typed value, ValueError when it does not fit ----------------


def _number_and_unit(value: str, units: dict[str, int]) -> Fraction:
    from fractions import Fraction

    match = re.match(_NUMBER_UNIT, value)
    if match is None or match.group(2).lower() not in units:
        raise ValueError(value)
    return Fraction(match.group(1)) * units[match.group(2).lower()]


def _to_size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str):
        size = int(_number_and_unit(value, _SIZE_UNITS))
    else:
        raise ValueError(value)
    if size <= 0:
        raise ValueError(value)
    return size


def _to_seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = float(_number_and_unit(value, _DURATION_MS_UNITS) / 1000)
    else:
        raise ValueError(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(value)
    return seconds


def _is_none(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)


# -- kinds: a converter, what to write instead, how to render --------------------------------


class Kind(Frozen):
    """One kind of setting: how to check a raw value and how to write it back."""

    _fields = ("convert", "expected", "render")
    __slots__ = _fields
    convert: Callable[[object], Any]
    expected: str
    render: Callable[[Any], str]

    def __init__(self, convert: Callable[[object], Any], expected: str, render: Callable[[Any], str]) -> None:
        self._set("convert", convert)
        self._set("expected", expected)
        self._set("render", render)

    def parse(self, value: object, key: str, origin: Origin | None = None) -> Any:
        try:
            return self.convert(value)
        except (ValueError, TypeError, ArithmeticError):
            raise bad_value(value, key, origin, self.expected) from None


def render_scalar(value: object) -> str:
    """YAML text for a plain value: ``true``, ``null``, ``auto``, ``[a, b]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(render_scalar(v) for v in value) + "]"
    if isinstance(value, str):
        import yaml

        # Plain if YAML reads it back as the same string, else quoted.
        return value if value and yaml.safe_load(value) == value else f'"{value}"'
    return str(value)


def render_size(size: int | None) -> str:
    """Shortest exact unit: ``100MB``, ``1MiB``, ``1GB``, ``1500B`` stays ``1500B``."""
    if size is None:
        return "null"
    for factor, unit in _SIZE_DISPLAY:
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def render_duration(seconds: float | None) -> str:
    """Largest exact unit: ``1h``, ``30m``, ``60s``, ``100ms``; ``null`` for None."""
    if seconds is None:
        return "null"
    from fractions import Fraction

    exact = Fraction(seconds).limit_denominator(10**6)
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if exact and exact % factor == 0:
            return f"{int(exact // factor)}{unit}"
    millis = exact * 1000
    if millis.denominator == 1:
        return f"{int(millis)}ms"
    return f"{seconds}s"


SIZE = Kind(
    _to_size,
    "expected a size above 0 such as 512MB, 1GiB, 100 kB or a number of bytes",
    render_size,
)


def duration(*, allow_zero: bool = False, optional: bool = False) -> Kind:
    """A duration in seconds; ``optional`` accepts null/none/off as None (disabled)."""

    def convert(value: object) -> float | None:
        if optional and _is_none(value):
            return None
        seconds = _to_seconds(value)
        if seconds == 0 and not allow_zero:
            raise ValueError(value)
        return seconds

    least = "0 or more" if allow_zero else "above 0"
    expected = f"expected a duration {least} such as 250ms, 30s, 10m, 1h or a number of seconds"
    if optional:
        expected += ", or null to disable"
    return Kind(convert, expected, render_duration)


def integer(minimum: int, *, optional: bool = False, auto: Callable[[], int] | None = None) -> Kind:
    """A whole number >= ``minimum`` (never a bool); ``auto`` maps 'auto'/'auto_detect'."""

    def convert(value: object) -> int | None:
        if optional and value is None:
            return None
        if auto is not None and isinstance(value, str) and value.lower() in ("auto", "auto_detect"):
            return auto()
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(value)
        return value

    expected = f"expected a whole number >= {minimum}"
    if auto is not None:
        expected += " or 'auto'"
    if optional:
        expected += " or null"
    return Kind(convert, expected, render_scalar)


def _to_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(value)
    return value


def _to_fraction(value: object) -> float:
    if isinstance(value, str) and value.strip().endswith("%"):
        number = float(value.strip()[:-1]) / 100
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ValueError(value)
    if not 0 < number <= 1:
        raise ValueError(value)
    return number


def _to_text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(value)
    return value


def _to_preload(value: object) -> bool | tuple[str, ...]:
    if isinstance(value, bool):  # true: what is likely; false: nothing
        return value
    if isinstance(value, str):  # "a, b" from an environment variable
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(value)
    return tuple(value)


BOOL = Kind(_to_bool, "expected true or false", render_scalar)
FRACTION = Kind(
    _to_fraction, "expected a fraction above 0 and at most 1, such as 0.8 or 80%", render_scalar
)
TEXT = Kind(_to_text, "expected a non-empty string", render_scalar)
PRELOAD = Kind(
    _to_preload,
    "expected true, false or a list of module names such as [numpy, mypkg.tasks]",
    render_scalar,
)
OPTIONAL_TEXT = Kind(
    lambda value: None if _is_none(value) else _to_text(value),
    "expected a non-empty string, or null for none",
    render_scalar,
)


def choice(*options: str) -> Kind:
    """One of ``options`` exactly; the message lists them."""

    def convert(value: object) -> str:
        if value not in options:
            raise ValueError(value)
        return str(value)

    return Kind(convert, "choose one of " + ", ".join(options), render_scalar)


def parse_size(value: object, key: str = "size", *, origin: Origin | None = None) -> int:
    """Bytes from ``512MB``, ``1GiB``, ``100 kB``, ``64 MiB`` or an int; above 0."""
    result: int = SIZE.parse(value, key, origin)
    return result


def parse_duration(value: object, key: str = "duration", *, origin: Origin | None = None) -> float:
    """Seconds from ``30s``, ``1h``, ``250ms``, ``10m`` or a number; above 0."""
    result: float = _POSITIVE_DURATION.parse(value, key, origin)
    return result


_POSITIVE_DURATION = duration()


# -- raw values out of YAML and markdown text, with the line of each key ---------------------


class RawMap(Frozen):
    """A mapping as read from a source, with the line of each key (None outside files)."""

    _fields = ("items",)
    __slots__ = _fields
    items: tuple[tuple[object, object, int | None], ...]

    def __init__(self, items: tuple[tuple[object, object, int | None], ...]) -> None:
        self._set("items", items)


def plain(value: object) -> object:
    if isinstance(value, RawMap):
        return {str(k): plain(v) for k, v, _ in value.items}
    return value


def from_python(value: object) -> object:
    if isinstance(value, Mapping):
        return RawMap(tuple((k, from_python(v), None) for k, v in value.items()))
    return value


def read_text(path: str, source: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read {source} ({exc}); check that it is a readable UTF-8 file", source=source
        ) from None


def read_yaml(text: str, source: str, first_line: int) -> object:
    """Parse YAML keeping key lines; ``first_line`` is the file line of the text's first line."""
    import yaml

    # libyaml's parser when built in: ~1 ms where the pure-Python one takes
    # ~10 ms for a project's instructions.md, read by every Guild made.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _from_node(node, loader, first_line)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Origin(source, None if mark is None else first_line + mark.line)
        raise ConfigError(
            f"malformed yaml in {where} ({exc.problem or exc.context}); fix the indentation, colons or quotes there",
            source=source, line=where.line,
        ) from None  # fmt: skip
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"malformed yaml in {source} ({exc}); fix the yaml syntax", source=source
        ) from None
    finally:
        loader.dispose()


def _from_node(node: yaml.Node, loader: yaml.SafeLoader, first_line: int) -> object:
    import yaml

    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve `<<:` merge keys
        return RawMap(tuple(
            (loader.construct_object(k, deep=True), _from_node(v, loader, first_line), first_line + k.start_mark.line)
            for k, v in node.value
        ))  # fmt: skip
    return loader.construct_object(node, deep=True)


_FENCE_OPEN = r"^(`{3,}|~{3,})\s*([A-Za-z0-9_+-]*)"
_PERFORMANCE_KEY = r"^performance\s*:"


def performance_block(text: str, source: str) -> tuple[str, int]:
    """The one ```yaml block whose top key is ``performance:``, and its first line."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        opened = re.match(_FENCE_OPEN, lines[i])
        i += 1
        if opened is None:
            continue
        fence, lang = opened.groups()
        closing = re.compile(rf"^{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        start = i
        while i < len(lines) and not closing.match(lines[i]):
            i += 1
        body, i = lines[start:i], i + 1
        if lang.lower() in ("yaml", "yml") and any(re.match(_PERFORMANCE_KEY, line) for line in body):
            found.append((start + 1, body))
    if not found:
        raise ConfigError(
            f"no ```yaml block with the top key 'performance:' in {source}; add one, "
            "or run 'guild init --force' to write one with every default",
            source=source,
        )
    if len(found) > 1:
        where = " and ".join(str(first - 1) for first, _ in found)
        raise ConfigError(
            f"{len(found)} ```yaml blocks with the top key 'performance:' in {source} (lines {where}); merge them into one",
            source=source, line=found[1][0] - 1,
        )  # fmt: skip
    first, body = found[0]
    return "\n".join(body), first
