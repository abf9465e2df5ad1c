"""Small helpers shared by the test tiers."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Self, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.2, explain: Callable[[], str] | None = None) -> T:
    """Poll until predicate() returns something truthy, and return it.

    On timeout, fail with `what`, the last value seen and the last exception
    raised by the predicate, so the failure says what was being waited for; and
    with what `explain()` says of the moment (the objects and events behind it).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    last_error: BaseException | None = None
    while True:
        try:
            last = predicate()
            last_error = None
            if last:
                return last  # type: ignore[return-value]
        except Exception as err:  # the predicate may race with the cluster; keep polling
            last_error = err
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error!r}" if last_error else f"; last value: {last!r}"
            if explain is not None:
                detail += "\n" + _explained(explain)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def _explained(explain: Callable[[], str]) -> str:
    try:
        return explain()
    except Exception as err:  # the explanation must not hide the timeout it explains
        return f"(explaining failed: {err!r})"


def holds(predicate: Callable[[], object], seconds: float, what: str,
          interval: float = 0.2) -> int:
    """Check that predicate() stays truthy for `seconds`: a "nothing happens" check that
    watches the whole period (callers state why the period is long enough: longer than the
    mechanism that would change it). Fails at the first look that is not truthy; returns
    how many looks it took."""
    deadline = time.monotonic() + seconds
    looks = 0
    while True:
        value = predicate()
        looks += 1
        if not value:
            raise AssertionError(f"{what} stopped holding after {looks} look(s) "
                                 f"({deadline - time.monotonic():.1f} s before the end of "
                                 f"the {seconds:.0f} s period); last value: {value!r}")
        if time.monotonic() >= deadline:
            return looks
        time.sleep(interval)


def http_json(url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """GET (or POST a JSON body to) a local server: (status, decoded JSON body).

    An HTTP error gives its status and no body; a connection that fails gives 0,
    so a caller polling a server that is still starting just sees "not yet".
    """
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None
    except OSError:
        return 0, None


class Poller:
    """Calls ``poll`` every ``period`` seconds in a background thread while its ``with`` block
    runs (sampling what the API server says during a rollout, for example)."""

    period = 0.05
    _stop: threading.Event
    _thread: threading.Thread

    def poll(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            time.sleep(self.period)

    def __enter__(self) -> Self:
        # The first sample is taken before the block runs: a test that asserts what was seen
        # before its change must not depend on when a loaded machine schedules the thread.
        self.poll()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

