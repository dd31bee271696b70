"""Drive headless Chromium (Debian's /usr/bin/chromium) from Trio tests.

Usage::

    async with open_browser() as browser:
        page = await browser.open_viewer(viewer_url(server, user="ann", password=PW, room=rid))
        state = await page.wait_for("s => s.status === 'joined'", timeout=10)

Why a dedicated thread. Playwright's Python API exists in two flavours, both
tied to asyncio: the async API needs an asyncio loop (a Trio test has none;
trio-asyncio could host one, but Playwright's subprocess pipes and its
greenlet machinery are exactly what that bridge handles worst), and the sync
API runs its own asyncio loop plus greenlets *in the calling thread* and
refuses to run inside a running loop. The sync API is the robust choice, on
one condition: every call on a Playwright object must come from the thread
that created it. ``trio.to_thread.run_sync`` does not promise that (it picks
any idle cached thread), so this module starts ONE thread per browser that
owns Playwright, Chromium and every page, and executes jobs that Trio
submits through a queue. The Trio side waits for each job's result on a
``trio.Event`` set via ``trio.from_thread`` and never blocks the event loop,
so the dev server (and an agent) keep running in the same Trio run while the
browser is being driven.

Consequences worth knowing:
- Jobs run one at a time, so a job must never block for long: waiting is
  done by polling from Trio (:meth:`ViewerPage.wait_for`), and every
  JavaScript evaluation is bounded by a timer inside the page, so a stuck
  page cannot wedge the worker thread.
- Playwright delivers events (console messages, page errors) only while the
  worker is inside a Playwright call; :meth:`ViewerPage.console` makes a
  round trip first, so what it returns is complete up to that moment.
- Cancelling a Trio wait abandons the job's result; the job itself still
  finishes in the worker (it is short by construction).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import outcome
import pytest
import trio

from .devserver import DevServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # getUserMedia: grant without a prompt, and feed Chromium's synthetic camera and tone.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Plain IP host candidates instead of mDNS names that nobody here resolves.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
LAUNCH_TIMEOUT = 30.0
CALL_TIMEOUT = 20.0
CLOSE_TIMEOUT = 10.0
VIEWPORT = {"width": 1280, "height": 800}

T = TypeVar("T")

# Evaluates EXPRESSION (awaiting a promise) but rejects after `ms` milliseconds.
_BOUNDED_EVALUATION = """async (ms) => {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`evaluation timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([Promise.resolve().then(() => (EXPRESSION)), limit]);
  } finally {
    clearTimeout(timer);
  }
}"""


def viewer_url(server: DevServer, path: str = "/", /, **params: str | int | bool) -> str:
    """The viewer page's URL on ``server`` with query parameters (True becomes ``1``)."""
    query = {k: ("1" if v is True else str(v)) for k, v in params.items() if v is not False}
    return f"{server.api_url}{path}" + (f"?{urlencode(query)}" if query else "")


class _Job:
    """A function to run on the worker thread, and the Trio-side wait for its outcome."""

    def __init__(self, fn: Callable[[], Any], token: trio.lowlevel.TrioToken) -> None:
        self.fn = fn
        self.token = token
        self.result: outcome.Outcome[Any] | None = None
        self.done = trio.Event()

    def run(self) -> None:
        self.finish(outcome.capture(self.fn))

    def finish(self, result: outcome.Outcome[Any]) -> None:
        self.result = result
        # RunFinishedError: the Trio side is gone, nobody waits for this.
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self.done.set, trio_token=self.token)


class _Worker:
    """The thread that owns Playwright; everything Playwright happens in :meth:`_main`."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="playwright-worker", daemon=True)
        self.playwright: Any = None
        self.browser: Any = None

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        # Imported here: only browser tests need Playwright installed.
        from playwright.sync_api import sync_playwright

        # Once trio-asyncio is imported anywhere in the process (the agent's
        # rtc tests import it), new asyncio loops are Trio-backed in every
        # thread; Playwright needs a plain one. trio-asyncio keeps a policy set
        # this way per thread, so the Trio side is untouched.
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())

        error: BaseException | None = None
        try:
            with sync_playwright() as pw:
                self.playwright = pw
                try:
                    while (job := self._jobs.get()) is not None:
                        job.run()
                finally:
                    if self.browser is not None:
                        # Chromium may be gone already; the driver's exit cleans up.
                        with contextlib.suppress(Exception):
                            self.browser.close()
        except BaseException as exc:
            error = exc
        finally:
            with self._lock:
                self._closed = True
            reason = RuntimeError(f"the Playwright worker thread has stopped ({error!r})")
            while True:  # fail whatever is still queued, so no Trio task waits forever
                try:
                    pending = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if pending is not None:
                    pending.finish(outcome.Error(reason))

    async def call(self, fn: Callable[[], T], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``fn()`` on the worker thread and return its result (or raise its exception)."""
        job = _Job(fn, trio.lowlevel.current_trio_token())
        with self._lock:
            if self._closed:
                raise RuntimeError("the Playwright worker thread has stopped")
            self._jobs.put(job)
        with trio.fail_after(timeout):
            await job.done.wait()
        assert job.result is not None
        result: T = job.result.unwrap()
        return result

    async def stop(self) -> None:
        """Close Chromium and Playwright and wait (bounded) for the thread to end."""
        with self._lock:
            if not self._closed:
                self._jobs.put(None)
        with trio.move_on_after(CLOSE_TIMEOUT):
            await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)


class ViewerPage:
    """One browser tab (in its own browser context, i.e. its own profile)."""

    def __init__(self, worker: _Worker, context: Any, page: Any, name: str) -> None:
        self._worker = worker
        self._context = context
        self._page = page
        self.name = name
        self.closed = False
        # Appended to by the worker thread; list.append is atomic under the GIL.
        self._console: list[str] = []
        page.on("console", lambda m: self._console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self._console.append(f"pageerror: {e}"))
        page.on(
            "requestfailed",
            lambda r: self._console.append(f"requestfailed: {r.url} {r.failure}"),
        )

    # -- plumbing -------------------------------------------------------------

    async def evaluate(self, expression: str, timeout: float = CALL_TIMEOUT) -> Any:
        """Evaluate a JavaScript expression in the page; a promise is awaited.

        Bounded twice: by a timer inside the page (so the worker thread is
        never stuck on a promise that does not settle) and by Trio. Pass
        values into the expression with ``json.dumps``.
        """
        ms = int(timeout * 1000)
        script = _BOUNDED_EVALUATION.replace("EXPRESSION", expression)
        page = self._page
        return await self._worker.call(lambda: page.evaluate(script, ms), timeout + 5)

    async def console(self) -> list[str]:
        """The page's console messages, page errors and failed requests so far."""
        if not self.closed:
            page = self._page
            # A round trip makes Playwright dispatch the events it has received.
            with contextlib.suppress(Exception):  # a crashed page: report what we have
                await self._worker.call(lambda: page.evaluate("0"), 5)
        return list(self._console)

    async def console_errors(self) -> list[str]:
        """Console messages of level error, page errors and failed requests."""
        return [
            line
            for line in await self.console()
            if line.startswith(("error:", "pageerror:", "requestfailed:"))
        ]

    # -- the viewer's test hook -------------------------------------------------

    async def state(self) -> dict[str, Any]:
        """``window.glimpseViewer.state()``: plain data, see viewer.js."""
        result: dict[str, Any] = await self.evaluate("window.glimpseViewer.state()")
        return result

    async def stats(self) -> dict[str, Any]:
        """Refresh the WebRTC statistics, then return the state."""
        result: dict[str, Any] = await self.evaluate("window.glimpseViewer.stats()")
        return result

    async def wait_for(
        self,
        predicate: str,
        timeout: float = 20.0,
        *,
        what: str | None = None,
        interval: float = 0.25,
    ) -> dict[str, Any]:
        """Poll until the JS function ``predicate(state)`` is truthy; return that state.

        ``predicate`` is JavaScript source of a function of the state, e.g.
        ``"s => Object.keys(s.peers).length === 1"``. Each poll refreshes the
        statistics first. On timeout: AssertionError with ``what`` (or the
        predicate), the last state and the page's console.
        """
        script = (
            "(async () => {"
            " const v = window.glimpseViewer;"
            " if (!v) return {ok: false, state: null, error: 'window.glimpseViewer missing'};"
            " const s = await v.stats();"
            " try {"
            f"   return {{ok: Boolean(({predicate})(s)), state: s, error: null}};"
            " } catch (e) { return {ok: false, state: s, error: String(e)}; }"
            "})()"
        )
        last: dict[str, Any] = {}
        with trio.move_on_after(timeout):
            while True:
                last = await self.evaluate(script, timeout=min(CALL_TIMEOUT, max(timeout, 1.0)))
                if last["ok"]:
                    state: dict[str, Any] = last["state"]
                    return state
                await trio.sleep(interval)
        raise AssertionError(
            f"{self.name}: timed out after {timeout} s waiting for {what or predicate}\n"
            f"predicate: {predicate}\n"
            + (f"predicate error: {last['error']}\n" if last.get("error") else "")
            + f"last state: {_brief_state(last.get('state'))}\n"
            + "console (last 40 lines):\n  "
            + "\n  ".join((await self.console())[-40:])
        )

    async def leave(self) -> None:
        """Leave the room through the page (``glimpseViewer.leave()``)."""
        await self.evaluate("window.glimpseViewer.leave()")

    # -- page -------------------------------------------------------------------

    async def screenshot(self, path: str | Path, *, full_page: bool = True) -> Path:
        """Save a PNG of the page."""
        page, target = self._page, Path(path)
        await self._worker.call(lambda: page.screenshot(path=str(target), full_page=full_page))
        return target

    async def close(self) -> None:
        """Close the tab and its context (its WebSocket closes: the server sees it go offline)."""
        if self.closed:
            return
        self.closed = True
        context = self._context
        await self._worker.call(context.close, CLOSE_TIMEOUT)


class Browser:
    """A running headless Chromium; see :func:`open_browser`."""

    def __init__(self, worker: _Worker) -> None:
        self._worker = worker
        self.pages: list[ViewerPage] = []

    async def open_page(self, url: str, name: str | None = None) -> ViewerPage:
        """Open ``url`` in a new tab with a fresh browser context, wait for ``load``."""
        worker = self._worker
        label = name or f"page{len(self.pages) + 1}"

        def open_tab() -> ViewerPage:
            context = worker.browser.new_context(
                viewport=VIEWPORT, permissions=["camera", "microphone"]
            )
            vp = ViewerPage(worker, context, context.new_page(), label)
            vp._page.goto(url, wait_until="load", timeout=CALL_TIMEOUT * 1000)
            return vp

        page = await worker.call(open_tab, CALL_TIMEOUT + 5)
        self.pages.append(page)
        return page

    async def open_viewer(self, url: str, name: str | None = None) -> ViewerPage:
        """Open the viewer page and check that its test hook is there."""
        page = await self.open_page(url, name)
        if not await page.evaluate("typeof window.glimpseViewer === 'object'"):
            raise AssertionError(
                f"{page.name}: {url} has no window.glimpseViewer; console:\n  "
                + "\n  ".join(await page.console())
            )
        return page

    @property
    def version(self) -> str:
        """Chromium's version string."""
        return str(self._worker.browser.version)


@asynccontextmanager
async def open_browser(
    *, executable: str = CHROMIUM, headless: bool = True, args: list[str] | None = None
) -> AsyncIterator[Browser]:
    """Launch Chromium for the duration of the block (skips the test if it is not installed)."""
    if not os.access(executable, os.X_OK):
        pytest.skip(f"{executable} not found: browser tests need Debian's chromium package")
    worker = _Worker()
    worker.start()
    try:
        def launch() -> None:
            worker.browser = worker.playwright.chromium.launch(
                executable_path=executable,
                headless=headless,
                args=args if args is not None else CHROMIUM_ARGS,
                timeout=LAUNCH_TIMEOUT * 1000,
            )

        await worker.call(launch, LAUNCH_TIMEOUT + 5)
        yield Browser(worker)
    finally:
        with trio.CancelScope(shield=True):
            await worker.stop()


def _brief_state(state: Any, limit: int = 6000) -> str:
    """The state as JSON for a failure message, the event log last and trimmed to fit."""
    if not isinstance(state, dict):
        return repr(state)
    head = {k: v for k, v in state.items() if k != "log"}
    text = json.dumps(head, indent=1, sort_keys=True)
    log = state.get("log") or []
    events = "\n".join(f"  {json.dumps(e)}" for e in log[-25:])
    text = f"{text}\nlast events:\n{events}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
