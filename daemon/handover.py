"""The controls interface: what other threads share with the scheduler: requests in, cancels and limits, state out.

Everything here sits under one lock and never touches MLX. The socket loop (and later the governor) call the
"any thread" methods (submit, cancel, set_limits and its one-knob forms, begin_drain, snapshot; for ps and status
`requests` / `experts`: requests, key_of, want_experts); the scheduler thread takes the work at each step boundary
with the `take_*` methods and publishes what status reports (counts, publish_requests, and the expert map with
publish_experts when experts_due). `wake` is set whenever there is something new, so an idle or pacing scheduler
reacts at once. Each accepted request gets a daemon-wide id here (a counter, never reused), which `ps` shows and
`cancel` by `job` takes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, deque
from typing import Any, Protocol

from .config import DaemonConfig
from .jobs import JobError, Key
from .limits import Limits

Intake = tuple[Key, dict[str, Any], int]  # (key, validated params, arrival time in monotonic ns)
# (key, state queued|prefilling|decoding, prompt tokens, tokens generated, speculation figures: observing.py)
RequestRow = tuple[Key, str, int, int, dict[str, Any]]
NO_SPECULATION = {"speculating": False, "verify_passes": 0, "accepted_tokens": 0}  # a request not yet published
EXPERTS_EVERY_S = 1.0  # the expert map is recomputed at most this often ...
EXPERTS_WANTED_S = 10.0  # ... and only while someone asked for it this recently


class _Stats(Protocol):
    def as_dict(self) -> dict[str, Any]: ...


class CacheCounters(Protocol):
    """What status needs of the ExpertCache: its stats(), which is thread-safe."""

    def stats(self) -> _Stats: ...


class Quarantined(Protocol):
    """What health and status need of the cache's Quarantine (thread-safe)."""

    def snapshot(self) -> list[dict[str, Any]]: ...

    def clear(self) -> int: ...


