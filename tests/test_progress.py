"""The progress bar: drawn by rich on a terminal, silent otherwise; rate, ETA, agents busy, cache hits."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from guildcore.engine.progress import Progress

REPO = Path(__file__).resolve().parent.parent


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _plain(text: str) -> str:
    """Terminal output without escape sequences, split on carriage returns and newlines."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(10, enabled=True, stream=out)
    bar.advance(10)
    bar.close()
    assert out.getvalue() == "" and not bar.enabled


def test_disabled_even_on_a_terminal() -> None:
    out = _Tty()
    bar = Progress(5, enabled=False, stream=out)
    bar.advance(5)
    bar.close()
    assert out.getvalue() == ""


def test_shows_items_rate_eta_agents_and_cache_hits_on_a_terminal() -> None:
    out = _Tty()
    live = {"agents": [{"state": "BUSY"}, {"state": "IDLE"}, {"state": "BUSY"}]}
    bar = Progress(200, enabled=True, label="mod:fn", stream=out, status=lambda: live, cache_hits=1234)
    bar.advance(50)
    bar.advance(150)
    bar.close()
    final = _plain(out.getvalue()).replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("mod:fn"), final
    assert "200/200" in final
    assert re.search(r"\d+(\.\d)?[kM]?/s", final), final
    assert "in " in final  # finished: the elapsed time replaces the ETA
    assert "agents 2/3 busy" in final
    assert "cache hits 1,234" in final
    assert _plain(out.getvalue()).endswith("\n")  # the bar keeps its line; the next output starts below


def test_eta_while_running() -> None:
    from rich.console import Console

    out = _Tty()
    bar = Progress(100, enabled=True, label="x", stream=out)
    try:
        bar.advance(10)
        rich = bar._bar
        task = rich.tasks[0]
        console = Console(file=io.StringIO(), width=200)
        with console.capture() as capture:
            console.print(rich.make_tasks_table([task]))
        text = capture.get()
        assert "10/100" in text and "ETA" in text
    finally:
        bar.close()


def test_a_guild_map_draws_one_bar_without_importing_rich_otherwise() -> None:
    """Without a terminal a map with progress=True never imports rich; with one, it draws."""
    code = textwrap.dedent(
        """
        import io, sys
        from guildcore import Guild
        from tests.faults import inc

        class Tty(io.StringIO):
            def isatty(self):
                return True

        with Guild(max_agents=1, timeout=None) as g:
            g.map(inc, range(50), progress=True)
            assert "rich" not in sys.modules, "rich imported without a terminal"
            sys.stderr = tty = Tty()
            g.map(inc, range(50), chunksize=5, progress=True)
            sys.stderr = sys.__stderr__
        print(tty.getvalue().count("50/50") >= 1, "rich" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
