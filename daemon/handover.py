"""What the other threads share with the scheduler: requests in, cancels and controls, published state out.

Everything here sits under one lock and never touches MLX. The socket loop (and later the governor) call the
"any thread" methods; the scheduler thread takes the work at each step boundary with the `take_*` methods and
publishes what status reports. `wake` is set whenever there is something new, so an idle scheduler reacts at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

from .config import DaemonConfig
from .jobs import JobError, Key

Intake = tuple[Key, dict[str, Any], int]  # (key, validated params, arrival time in monotonic ns)


class Handover:
    def __init__(self, config: DaemonConfig):
        self._store, self._queue_limit = config.engine.store, config.scheduler.queue_limit
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self._inbox: deque[Intake] = deque()
        self._cancels: dict[Key, str] = {}
        self._known: set[Key] = set()  # accepted, final not yet emitted
        self._state = "loading"  # loading | ready | draining | stopped
        self._max_batch = config.scheduler.max_batch
        self._budget_request: int | None = None
        self._drain_deadline: float | None = None
        self._n_active = self._n_waiting = 0
        self._finished: Counter[str] = Counter()  # done reasons and error codes
        self._traffic = {"decode_tokens": 0, "decode_bytes_read": 0, "prefill_bytes_read": 0}
        self._model_type, self._context_limit = "", 0
        self._cache: Any = None  # the ExpertCache (its stats() is thread-safe) while the engine is open
        self._final_cache: dict[str, Any] = {}

    # == any thread =============================================================================================
    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def submit(self, key: Key, params: dict[str, Any], received_ns: int) -> None:
        """Hand a validated generate request over. Raises JobError: loading, shutting_down or busy."""
        with self._lock:
            if self._state == "loading":
                raise JobError("loading", "the model is still loading; retry when status says ready")
            if self._state != "ready":
                raise JobError("shutting_down", "the daemon is shutting down and admits no new work")
            outstanding = self._n_active + self._n_waiting + len(self._inbox)
            if outstanding >= self._max_batch + self._queue_limit:
                waiting = max(0, outstanding - self._max_batch)
                raise JobError("busy", f"the queue is full ({waiting} waiting for {self._max_batch} batch slots); "
                               f"retry later", position=waiting)
            self._inbox.append((key, params, received_ns))
            self._known.add(key)
        self.wake.set()

    def cancel(self, key: Key, reason: str) -> bool:
        """Ask for a request to end (reason: cancelled, client_gone, slow_client); False if it already ended."""
        with self._lock:
            if key not in self._known:
                return False
            if self._cancels.get(key) != "client_gone":  # a vanished client outranks any other reason
                self._cancels[key] = reason
        self.wake.set()
        return True

    def set_max_batch(self, n: int) -> None:
        with self._lock:
            self._max_batch = max(1, int(n))
        self.wake.set()

    def set_cache_budget(self, budget_bytes: int) -> None:
        with self._lock:
            self._budget_request = int(budget_bytes)
        self.wake.set()

    def begin_drain(self, timeout_s: float) -> None:
        with self._lock:
            deadline = time.monotonic() + max(0.0, timeout_s)
            self._drain_deadline = min(self._drain_deadline or deadline, deadline)
            if self._state in ("loading", "ready"):
                self._state = "draining"
        self.wake.set()

    def snapshot(self) -> dict[str, Any]:
        """What status reports, as of now."""
        with self._lock:
            snap = {"state": "draining" if self._state == "stopped" else self._state,
                    "model_type": self._model_type, "store": self._store,
                    "active": self._n_active, "queued": self._n_waiting + len(self._inbox),
                    "max_batch": self._max_batch, "queue_limit": self._queue_limit,
                    "context_limit": self._context_limit, "finished": dict(self._finished)}
            cache, final, traffic = self._cache, dict(self._final_cache), dict(self._traffic)
        snap["cache"] = {**(cache.stats().as_dict() if cache is not None else final), **traffic}
        return snap

    # == the scheduler thread ===================================================================================
    def take_inbox(self) -> tuple[list[Intake], bool]:
        """New requests, and whether the daemon is draining. They count as waiting until published otherwise."""
        with self._lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._n_waiting += len(items)  # keeps submit's busy check exact while they are tokenized
            return items, self._drain_deadline is not None

    def take_cancels(self) -> dict[Key, str]:
        with self._lock:
            cancels, self._cancels = self._cancels, {}
            return cancels

    def take_budget_request(self) -> int | None:
        with self._lock:
            request, self._budget_request = self._budget_request, None
            return request

    @property
    def max_batch(self) -> int:
        with self._lock:
            return self._max_batch

    @property
    def drain_deadline(self) -> float | None:
        with self._lock:
            return self._drain_deadline

    def loaded(self, model_type: str, context_limit: int, cache: Any) -> None:
        with self._lock:
            self._model_type, self._context_limit, self._cache = model_type, context_limit, cache
            if self._state == "loading":
                self._state = "ready"

    def closed(self) -> None:
        """The engine is gone: keep its last counters; its cache (MLX arrays) must die on the scheduler thread."""
        with self._lock:
            self._final_cache = self._cache.stats().as_dict() if self._cache is not None else {}
            self._cache = None

    def stopped(self) -> None:
        with self._lock:
            self._state = "stopped"

    def failing(self) -> set[Key]:
        """The scheduler is dying: no more intake; returns every request still owed a final."""
        with self._lock:
            self._inbox.clear()
            if self._state != "stopped":
                self._state = "draining"
            return set(self._known)

    def finished(self, key: Key, outcome: str, active: int, waiting: int) -> None:
        """A request got its final (counts first: a client holding its final may ask for status at once)."""
        with self._lock:
            self._known.discard(key)
            self._cancels.pop(key, None)
            self._finished[outcome] += 1
            self._n_active, self._n_waiting = active, waiting

    def traffic(self, prefill: bool, tokens: int, bytes_read: int) -> None:
        """One step's expert reads: a pure decode step's by the tokens it generated, any step with prompt rows in
        it (prefill, maybe with decode rows beside) apart."""
        with self._lock:
            t = self._traffic
            if prefill:
                t["prefill_bytes_read"] += bytes_read
            else:
                t["decode_tokens"] += tokens
                t["decode_bytes_read"] += bytes_read

    def counts(self, active: int, waiting: int) -> None:
        with self._lock:
            self._n_active, self._n_waiting = active, waiting
