"""What a script's first result imports: modules kept off that path stay off it.

A script that makes a ``Guild`` and gets one result waits for every module
imported on the way; the first result from a fresh interpreter is measured
against ``ProcessPoolExecutor`` (``benchmarks/suite_cold.py``). These tests
name the modules that path once imported and no longer needs, and fail if
one comes back, without timing anything: each runs a fresh interpreter in
an empty project folder (an empty ``.guild``: no config, no cache store)
and lists what it imported.

Not listed, because the path needs them: ``logging`` (``concurrent.futures``
imports it for ``Future``), ``datetime`` (``msgpack``), ``threading``,
``selectors``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Each once imported on the way to a first result, and what brought it:
FORBIDDEN = {
    "yaml": "config parsing, when no config file exists",
    "json": "the agents' cache settings",
    "dataclasses": "config sections, events and records (dataclasses imports inspect)",
    "inspect": "dataclasses",
    "ast": "dataclasses, through inspect",
    "fractions": "config value parsing",
    "decimal": "fractions",
    "typing": "annotations' names, NamedTuples and TypeVars at run time",
    "pickle": "the codec's fallback and functions sent by value",
    "socket": "the template's control socket",
    "array": "descriptors passed to the template",
    "ctypes": "prctl for the parent-death signal",
    "multiprocessing": "the start-method context, unused with a template",
    "multiprocessing.connection": "agents' pipes (tempfile, shutil, bz2, lzma, subprocess)",
    "concurrent.futures.process": "BrokenProcessPool, the parent of AgentDied and PoolBroken",
    "tempfile": "multiprocessing.connection",
    "subprocess": "multiprocessing.util",
    "asyncio": "never needed",
    "psutil": "memory probes: read from /proc",
    "lmdb": "the cache store, when caching is off or no store exists",
    "xxhash": "cache keys",
    "importlib": "lazy names' one import_module call (~0.3 ms; __import__ does it)",
}

_LIST = "import sys; found = sorted(m for m in sys.modules if m in {names!r})"
_PRINT = "import json; print(json.dumps(found))"


def _imported(tmp_path: Path, program: str, after: str = "", names: set[str] | None = None) -> list[str]:
    """The forbidden modules (or ``names``) ``program`` imported (``after`` runs once they are listed)."""
    code = "\n".join([program, _LIST.format(names=set(FORBIDDEN) if names is None else names), after, _PRINT])
    # An empty project: its own .guild folder (no config file, no store), so
    # that no .guild above tmp_path is found instead.
    (tmp_path / ".guild").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUILD_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    found: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def test_import_guildcore_and_guild_keep_off_the_heavy_modules(tmp_path: Path) -> None:
    found = _imported(tmp_path, "import guildcore\nfrom guildcore import Guild")
    assert {m: FORBIDDEN[m] for m in found} == {}


def test_a_first_result_keeps_off_the_heavy_modules(tmp_path: Path) -> None:
    # One result from an agent forked from the template (the caller has no
    # other thread): the caller imports none of them on the way. Shutting
    # down may (the run's history goes to its store).
    program = "from guildcore import Guild\ng = Guild(max_agents=2)\nassert g.submit(abs, -3).result() == 3"
    after = "assert g.stats()['start_method'] == 'fork', g.stats()['start_method']\ng.shutdown()"
    found = _imported(tmp_path, program, after)
    assert {m: FORBIDDEN[m] for m in found} == {}


def test_a_first_map_keeps_off_the_heavy_modules_but_xxhash(tmp_path: Path) -> None:
    # Routing names the function by a hash of its code (xxhash, ~1 ms).
    program = (
        "from guildcore import Guild\n"
        "g = Guild(max_agents=2)\n"
        "assert g.map(abs, range(-5000, 5000)) == [abs(x) for x in range(-5000, 5000)]"
    )
    found = _imported(tmp_path, program, "g.shutdown()")
    assert {m: FORBIDDEN[m] for m in found if m != "xxhash"} == {}


def test_a_guild_executors_first_result_keeps_off_the_heavy_modules(tmp_path: Path) -> None:
    # BrokenProcessPool (concurrent.futures.process) loads only when a failure needs it.
    program = (
        "from guildcore import GuildExecutor\n"
        "ex = GuildExecutor(max_workers=2)\n"
        "assert ex.submit(abs, -3).result() == 3"
    )
    found = _imported(tmp_path, program, "ex.shutdown()")
    assert {m: FORBIDDEN[m] for m in found} == {}


# The state machine's rules load when the pool starts, right after the
# template's fork, while the template forks the first agent.
AT_POOL_START = {
    "guildcore.engine.machine",
    "guildcore.engine.poolstate",
    "guildcore.engine.taskrules",
    "guildcore.engine.agentrules",
    "guildcore.engine.monitorrules",
}


def test_making_a_guild_leaves_the_state_machine_to_the_pool_start(tmp_path: Path) -> None:
    program = "from guildcore import Guild\ng = Guild(max_agents=2)"
    assert _imported(tmp_path, program, "g.shutdown()", names=AT_POOL_START) == []
    program += "\nassert g.submit(abs, -3).result() == 3"
    assert set(_imported(tmp_path, program, "g.shutdown()", names=AT_POOL_START)) == AT_POOL_START


# Loaded by what uses them, not by a submit: what maps need by the first map,
# the shared-context registry and shared memory by the first share(), the
# metrics' fold and alert rules by the first tick of the recorder (or a read
# of the metrics), post-mortems by the first task that fails.
ON_FIRST_USE = {
    "guildcore.engine.routing": "g.map(abs, [-1, -2])",
    "guildcore.engine.progress": "g.map(abs, [-1, -2])",
    "guildcore.engine.batching": "g.map(abs, [-1, -1], cache=True)",
    "guildcore.context.registry": "g.share({'k': 1})",
    "mmap": "g.share({'k': 1})",
    "_posixshmem": "g.share({'k': 1})",
    "guildcore.metrics.fold": "g.metrics()",
    "guildcore.metrics.alerts": "g.metrics()",
    "guildcore.engine.postmortem": "assert g.submit(int, 'x').exception() is not None",
}
# Loaded by what needs them, none of which a plain submit does: a result too
# big for a frame, a task run in the supervisor, a retried task, chunks, a
# workflow's task groups, an agent's memory cap (in the template and agents).
NOT_ON_A_FIRST_RESULT = {
    "guildcore.engine.shmbuf",
    "guildcore.engine.inline",
    "guildcore.engine.retry",
    "guildcore.engine.chunking",
    "guildcore.engine.taskgroup",
    "resource",
}


def test_a_first_result_leaves_maps_contexts_metrics_folding_and_failures_to_their_first_use(tmp_path: Path) -> None:
    program = "from guildcore import Guild\ng = Guild(max_agents=2)\nassert g.submit(abs, -3).result() == 3"
    assert _imported(tmp_path, program, names=set(ON_FIRST_USE) | NOT_ON_A_FIRST_RESULT) == []
    for module, use in ON_FIRST_USE.items():
        assert _imported(tmp_path, f"{program}\n{use}", "g.shutdown()", names={module}) == [module], use


def test_a_first_result_within_the_first_reading_leaves_the_monitor_to_it(tmp_path: Path) -> None:
    # The monitor (its module, the probe's /proc reader) loads with its first
    # reading, FIRST_READING_S after the pool starts, or with a read of it.
    from guildcore.engine.monitorrules import FIRST_READING_S

    names = {"guildcore.monitor", "guildcore.procfs"}
    program = (
        "import time\nfrom guildcore import Guild\ng = Guild(max_agents=2)\nmade = time.monotonic()\n"
        "assert g.submit(abs, -3).result() == 3\nelapsed = time.monotonic() - made"
    )
    # Only a result back before the first reading was due can show it (a loaded host may be slower).
    found = _imported(tmp_path, program, f"found = found if elapsed < {FIRST_READING_S!r} else []", names=names)
    assert found == []
    assert _imported(tmp_path, f"{program}\ng.stats()", "g.shutdown()", names={"guildcore.monitor"}) == ["guildcore.monitor"]
