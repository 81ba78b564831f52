"""The public facade: every name in ``guildcore.__all__`` resolves, ``guildcore.context``
stays the accessor function whatever is imported first, and ``import guildcore``
stays cheap (heavy modules load on first use, not at import).

Import-order checks run in fresh interpreters: this process has imported
everything already.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import guildcore

REPO = Path(guildcore.__file__).resolve().parent.parent

# Modules that cost milliseconds and that ``import guildcore`` alone has no use for.
NOT_AT_IMPORT = (
    "yaml",
    "difflib",
    "psutil",
    "lmdb",
    "lz4",
    "zstandard",
    "numpy",
    "msgpack",
    "xxhash",
    "multiprocessing",
    "concurrent.futures",
    "guildcore.engine",
    "guildcore.cache",
    "guildcore.config",
    "guildcore.errors",
    "guildcore.codec",
)


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_every_public_name_resolves() -> None:
    for name in guildcore.__all__:
        assert getattr(guildcore, name) is not None, name
    assert set(guildcore.__all__) <= set(dir(guildcore))
    assert guildcore.Guild.__module__ == "guildcore.engine.executor"
    assert guildcore.ContextRef is sys.modules["guildcore.context.ref"].ContextRef


def test_star_import_and_unknown_names() -> None:
    namespace: dict[str, object] = {}
    exec("from guildcore import *", namespace)
    assert set(guildcore.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="has no attribute 'Gild'"):
        guildcore.Gild  # noqa: B018
    with pytest.raises(ImportError):
        exec("from guildcore import Gild", {})


def test_context_outside_a_task_is_a_context_error() -> None:
    with pytest.raises(guildcore.ContextError, match=r"call g\.share\(mapping\) first"):
        guildcore.context()


def test_import_guildcore_loads_no_heavy_module() -> None:
    out = _run(
        f"""
        import sys
        import guildcore
        heavy = {NOT_AT_IMPORT!r}
        print(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy))))
        """
    )
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "first",
    [
        "import guildcore.context.view",
        "import guildcore.context.registry, guildcore.context.writer, guildcore.context.ref",
        "from guildcore.context import view, current",
        "import guildcore.engine.executor",
        "from guildcore import Guild, ContextRef, context",
        "import guildcore.context",
    ],
)
def test_context_is_the_accessor_whatever_is_imported_first(first: str) -> None:
    out = _run(
        f"""
        import types
        {first}
        import guildcore
        import guildcore.context.view, guildcore.context.current, guildcore.context.writer
        from guildcore.context import current, ContextRef, attach
        assert callable(guildcore.context), guildcore.context
        assert not isinstance(guildcore.context, types.ModuleType)
        assert guildcore.context is current
        assert guildcore.ContextRef is ContextRef
        try:
            guildcore.context()
        except guildcore.ContextError:
            print("ok")
        """
    )
    assert out.strip() == "ok"


def test_a_context_ref_decodes_before_its_module_is_imported() -> None:
    # An agent may receive a reference before anything imported guildcore.context.ref.
    from guildcore.codec import encode

    data = encode(guildcore.ContextRef("guild_1_1_x", 3, 4096))
    out = _run(
        f"""
        import sys
        from guildcore.codec import decode
        assert "guildcore.context.ref" not in sys.modules
        print(repr(decode({data!r})))
        """
    )
    assert out.strip() == "ContextRef(name='guild_1_1_x', generation=3, size=4096)"


def _sample_errors() -> list[BaseException]:
    from guildcore import errors as e

    facts = {"task_id": 3, "fn": "m:f", "agent_id": 1, "pid": 42, "exitcode": -9}
    return [
        e.GuildError("g"),
        e.ConfigError("c", source="config.yaml", line=4, key="pool.max_agents", value=-1),
        e.SerializationError("s"),
        e.SerializationError("s2", stage="result", original=ValueError("v")),
        e.SerializationError.because("s3", __import__("pickle").PicklingError("p"), stage="arguments"),
        e.ContextError("x"),
        e.CacheError("k"),
        e.TaskError("t", task_id=3, fn="m:f"),
        e.TaskTimeout("timeout", task_id=3, fn="m:f", timeout_s=1.5, agent_id=1),
        e.TaskCancelled("cancelled", task_id=3),
        e.AgentError("a", **facts),
        e.AgentDied("died", **facts),
        e.MemoryLimitExceeded("mem", limit_bytes=100, peak_bytes=150, **facts),
        e.PoolBroken("broken"),
        e.ShutdownError("shut"),
        e.RemoteTraceback("Traceback ..."),
    ]


@pytest.mark.parametrize("err", _sample_errors(), ids=lambda err: type(err).__name__)
def test_every_error_pickles_with_its_facts_under_its_public_name(err: BaseException) -> None:
    import pickle

    assert type(err).__module__ == "guildcore.errors"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and back.args == err.args and _facts(back) == _facts(err)
    # Pickles written before the hierarchy was split name the rebuild helper
    # under guildcore.errors (protocol 0 spells module names out).
    old = pickle.dumps(err, protocol=0).replace(b"cguildcore._errors\n", b"cguildcore.errors\n")
    assert _facts(pickle.loads(old)) == _facts(err)


def _facts(err: BaseException) -> dict[str, object]:
    """Attributes, with exceptions among them compared by type and args."""
    return {k: (type(v), v.args) if isinstance(v, BaseException) else v for k, v in vars(err).items()}


def test_context_refs_pickled_as_dataclasses_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import pickle

    from guildcore.context import ref as ref_module

    @dataclasses.dataclass(frozen=True, slots=True)
    class ContextRef:  # the earlier definition, pickled under the same name
        name: str
        generation: int
        size: int

    ContextRef.__module__, ContextRef.__qualname__ = ref_module.__name__, "ContextRef"
    with monkeypatch.context() as patch:
        patch.setattr(ref_module, "ContextRef", ContextRef)
        blob = pickle.dumps(ContextRef("guild_1_2_ab", 2, 4096))
    assert pickle.loads(blob) == ref_module.ContextRef("guild_1_2_ab", 2, 4096)
