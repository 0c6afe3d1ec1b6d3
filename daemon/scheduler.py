"""The scheduler: the one thread that owns MLX — loading, admission, continuous batching, stop conditions, finals.

One loop; each pass is a step boundary:

    controls   batch ceiling, cache budget (governor, keep-alive shrink and restore), drain deadline
    intake     requests handed over by the socket loop are tokenized and checked (context limit) -> waiting
    cancels    explicit cancel, client gone, slow client: the request leaves the queue or the batch
    admit      waiting requests join the batch while it is below the ceiling (FIFO)
    step       one mlx-lm BatchGenerator.next(): a decode step of the running batch, then one prefill chunk of
               the admitted prompts; a prompt's last chunk moves it into the decode batch
    route      each row's token -> its Job (text, stop strings) -> chunk / final; the step's cache hits, misses
               and bytes read are split among the step's rows by tokens processed (largest remainder)
    idle       nothing to do: wait for work; after keep_alive_s shrink the cache to idle_cache_budget

Other threads only call the "any thread" methods, which hand work over through handover.py (one lock, no MLX)
and wake the loop.
Replies leave through `emit(key, kind, body)` (kind: progress, chunk, ok, error); every request this scheduler
accepted gets exactly one ok or error, whatever happens (cancel, store error, shutdown, a crash of this thread).

Batching and exactness: rows of mlx-lm's batch are computed independently (per-row caches with padding masked
out, row-wise matmuls, the streaming expert layer computes each row from its own routing), so a greedy request
gets the same tokens alone or in any batch. tests/daemon/test_server.py holds this for 8 concurrent requests of
different lengths joining at different steps; on the CPU backend the logits are bit-identical. On Metal a
kernel may be chosen by batch size; the test is the contract there too. Sampled requests are reproducible for a
seed, alone or batched, because each draw is keyed by (seed, token index) only (jobs.py).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable

from .config import DaemonConfig
from .handover import Handover
from .jobs import Job, JobError, Key
from .logs import event

log = logging.getLogger(__name__)
Emit = Callable[[Key, str, dict[str, Any]], None]
DEFAULT_CONTEXT = 4096  # when the model config has no max_position_embeddings
PREFILL_BATCH = 8  # prompts prefilled together (mlx-lm's default)


class Scheduler:
    def __init__(self, config: DaemonConfig, emit: Emit, on_exit: Callable[[], None] = lambda: None,
                 loader: Callable[..., Any] | None = None):
        self.config, self._emit, self._on_exit, self._loader = config, emit, on_exit, loader
        self.shared = Handover(config)
        self.fatal: str | None = None
        # the MLX thread's own
        self._engine: Any = None
        self._bg: Any = None
        self._waiting: deque[Job] = deque()
        self._active: dict[int, Job] = {}  # BatchGenerator uid -> job
        self._steps = 0  # generation steps run
        self._jobs: dict[Key, Job] = {}
        self._uid_of: dict[Key, int] = {}
        self._context_limit = 0
        self._budget = 0  # the budget in force when not idle
        self._shrunk = False
        self._idle_since = time.monotonic()
        self._last_save = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="moed-scheduler", daemon=True)

    # == any thread (the work is done at the next step boundary) ===============================================
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def state(self) -> str:
        return self.shared.state

    def submit(self, key: Key, params: dict[str, Any], received_ns: int) -> None:
        """Hand a validated generate request over. Raises JobError: loading, shutting_down or busy."""
        self.shared.submit(key, params, received_ns)

    def cancel(self, key: Key, reason: str) -> bool:
        """Ask for a request to end (reason: cancelled, client_gone, slow_client); False if it already ended."""
        return self.shared.cancel(key, reason)

    def set_max_batch(self, n: int) -> None:
        """Change the batch ceiling (running requests are never evicted; a lower ceiling admits fewer)."""
        self.shared.set_max_batch(n)

    def set_cache_budget(self, budget_bytes: int) -> None:
        """Resize the expert cache (at least one expert is kept; while idle-shrunk, on the next request)."""
        self.shared.set_cache_budget(budget_bytes)

    def begin_drain(self, timeout_s: float) -> None:
        """Stop admitting; queued requests fail with shutting_down, running ones get timeout_s to finish."""
        self.shared.begin_drain(timeout_s)

    def snapshot(self) -> dict[str, Any]:
        """What status reports, as of now."""
        return self.shared.snapshot()

    # == the MLX thread ========================================================================================
    def _run(self) -> None:
        try:
            self._load()
            self._loop()
        except BaseException as e:  # noqa: BLE001 - the thread must answer every request before it dies
            self.fatal = f"{type(e).__name__}: {e}"
            log.exception("scheduler failed")
            self._fail_everything("internal", f"the model thread failed ({self.fatal}); the daemon is stopping")
        finally:
            self._close()

    def _load(self) -> None:
        from .engine.model import load_engine, parse_budget

        ec = self.config.engine
        t0 = time.monotonic()
        loader = self._loader or load_engine
        self._engine = loader(ec.store, budget=ec.cache_budget, read_mode=ec.read_mode,
                              read_threads=ec.read_threads, policy=ec.cache_policy, prefetch_depth=ec.prefetch_depth)
        manifest = self._engine.manifest
        self._budget = parse_budget(ec.cache_budget, manifest.total_expert_bytes)
        self._engine.warm_start(self._usage_path())  # queues background reads only: readiness is not delayed
        context = self.config.scheduler.context_limit or manifest.config.get("max_position_embeddings") or 0
        if not context:
            log.warning("the model config has no max_position_embeddings; context limit %d", DEFAULT_CONTEXT)
        self._bg = self._new_batch_generator()
        self._context_limit = int(context or DEFAULT_CONTEXT)
        self.shared.loaded(manifest.model_type, self._context_limit, self._engine.cache)
        event(log, logging.INFO, "ready", store=ec.store, model_type=manifest.model_type,
              load_s=round(time.monotonic() - t0, 3), cache_budget=self._budget, context_limit=self._context_limit)

    def _new_batch_generator(self) -> Any:
        from mlx_lm.generate import BatchGenerator

        eos = [[t] for t in sorted(self._engine.tokenizer.eos_token_ids)]
        return BatchGenerator(self._engine.model, stop_tokens=eos, completion_batch_size=1 << 30,
                              prefill_batch_size=PREFILL_BATCH, prefill_step_size=self.config.scheduler.prefill_step)

    def _loop(self) -> None:
        while True:
            self._save_periodically()
            self._controls()
            self._intake()
            self._apply_cancels()
            if self.shared.drain_deadline is not None and self._drain():
                return
            self._admit()
            self._probe()
            if self._active:
                self._step()
            else:
                self._idle_wait()

    def _save_periodically(self) -> None:
        """Save the expert usage statistics every save_interval_s, so a crash still leaves a warm restart."""
        interval = self.config.server.save_interval_s
        now = time.monotonic()
        if interval <= 0 or now - self._last_save < interval:
            return
        self._last_save = now
        try:
            self._engine.save_state(self._usage_path())
        except OSError:
            log.exception("could not save the expert usage statistics")

    # -- controls ------------------------------------------------------------------------------------------
    def _controls(self) -> None:
        request = self.shared.take_budget_request()
        if request is not None:
            self._budget = max(request, self._engine.cache.expert_bytes)
            if not self._shrunk:
                self._resize(self._budget, "set")
        idle = not self._active and not self._waiting
        keep_alive = self.config.scheduler.keep_alive_s
        if idle and not self._shrunk and keep_alive >= 0 and time.monotonic() - self._idle_since >= keep_alive:
            from .engine.model import parse_budget

            total = self._engine.manifest.total_expert_bytes
            idle_budget = max(parse_budget(self.config.scheduler.idle_cache_budget, total),
                              self._engine.cache.expert_bytes)
            if idle_budget < self._budget:
                self._resize(idle_budget, "idle")
                self._shrunk = True

    def _resize(self, budget: int, why: str) -> None:
        if self._engine.cache.stats().budget_bytes == budget:
            return
        try:
            self._engine.cache.resize(budget)
            self._engine.preload()  # back to a budget that holds every expert: refill it all in the background
        except Exception:  # noqa: BLE001 - a cache that could not be resized still serves at its old size
            log.exception("cache resize to %d bytes (%s) failed; keeping the current size", budget, why)
            return
        event(log, logging.INFO, "cache resized", reason=why, budget_bytes=budget, slots=self._engine.cache.capacity)

    # -- intake, cancels, drain ----------------------------------------------------------------------------
    def _intake(self) -> None:
        items, draining = self.shared.take_inbox()
        for key, params, received_ns in items:
            if draining:
                self._reject(key, "shutting_down", "the daemon is shutting down; the request was not started")
                continue
            try:
                job = Job.create(key, params, received_ns, self._engine.tokenizer, self._context_limit)
            except JobError as e:
                self._reject(key, e.code, e.message, **e.extra)
                continue
            self._waiting.append(job)
            self._jobs[key] = job
        self._publish_counts()

    def _apply_cancels(self) -> None:
        for key, reason in self.shared.take_cancels().items():
            job = self._jobs.get(key)
            if job is None:
                continue
            self._remove(job)
            if reason == "slow_client":
                self._end_error(job, "slow_client", "the client did not read its stream fast enough; "
                                "the request was ended (read replies promptly, or use stream=false)")
            else:
                self._end_ok(job, reason)
        self._publish_counts()

    def _drain(self) -> bool:
        """Shutdown in progress: fail the queue, end running requests at the deadline. True when all are done."""
        for job in list(self._waiting):
            self._remove(job)
            self._end_error(job, "shutting_down", "the daemon is shutting down; the request was not started")
        if self._active and time.monotonic() >= (self.shared.drain_deadline or 0):
            for job in list(self._active.values()):
                self._remove(job)
                self._end_ok(job, "shutdown")
        self._publish_counts()
        return not self._active

    def _remove(self, job: Job) -> None:
        """Take a job out of the queue or the batch (its final is the caller's business)."""
        uid = self._uid_of.pop(job.key, None)
        if uid is None:
            self._waiting.remove(job)
        else:
            self._bg.remove([uid])
            del self._active[uid]

    # -- admission and progress ---------------------------------------------------------------------------
    def _admit(self) -> None:
        ceiling = self.shared.max_batch
        while self._waiting and len(self._active) < ceiling:
            job = self._waiting.popleft()
            if self._shrunk:
                self._resize(self._budget, "restore")
                self._shrunk = False
            uid = self._bg.insert([job.prompt], max_tokens=[job.params["max_tokens"]], samplers=[job.sampler])[0]
            job.admitted_ns = time.monotonic_ns()
            self._active[uid], self._uid_of[job.key] = job, uid
            self._progress(job, "prefilling")
        self._publish_counts()

    def _probe(self) -> None:
        """Queued and prefilling requests hear from us when their position changes and every interval: the
        client can tell queued from hung, and a failed send tells the socket loop the client is gone."""
        now = time.monotonic_ns()
        interval = int(self.config.scheduler.progress_interval_s * 1e9)
        for i, job in enumerate(self._waiting):
            if job.position != i or now - job.progress_ns >= interval:
                job.position = i
                self._progress(job, "queued", i)
        for job in self._active.values():
            if not job.first_token_ns and now - job.progress_ns >= interval:
                self._progress(job, "prefilling")

    def _progress(self, job: Job, state: str, position: int = 0) -> None:
        job.progress_ns = time.monotonic_ns()
        self._emit(job.key, "progress", {"state": state, "position": position})

    # -- a step ---------------------------------------------------------------------------------------------
    def _step(self) -> None:
        eng = self._engine
        c0, r0 = eng.cache.stats(), eng.reader.stats()
        try:
            prompts, tokens = self._bg.next()
        except Exception as e:  # noqa: BLE001 - a failed step fails its batch, not the daemon
            self._fail_batch(e)
            return
        self._steps += 1
        finished = any(t.finish_reason for t in tokens)
        if self._steps % 8 == 0 or finished:
            # count unsynced layer calls of computed steps (the newest is still computing): every few steps the
            # blocks already read back on the device, and all of them when a request ends, so its final stats
            # hold its own steps (that read waits for the step in flight)
            eng.cache.flush(keep=1, force=finished)
        c1, r1 = eng.cache.stats(), eng.reader.stats()
        shares: Counter[int] = Counter()
        for p in prompts:
            job = self._active.get(p.uid)
            if job is not None:
                # tokens this step processed for the row; a prompt's last token is run as it enters decode
                shares[p.uid] += max(1, p.progress[0] - job.prefilled)
                job.prefilled = p.progress[0]
        for t in tokens:
            if t.uid in self._active:
                shares[t.uid] += 1
        self.shared.traffic(bool(prompts), len(tokens), r1.bytes_read - r0.bytes_read)
        hits = (c1.hits - c0.hits) + (c1.inflight_hits - c0.inflight_hits)
        for name, total in (("cache_hits", hits), ("cache_misses", c1.misses - c0.misses),
                            ("bytes_read", r1.bytes_read - r0.bytes_read)):
            for uid, part in split_by_share(total, shares).items():
                setattr(self._active[uid], name, getattr(self._active[uid], name) + part)
        for t in tokens:
            self._route(t)
        self._publish_counts()

    def _route(self, r: Any) -> None:
        job = self._active.get(r.uid)
        if job is None:
            return
        text, toks, done = job.feed(r.token, eos=r.finish_reason == "stop", last=r.finish_reason == "length")
        if job.stream and (text or toks):
            self._emit(job.key, "chunk", {"text": text, "tokens": toks})
        if done is None:
            return
        if r.finish_reason is None:  # ended here (stop string, text cap): the batch still holds the row
            self._bg.remove([r.uid])
        del self._active[r.uid]
        self._uid_of.pop(job.key, None)
        self._end_ok(job, done)

    def _fail_batch(self, e: Exception) -> None:
        from .store.format import StoreError

        if isinstance(e, StoreError):
            code, msg = "store_error", f"{e} (check the store with `moed inspect STORE --verify`)"
            log.error("step failed: %s", e)
        else:
            code, msg = "internal", f"generation failed: {type(e).__name__}: {e}"
            log.exception("step failed")
        jobs = list(self._active.values())
        self._active.clear()
        self._uid_of.clear()
        for job in jobs:
            self._end_error(job, code, msg)
        self._bg.close()
        self._bg = self._new_batch_generator()  # its state is unknown after a failure: start clean
        self._publish_counts()

    def _idle_wait(self) -> None:
        timeout = 1.0
        keep_alive = self.config.scheduler.keep_alive_s
        if keep_alive >= 0 and not self._shrunk:
            timeout = min(timeout, max(0.0, self._idle_since + keep_alive - time.monotonic()) + 0.001)
        if self.shared.wake.wait(timeout):
            self.shared.wake.clear()

    # -- finals ---------------------------------------------------------------------------------------------
    def _end_ok(self, job: Job, reason: str) -> None:
        result = job.result(reason)
        self._forget(job.key, reason)
        self._emit(job.key, "ok", result)
        fields = {k: v for k, v in result.items() if k != "text"}
        event(log, logging.INFO, "request", id=job.key[1], client=job.key[0].hex(), **fields)

    def _end_error(self, job: Job, code: str, message: str) -> None:
        self._reject(job.key, code, message)

    def _reject(self, key: Key, code: str, message: str, **extra: Any) -> None:
        self._forget(key, code)
        self._emit(key, "error", {"code": code, "message": message, **extra})
        event(log, logging.INFO, "request", id=key[1], client=key[0].hex(), error=code, message=message)

    def _forget(self, key: Key, outcome: str) -> None:
        self._jobs.pop(key, None)
        self.shared.finished(key, outcome, len(self._active), len(self._waiting))
        if not self._active and not self._waiting:
            self._idle_since = time.monotonic()

    def _publish_counts(self) -> None:
        self.shared.counts(len(self._active), len(self._waiting))

    def _fail_everything(self, code: str, message: str) -> None:
        keys = self.shared.failing()
        self._active.clear()
        self._waiting.clear()
        for key in keys:
            self._reject(key, code, message)

    # -- exit -----------------------------------------------------------------------------------------------
    def _usage_path(self) -> Path:
        store = str(Path(self.config.engine.store).resolve())
        digest = hashlib.sha256(store.encode()).hexdigest()[:12]
        return self._state_dir() / f"usage-{Path(store).name}-{digest}.json"

    def _state_dir(self) -> Path:
        from .paths import make_private_dir, state_dir

        return make_private_dir(Path(self.config.server.state_dir or state_dir()).expanduser())

    def _close(self) -> None:
        """Save what should survive, then free MLX objects here: they must not be destroyed on another thread."""
        if self._engine is not None:
            try:
                self._save_state()
            except Exception:  # noqa: BLE001 - saving statistics must not turn a clean exit into a crash
                log.exception("could not save the cache statistics")
            if self._bg is not None:
                self._bg.close()
            self._engine.close()
        self.shared.closed()
        self._bg = self._engine = None
        self._active.clear()
        gc.collect()
        self.shared.stopped()
        self._on_exit()

    def _save_state(self) -> None:
        self._engine.save_state(self._usage_path())
        snap = self.snapshot()
        doc = {"store": self.config.engine.store, "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "cache": snap["cache"], "reader": vars(self._engine.reader.stats()), "finished": snap["finished"]}
        path = self._state_dir() / "last-run.json"
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        os.replace(tmp, path)
        event(log, logging.INFO, "saved", path=str(path))


def split_by_share(total: int, shares: dict[int, int]) -> dict[int, int]:
    """Split an integer total by integer shares; the parts sum to total exactly (largest remainder)."""
    weight = sum(shares.values())
    if weight <= 0 or total == 0:
        return {k: 0 for k in shares}
    parts = {k: total * w // weight for k, w in shares.items()}
    left = total - sum(parts.values())
    for k in sorted(shares, key=lambda k: (total * shares[k]) % weight, reverse=True)[:left]:
        parts[k] += 1
    return parts
