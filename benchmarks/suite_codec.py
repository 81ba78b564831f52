"""Codec: guildcore's msgpack codec against pickle protocol 5, and import time.

Cases (each system does encode + decode of the same value):

- ``dict payload``: a dict of a few strings and ints (a typical task payload);
- ``list 1000 ints``: ``list(range(1000))``;
- ``bytes 1MB``: one megabyte of random bytes;
- ``task frame``: ``encode_frame``/``decode_frame`` of a TASK frame with a
  tuple of arguments and a kwargs dict, against pickling the same tuple.

``msgpack raw`` (plain ``packb``/``unpackb``, not type-faithful) shows the
floor the codec's checks sit on. Target: guildcore no slower than pickle p5.

Import time: fresh interpreters running ``python -c "import guildcore"`` and
``python -c "pass"``, interleaved; the difference of medians is what
guildcore adds (target under 50 ms).
"""

from __future__ import annotations

import functools
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgpack

from benchmarks.harness import Bench
from guildcore.codec import Kind, decode, decode_frame, encode, encode_frame

NAME = "codec"

REPO = Path(__file__).resolve().parent.parent
IMPORT_TARGET_MS = 50.0
PAYLOAD = {"path": "src/pkg/module.py", "mode": "rewrite", "user": "ann", "line": 120, "attempt": 2}
INTS = list(range(1000))
BLOB = os.urandom(1_000_000)
TASK_FIELDS = ("mymod:rewrite", ("src/pkg/module.py", 120), {"dry_run": False, "limit": 50})

# calls per sample (full run, quick run): each sample takes some 10-50 ms here
NUMBERS = {
    "dict payload": (20_000, 2_000),
    "list 1000 ints": (1_000, 100),
    "bytes 1MB": (200, 20),
    "task frame": (20_000, 2_000),
}


def _guildcore(value: object) -> object:
    return decode(encode(value))


def _pickle(value: object) -> object:
    return pickle.loads(pickle.dumps(value, protocol=5))


def _msgpack_raw(value: object) -> object:
    return msgpack.unpackb(msgpack.packb(value))


def _codec_cases(bench: Bench) -> None:
    values = {"dict payload": PAYLOAD, "list 1000 ints": INTS, "bytes 1MB": BLOB}
    for group, value in values.items():
        bench.compare(
            group,
            {
                "guildcore": functools.partial(_guildcore, value),
                "pickle p5": functools.partial(_pickle, value),
                "msgpack raw": functools.partial(_msgpack_raw, value),
            },
            number=NUMBERS[group][bench.quick],
            baseline="pickle p5",
            unit="µs",
        )
    frame = (int(Kind.TASK), 17, *TASK_FIELDS)
    bench.compare(
        "task frame",
        {
            "guildcore": lambda: decode_frame(encode_frame(Kind.TASK, 17, *TASK_FIELDS)),
            "pickle p5": lambda: pickle.loads(pickle.dumps(frame, protocol=5)),
        },
        number=NUMBERS["task frame"][bench.quick],
        baseline="pickle p5",
        unit="µs",
    )


def _interpreter_ms(code: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True)
    return (time.perf_counter() - t0) * 1000


def _import_time(bench: Bench) -> None:
    runs = 7 if bench.quick else 30
    programs = {
        "guildcore": "import guildcore",
        "guildcore.codec": "import guildcore.codec",
        "python": "pass",
    }
    samples: dict[str, list[float]] = {name: [] for name in programs}
    for code in programs.values():  # warm the page cache and .pyc files
        _interpreter_ms(code)
    for _ in range(runs):
        for name, code in programs.items():
            samples[name].append(_interpreter_ms(code))
    for name, values in samples.items():
        bench.record("interpreter start + import", name, values, unit="ms", baseline="python")
    for name in ("guildcore", "guildcore.codec"):
        added = statistics.median(samples[name]) - statistics.median(samples["python"])
        verdict = "within" if added < IMPORT_TARGET_MS else "OVER"
        bench.note(
            f"import {name} adds {added:.1f} ms to a fresh interpreter "
            f"({verdict} the {IMPORT_TARGET_MS:.0f} ms target; medians of {runs} runs)"
        )


def run(bench: Bench) -> None:
    _codec_cases(bench)
    _import_time(bench)
