"""The progress bar: drawn on a terminal, silent otherwise."""

from __future__ import annotations

import io

from guildcore.engine.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(10, enabled=True, stream=out)
    bar.advance(10)
    bar.close()
    assert out.getvalue() == ""


def test_shows_items_rate_and_eta_on_a_terminal() -> None:
    out = _Tty()
    bar = Progress(200, enabled=True, label="mod:fn", stream=out)
    bar.advance(50)
    text = bar.render(bar._t0 + 1.0)
    assert text.startswith("mod:fn [") and "50/200" in text and "50.0/s" in text and "ETA 3s" in text
    bar.advance(150)
    bar.close()
    last_line = out.getvalue().split("\r")[-1]
    assert "200/200" in last_line and last_line.endswith("\n")


def test_disabled_even_on_a_terminal() -> None:
    out = _Tty()
    bar = Progress(5, enabled=False, stream=out)
    bar.advance(5)
    bar.close()
    assert out.getvalue() == ""
