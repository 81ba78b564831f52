"""The two views a person looks at, driven as a person would.

``guild top`` runs in a real terminal (tmux): it shows a running Guild's
agents, and Ctrl-C leaves the terminal as it was. The HTML report of a real
run opens in headless Chromium: no console error, no network request, every
chart drawn, and a screenshot that is not blank.

Both need Debian packages (tmux, chromium) that ``.ci/run`` installs.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guildcore import Guild
from guildcore.dashboard.report import CHART_IDS, write_report
from guildcore.metrics import live as live_files
from tests import faults, metricswork

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 30.0


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("GUILD_CACHING__PATH", str(tmp_path / "cache"))
    monkeypatch.setenv("GUILD_RUN_DIR", str(tmp_path / "run"))
    yield tmp_path


class _Tmux:
    """One tmux server of our own (its own socket), one session, one window."""

    def __init__(self, socket: str, env: dict[str, str]) -> None:
        assert shutil.which("tmux"), "tmux is not installed (apt-get install tmux; .ci/run does)"
        self.base = ["tmux", "-S", socket]
        flags = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
        self.run("new-session", "-d", "-s", "top", "-x", "160", "-y", "50", *flags, "bash", "--norc", "--noprofile")

    def run(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], check=True, capture_output=True, text=True, timeout=30).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def alternate_on(self) -> bool:
        return self.run("display-message", "-p", "-t", "top", "#{alternate_on}").strip() == "1"

    def wait_for(self, *texts: str) -> str:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            screen = self.screen()
            if all(t in screen for t in texts):
                return screen
            if time.monotonic() > deadline:
                raise TimeoutError(f"tmux never showed {texts}; last screen:\n{screen}")
            time.sleep(0.05)  # polling the terminal's contents, an outside state, with a deadline

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30)


def test_guild_top_in_a_terminal_shows_the_agents_and_ctrl_c_leaves_it_clean(isolated: Path) -> None:
    started = faults.make_fifo(str(isolated / "started"))
    release = faults.make_fifo(str(isolated / "release"))
    env = {"GUILD_RUN_DIR": str(isolated / "run"), "PYTHONPATH": str(REPO), "PS1": "$ ", "TERM": "xterm-256color"}
    with Guild(max_agents=1, timeout=None) as g:
        fut = g.submit(faults.block, started, release)
        agent_pid = faults.wait_started(started)
        deadline = time.monotonic() + DEADLINE_S
        while not live_files.list_running(env["GUILD_RUN_DIR"]):  # the first status comes 0.5 s after start
            assert time.monotonic() < deadline, "the Guild never published its status"
            time.sleep(0.02)
        tmux = _Tmux(str(isolated / "tmux.sock"), env)
        try:
            tmux.run("send-keys", "-t", "top", f"{sys.executable} -m guildcore top; echo TOP_EXIT=$?", "Enter")
            screen = tmux.wait_for("running guilds", f"pid {os.getpid()}", "agent 1", str(agent_pid), "BUSY", "tests.faults:block")
            assert tmux.alternate_on(), "guild top should draw on the alternate screen"
            assert "Ctrl-C to quit" in screen and "memory" in screen
            tmux.run("send-keys", "-t", "top", "C-c")
            after = tmux.wait_for("TOP_EXIT=0")
            assert not tmux.alternate_on()
            assert "Traceback" not in after and "running guilds" not in after  # the frame went with the alternate screen
            lines = [line for line in after.splitlines() if line.strip()]
            assert lines[-2:] == ["TOP_EXIT=0", "$"]  # the prompt is back, on a clean line
        finally:
            tmux.close()
            faults.release(release)
        assert fut.result(timeout=30) == "released"


def _real_run(tmp: Path) -> dict[str, object]:
    """A run with tasks on two agents, a cache, a failure and an alert."""
    with Guild(max_agents=2, timeout=None) as g:
        g.map(metricswork.spin, [0.02] * 12, chunksize=1)
        g.map(faults.inc, range(200), cache=True)
        g.map(faults.inc, range(200), cache=True)
        with pytest.raises(ValueError):
            g.submit(faults.fail, "on purpose").result()
    record = g.metrics()
    assert record is not None
    return record


def test_the_report_renders_in_headless_chromium_without_errors_or_network(isolated: Path) -> None:
    import numpy as np
    from PIL import Image

    from tools.headless_chromium import Chromium, executable, wait_for

    assert executable(), "chromium is not installed (apt-get install chromium; .ci/run does)"
    page = isolated / "report.html"
    write_report(_real_run(isolated), str(page))
    with Chromium(width=1400, height=1000) as browser:
        browser.open(page.as_uri())
        assert wait_for(browser, ".js-plotly-plot", len(CHART_IDS)) == len(CHART_IDS)
        drawn = browser.evaluate(
            "Array.from(document.querySelectorAll('.chart')).map(c => [c.id, c.querySelectorAll('.main-svg').length])"
        )
        assert {chart for chart, svgs in drawn if svgs > 0} == {f"chart-{c}" for c in CHART_IDS}
        bars = browser.evaluate("document.querySelectorAll('#chart-tasks .barlayer .point').length")
        lines = browser.evaluate("document.querySelectorAll('#chart-memory .scatterlayer .trace').length")
        assert bars >= 12 and lines >= 1
        assert browser.evaluate("document.body.innerText.includes('tests.faults:fail')")
        assert browser.errors() == []
        assert all(url.startswith("file://") for url in browser.requests()), browser.requests()
        png = browser.screenshot()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width >= 1000 and image.height >= 2000
    pixels = np.asarray(image).reshape(-1, 3)
    assert (pixels.min(axis=1) > 245).mean() < 0.9, "the screenshot is (nearly) blank"
    assert len(np.unique(pixels[::7], axis=0)) > 50, "the screenshot has no charts' colours"