class Handover:
    def __init__(self, config: DaemonConfig):
        self._store, self._queue_limit = config.engine.store, config.scheduler.queue_limit
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self._inbox: deque[Intake] = deque()
        self._cancels: dict[Key, str] = {}
        self._known: set[Key] = set()  # accepted, final not yet emitted
        self._state = "loading"  # loading | ready | draining | stopped (status and health add degraded)
        self._limits = Limits(max_batch=config.scheduler.max_batch, prefetch_depth=config.engine.prefetch_depth)
        self._limits_changed = True  # the scheduler applies the first limits after loading
        self._drain_deadline: float | None = None
        self._n_active = self._n_waiting = 0
        self._finished: Counter[str] = Counter()  # done reasons and error codes
        self._traffic = {"decode_tokens": 0, "decode_bytes_read": 0, "prefill_bytes_read": 0}
        self._model_type, self._context_limit = "", 0
        self._cache: CacheCounters | None = None  # the ExpertCache while the engine is open
        self._quarantine: Quarantined | None = None  # the cache's failed experts (engine/quarantine.py)
        self._final_cache: dict[str, Any] = {}
        # ps: daemon-wide ids (any connection of the daemon's user may cancel by them) and what the scheduler
        # last published of each request
        self._next_job = 1
        self._jobs: dict[Key, tuple[str, str, float]] = {}  # key -> (daemon-wide id, client name, arrival)
        self._by_job: dict[str, Key] = {}
        self._rows: dict[Key, tuple[str, int, int, dict[str, Any]]] = {}
        self._speculation: dict[str, Any] = {"mode": config.scheduler.speculate, "passes": 0, "drafted": 0,
                                             "accepted": 0, "tokens": 0, "entered": 0}
        self._experts: dict[str, Any] = {"layers": []}
        self._experts_at = 0.0  # when the scheduler last published the expert map (monotonic)
        self._experts_wanted_at: float | None = None

    # == any thread =============================================================================================
    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def submit(self, key: Key, params: dict[str, Any], received_ns: int, client: str = "") -> None:
        """Hand a validated generate request over (`client`: the name its connection gave in hello, for ps).

        Raises:
            JobError: loading, shutting_down or busy."""
        with self._lock:
            if self._state == "loading":
                raise JobError("loading", "the model is still loading; retry when status says ready")
            if self._state != "ready":
                raise JobError("shutting_down", "the daemon is shutting down and admits no new work")
            outstanding = self._n_active + self._n_waiting + len(self._inbox)
            ceiling = self._limits.max_batch
            if outstanding >= ceiling + self._queue_limit:
                waiting = max(0, outstanding - ceiling)
                raise JobError("busy", f"the queue is full ({waiting} waiting for {ceiling} batch slots); "
                               f"retry later", position=waiting)
            self._inbox.append((key, params, received_ns))
            self._known.add(key)
            self._register(key, client)
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

    @property
    def limits(self) -> Limits:
        """The limits most recently set (the scheduler applies them at its next step boundary)."""
        with self._lock:
            return self._limits

    def set_limits(self, limits: Limits) -> None:
        """Replace every limit at once (the governor's way); applied at the next step boundary."""
        if not isinstance(limits, Limits):
            raise TypeError(f"set_limits takes a Limits, got {type(limits).__name__}")
        with self._lock:
            self._limits, self._limits_changed = limits, True
        self.wake.set()

    def update_limits(self, **changes: Any) -> Limits:
        """Change some limits by name (e.g. `update_limits(pace=4.0)`), keep the rest; returns the new limits.

        Raises:
            ValueError: a value out of range (see Limits). TypeError: an unknown name.
        """
        with self._lock:
            self._limits, self._limits_changed = dataclasses.replace(self._limits, **changes), True
            limits = self._limits
        self.wake.set()
        return limits

    def set_max_batch(self, n: int) -> None:
        """Change the batch ceiling (at least 1; running requests are never evicted, a lower ceiling admits
        fewer)."""
        self.update_limits(max_batch=max(1, int(n)))

    def set_cache_budget(self, budget_bytes: int | None) -> None:
        """Resize the expert cache, in bytes (kept within one expert and every expert; while idle-shrunk, on the
        next request); None = back to the configured budget."""
        self.update_limits(cache_budget=None if budget_bytes is None else max(1, int(budget_bytes)))

    def set_prefetch_depth(self, depth: int) -> None:
        """Change how many MoE layers ahead are predicted and prefetched (0 = off)."""
        self.update_limits(prefetch_depth=int(depth))

    def set_pace(self, steps_per_s: float | None) -> None:
        """Cap the steps per second (at least limits.MIN_PACE), or None for no cap."""
        self.update_limits(pace=steps_per_s)

    def begin_drain(self, timeout_s: float) -> None:
        """Stop admitting; queued requests fail with shutting_down, running ones get timeout_s to finish."""
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
                    "max_batch": self._limits.max_batch, "queue_limit": self._queue_limit,
                    "context_limit": self._context_limit, "finished": dict(self._finished),
                    "speculation": dict(self._speculation)}
            cache, final, traffic = self._cache, dict(self._final_cache), dict(self._traffic)
            quarantine = self._quarantine
        snap["cache"] = {**(cache.stats().as_dict() if cache is not None else final), **traffic}
        failed = quarantine.snapshot() if quarantine is not None else []
        snap["quarantine"] = {f"layer {q['layer']} expert {q['expert']}": q for q in failed}
        if snap["state"] == "ready" and failed:
            snap["state"] = "degraded"
        return snap

    def health(self) -> dict[str, Any]:
        """The health result: `ok` (admitting work), `state`, and while degraded a `reason`."""
        with self._lock:
            state, quarantine = self._state, self._quarantine
        if state == "stopped":
            state = "draining"
        out: dict[str, Any] = {"ok": state == "ready", "state": state}
        failed = quarantine.snapshot() if quarantine is not None and state == "ready" else []
        if failed:
            names = ", ".join(f"layer {q['layer']} expert {q['expert']}" for q in failed[:8])
            more = f" and {len(failed) - 8} more" if len(failed) > 8 else ""
            out.update(state="degraded", reason=f"{len(failed)} expert(s) quarantined after failed reads "
                       f"({names}{more}); requests routed to them fail with store_error")
        return out

    def clear_quarantine(self) -> int:
        """Put every quarantined expert back in service (re-read and re-verified on next use); returns how many
        were quarantined."""
        with self._lock:
            quarantine = self._quarantine
        return quarantine.clear() if quarantine is not None else 0

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

    def take_limits(self) -> Limits | None:
        """The limits, if they changed since the last take (the first take always has them)."""
        with self._lock:
            if not self._limits_changed:
                return None
            self._limits_changed = False
            return self._limits

    @property
    def drain_deadline(self) -> float | None:
        with self._lock:
            return self._drain_deadline

    def loaded(self, model_type: str, context_limit: int, cache: CacheCounters,
               quarantine: Quarantined | None = None) -> None:
        with self._lock:
            self._model_type, self._context_limit, self._cache = model_type, context_limit, cache
            self._quarantine = quarantine
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
            self._unregister(key)
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

    # == ps and the expert map (any thread unless said) ==========================================================
    def _register(self, key: Key, client: str) -> None:
        """A daemon-wide id for an accepted request (under the lock): short, never reused while the daemon runs."""
        job_id = str(self._next_job)
        self._next_job += 1
        self._jobs[key] = (job_id, client, time.monotonic())
        self._by_job[job_id] = key

    def _unregister(self, key: Key) -> None:
        job = self._jobs.pop(key, None)
        if job is not None:
            self._by_job.pop(job[0], None)
        self._rows.pop(key, None)

    def key_of(self, job_id: str) -> Key | None:
        """The request a daemon-wide id (from `requests()`) names, while it is owed a final."""
        with self._lock:
            return self._by_job.get(job_id)

    def requests(self) -> list[dict[str, Any]]:
        """Every request owed a final, oldest first: what `ps` and status `requests` report."""
        now = time.monotonic()
        with self._lock:
            out = []
            for key, (job_id, client, since) in self._jobs.items():
                state, prompt, generated, spec = self._rows.get(key, ("queued", 0, 0, NO_SPECULATION))
                out.append({"id": job_id, "client": client, "state": state, "prompt_tokens": prompt,
                            "generated_tokens": generated, "age_s": round(now - since, 3), **spec})
            return out

    def want_experts(self) -> dict[str, Any]:
        """The expert map last published (`{"layers": [...]}`, `{"layers": []}` before the first), and a note that
        someone wants it: the scheduler keeps it fresh (about once a second) while it is asked for."""
        with self._lock:
            first = self._experts_wanted_at is None
            self._experts_wanted_at = time.monotonic()
            experts = self._experts
        if first:
            self.wake.set()
        return experts

    # -- the scheduler thread --
    def publish_requests(self, rows: list[RequestRow]) -> None:
        """The state of the scheduler's requests now (those it holds; requests not in it count as queued)."""
        with self._lock:
            self._rows = {key: (state, prompt, generated, spec) for key, state, prompt, generated, spec in rows
                          if key in self._jobs}

    def publish_speculation(self, counters: dict[str, Any]) -> None:
        """The daemon-wide speculation counters (status `speculation`)."""
        with self._lock:
            self._speculation = dict(counters)

    def experts_due(self) -> bool:
        """True when the expert map was asked for lately and the published one is at least a second old."""
        now = time.monotonic()
        with self._lock:
            wanted = self._experts_wanted_at
            return (wanted is not None and now - wanted <= EXPERTS_WANTED_S
                    and now - self._experts_at >= EXPERTS_EVERY_S)

    def publish_experts(self, experts: dict[str, Any]) -> None:
        with self._lock:
            self._experts, self._experts_at = experts, time.monotonic()
