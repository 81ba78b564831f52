"""Every error guildcore raises on purpose is in the ``GuildError`` tree.

Read from the source: a ``raise`` of a builtin exception class is allowed
only where a protocol asks for exactly that type as an answer, not as a
failure (listed below with the reason). Everything else raises a
``GuildError`` subclass, which is also the builtin type where the stdlib's
contract names one (``ConfigError`` is a ``ValueError``, ...).
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import guildcore
from guildcore.errors import (
    ConfigError,
    ConfigTypeError,
    GuildError,
    SerializationError,
    ShutdownError,
)

PACKAGE = Path(guildcore.__file__).resolve().parent

# (file relative to the package, builtin exception): why the protocol asks for it.
ALLOWED = {
    ("__init__.py", "AttributeError"): "module __getattr__ answers a missing name",
    ("context/__init__.py", "AttributeError"): "module __getattr__ answers a missing name",
    ("metrics/__init__.py", "AttributeError"): "module __getattr__ answers a missing name",
    ("engine/lazymain.py", "AttributeError"): "module __getattr__ answers a missing name",
    ("engine/template.py", "AttributeError"): "module __getattr__ answers a missing name",
    ("errors.py", "AttributeError"): "module __getattr__ answers a missing name",
    ("engine/channel.py", "EOFError"): "Connection.recv_bytes: the end of the stream between frames",
    ("engine/channel.py", "OSError"): "Connection: a closed handle, or the end of the stream inside a frame",
    ("_records.py", "TypeError"): "a record's constructor answers wrong arguments as any call (and a dataclass) does",
    ("_records.py", "ValueError"): "field() refuses a default and a default_factory together, as dataclasses.field",
    ("process/call.py", "AttributeError"): "module __getattr__ answers a missing name",
    ("context/ref.py", "AttributeError"): "__setattr__/__delattr__ of a read-only object",
    ("monitor.py", "TypeError"): "replace() with a field the record lacks (as dataclasses.replace)",
    ("context/view.py", "KeyError"): "Mapping.__getitem__ answers a missing key",
    ("engine/shmbuf.py", "ValueError"): "io: an operation on a closed stream",
    ("codec.py", "ValueError"): "caught in the same function and reworded as SerializationError",
    ("config_values.py", "ValueError"): "converters signal a bad value; Kind.parse turns it into ConfigError",
    ("demo/command.py", "ValueError"): "argparse type= functions signal a bad value with ValueError",
    ("__main__.py", "SystemExit"): "the command's exit code",
    ("_errors.py", "AssertionError"): "marks a line that cannot be reached",
    ("codec.py", "RecursionError"): "caught by encode(), which pickles the whole value instead",
    ("engine/iterators.py", "StopIteration"): "the iterator protocol",
    ("engine/stream.py", "StopIteration"): "the iterator protocol",
}

BUILTIN_ERRORS = {name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)}


def _builtin_raises() -> set[tuple[str, str, int]]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id in BUILTIN_ERRORS:
                found.add((str(path.relative_to(PACKAGE)), target.id, node.lineno))
    return found


def test_no_builtin_error_is_raised_outside_a_protocol_answer() -> None:
    offenders = sorted(r for r in _builtin_raises() if (r[0], r[1]) not in ALLOWED)
    assert offenders == []


def test_guildcore_errors_keep_the_stdlib_types_callers_catch() -> None:
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, GuildError)
    assert issubclass(ConfigTypeError, TypeError) and issubclass(ConfigTypeError, ConfigError)
    assert issubclass(SerializationError, TypeError)
    assert issubclass(ShutdownError, RuntimeError)
