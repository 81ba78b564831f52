"""Open a page in headless Chromium and look at it: console errors, network, DOM, a screenshot.

Usage::

    python tools/headless_chromium.py PAGE.html [-o SHOT.png] [--width 1400] [--wait-for CSS] [--count N]

Prints the console errors, the URLs the page asked for, and (with ``-o``)
writes a full-page screenshot. The test of ``guild report`` drives the same
``Chromium`` class.

Chromium runs with ``--remote-debugging-port=0``; the port it picked is read
from ``DevToolsActivePort`` in its profile folder, and the page is driven
over the DevTools protocol with ``websocket-client``. On this kind of host
the background-networking flags are needed: without them Chromium's own
connections are refused by the closed network and it logs errors.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)
START_DEADLINE_S = 30.0
CALL_DEADLINE_S = 60.0


def executable() -> str | None:
    """The Chromium binary: ``$CHROMIUM``, else the first of chromium, chromium-browser, google-chrome on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """One headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, *, width: int = 1400, height: int = 1000) -> None:
        import websocket  # websocket-client

        binary = executable()
        if binary is None:
            raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="guild-chromium-")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = self._port()
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=CALL_DEADLINE_S, suppress_origin=True)
        except BaseException:
            self.close()
            raise
        self._id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def _port(self) -> int:
        """Wait for Chromium to write the port it listens on (a file in its profile)."""
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited at start ({self.proc.returncode}): {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                with open(path) as f:
                    first = f.readline().strip()
                if first:
                    return int(first)
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"chromium did not open its debugging port within {START_DEADLINE_S:.0f} s")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command; keep the events that arrive before its answer."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.call("Page.navigate", url=url)
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            message = json.loads(self.ws.recv())
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                details = p.get("exceptionDetails", {})
                out.append(f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')}")
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        """Every URL the page asked for."""
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def screenshot(self) -> bytes:
        """A PNG of the whole page (beyond the window)."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.send(json.dumps({"id": 0, "method": "Browser.close"}))
            except Exception:
                pass
            ws.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(browser: Chromium, selector: str, count: int, timeout_s: float = 30.0) -> int:
    """Wait (in the page, by animation frames) until ``count`` elements match ``selector``."""
    js = f"""new Promise((resolve) => {{
        const until = performance.now() + {timeout_s * 1000};
        const check = () => {{
            const n = document.querySelectorAll({json.dumps(selector)}).length;
            if (n >= {count} || performance.now() > until) resolve(n); else requestAnimationFrame(check);
        }};
        check();
    }})"""
    return int(browser.evaluate(js))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page")
    parser.add_argument("-o", "--output", help="write a full-page screenshot here")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--wait-for", default=".js-plotly-plot .main-svg", metavar="CSS")
    parser.add_argument("--count", type=int, default=1, help="elements --wait-for must match")
    args = parser.parse_args(argv)
    with Chromium(width=args.width) as browser:
        browser.open("file://" + os.path.abspath(args.page))
        found = wait_for(browser, args.wait_for, args.count)
        print(f"{found} elements match {args.wait_for!r}")
        for url in browser.requests():
            print(f"request: {url}")
        for err in browser.errors():
            print(f"error: {err}")
        if args.output:
            with open(args.output, "wb") as f:
                f.write(browser.screenshot())
            print(f"wrote {args.output}")
        return 1 if browser.errors() else 0


if __name__ == "__main__":
    sys.exit(main())
