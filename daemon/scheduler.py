"""The scheduler: the one thread that owns MLX — loading, admission, continuous batching, stop conditions, finals.

One loop; each pass is a step boundary:

    intake     requests handed over by the socket loop are checked against the model (jobs.check_params) and
               tokenized on the scheduler's tokenizer thread (so a huge prompt never pauses the batch); each
               comes back, in arrival order, as a Job -> waiting
    cancels    explicit cancel, client gone, slow client: the request leaves the queue or the batch
    controls   the latest Limits (the controls interface, handover.py): batch ceiling, prefetch depth, pace; and
               the cache budget as the budget policy decides it (budget_policy.py: keep-alive shrink, restore)
    admit      waiting requests join the batch while it is below the ceiling (FIFO); a request in the solo lane
               goes back into the batch first
    step       one mlx-lm BatchGenerator.next(): a decode step of the running batch, then one prefill chunk of
               the admitted prompts; a prompt's last chunk moves it into the decode batch. Or, for a request
               decoding alone (no other row, no prompt), one speculative verification pass in the solo lane
               (solo_lane.py), which it enters from the batch. Under a pace cap the loop waits for the step's
               turn in short slices, going round the other phases meanwhile
    spoiled    a request whose row met a failing expert, or whose sampler raised, ends alone (store_error or
               internal; isolation.py); the rest of the batch goes on with the tokens it would have had alone.
               A step that raises anyway (an error outside a row) still fails the whole batch
    route      each row's token -> its Job (text, stop strings) -> chunk / final; the step's cache hits, misses
               and bytes read are split among the step's rows by tokens processed (largest remainder)
    idle       nothing to do: wait for work, or for the budget policy's next decision

Other threads talk to the scheduler only through `controls` (a Handover: one lock, no MLX), which wakes the loop.
Replies leave through `emit(key, kind, body)` (kind: progress, chunk, ok, error); every request this scheduler
accepted gets exactly one ok or error, whatever happens (cancel, store error, shutdown, a crash of this thread).
Usage statistics and the last run's summary are saved by persistence.py.

Batching and exactness: rows of mlx-lm's batch are computed independently (per-row caches with padding masked
out, row-wise matmuls, the streaming expert layer computes each row from its own routing), so a greedy request
gets the same tokens alone or in any batch. tests/daemon/test_server.py holds this for 8 concurrent requests of
different lengths joining at different steps; on the CPU backend the logits are bit-identical. On Metal a
kernel may be chosen by batch size; the test is the contract there too. Sampled requests are reproducible for a
seed, alone or batched, because each draw is keyed by (seed, token index) only (jobs.py).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import budget
from .budget_policy import BudgetPolicy, IdleKeepAlive
from .config import DaemonConfig, EngineConfig
from .handover import Handover
from .isolation import EVERY, RowTracker, sampler_reply, spoiled_reply, step_failure_reply
from .jobs import Job, JobError, Key, Model, charge_step
from .limits import Limits
from .engine.quarantine import Quarantine
from .logs import event
from .observing import EngineRates, Observer, expert_map, request_rows
from .persistence import StateFiles
from .solo_lane import SoloLane, Speculation

if TYPE_CHECKING:
    from mlx_lm.generate import BatchGenerator, GenerationBatch

    from .engine.model import Engine
    from .engine.stats import CacheStats
    from .store.reader import ReaderStats

log = logging.getLogger(__name__)
Emit = Callable[[Key, str, dict[str, Any]], None]
Loader = Callable[[EngineConfig], "Engine"]
DEFAULT_CONTEXT = 4096  # when the model config has no max_position_embeddings
PREFILL_BATCH = 8  # prompts prefilled together (mlx-lm's default)
WAIT_SLICE_S = 1.0  # the longest an idle loop sleeps before looking again
PACE_SLICE_S = 0.05  # a paced loop sleeps in slices this short, so cancels and limits still land in between


class Scheduler:
    def __init__(self, config: DaemonConfig, emit: Emit, on_exit: Callable[[], None] = lambda: None,
                 loader: Loader | None = None, budget_policy: BudgetPolicy | None = None,
                 observer: Observer | None = None):
        """`loader` builds the engine from the engine config (default engine.model.load_engine); `budget_policy`
        decides the cache budget from moment to moment (default: IdleKeepAlive from keep_alive_s and
        idle_cache_budget); `observer` receives the engine's figures (observing.EngineRates)."""
        self.config, self._emit, self._on_exit, self._loader = config, emit, on_exit, loader
        self._rates = EngineRates(observer) if observer is not None else None
        self._decoded = 0  # decode tokens generated
        self.controls = Handover(config)
        self.fatal: str | None = None
        self._files = StateFiles(config)
        # the MLX thread's own
        self._engine: Engine | None = None
        self._bg: BatchGenerator | None = None
        self._policy = budget_policy
        self._limits = self.controls.limits  # in force (the engine was built with this prefetch depth)
        self._configured_budget = 0  # cache_budget resolved against the store
        self._waiting: deque[Job] = deque()
        self._active: dict[int, Job] = {}  # BatchGenerator uid -> job
        self._steps = 0  # generation steps run
        self._jobs: dict[Key, Job] = {}
        self._uid_of: dict[Key, int] = {}
        self._context_limit = 0
        self._model: Model | None = None  # what admission checks requests against
        self._tracker: RowTracker | None = None
        self._tokenizing: deque[tuple[Key, Future[Job]]] = deque()  # in arrival order
        self._early_cancels: dict[Key, str] = {}  # cancels of requests still being tokenized
        self._tokenizer = ThreadPoolExecutor(1, thread_name_prefix="moed-tokenizer")
        self._idle_since = time.monotonic()
        self._wake_at: float | None = None  # when the budget policy wants to decide again
        self._next_step_at = 0.0  # the earliest next step under the pace cap
        self._solo: SoloLane | None = None  # the request decoding alone with speculation, if any
        self._speculation: Speculation | None = None  # the daemon's speculation setup; None = off
        self._thread = threading.Thread(target=self._run, name="moed-scheduler", daemon=True)

    # == any thread ============================================================================================
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def state(self) -> str:
        return self.controls.state

    # == the MLX thread ========================================================================================
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the engine is not loaded")
        return self._engine

    @property
    def bg(self) -> BatchGenerator:
        if self._bg is None:
            raise RuntimeError("the batch generator is not open")
        return self._bg

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
        from .engine.model import load_engine

        ec, sc = self.config.engine, self.config.scheduler
        t0 = time.monotonic()
        self._engine = (self._loader or load_engine)(ec)
        manifest = self.engine.manifest
        total, one = manifest.total_expert_bytes, manifest.expert_bytes
        self._configured_budget = budget.resolve(ec.cache_budget, total, one).bytes  # load_engine warned
        if self._policy is None:
            idle = budget.resolve(sc.idle_cache_budget, total, one)
            if idle.warning:
                log.warning("idle_cache_budget: %s", idle.warning)
            self._policy = IdleKeepAlive(sc.keep_alive_s, idle.bytes)
        self.engine.warm_start(self._files.usage_path())  # queues background reads only: readiness is not delayed
        context = sc.context_limit or manifest.config.get("max_position_embeddings") or 0
        if not context:
            log.warning("the model config has no max_position_embeddings; context limit %d", DEFAULT_CONTEXT)
        quarantine = Quarantine([layer.index for layer in manifest.layers])
        self.engine.cache.quarantine = quarantine  # a failing expert ends only the requests routed to it
        self._tracker = RowTracker(self.engine.model, quarantine)
        self._speculation = Speculation.load(sc.speculate, sc.draft_model, self.engine, quarantine)
        self._bg = self._new_batch_generator()
        self._context_limit = int(context or DEFAULT_CONTEXT)
        self._model = Model.of(self.engine.tokenizer, manifest.config, self._context_limit)
        self.controls.loaded(manifest.model_type, self._context_limit, self.engine.cache, quarantine)
        event(log, logging.INFO, "ready", store=ec.store, model_type=manifest.model_type,
              load_s=round(time.monotonic() - t0, 3), cache_budget=self._configured_budget,
              context_limit=self._context_limit)

    def _new_batch_generator(self) -> BatchGenerator:
        from mlx_lm.generate import BatchGenerator

        eos = [[t] for t in sorted(self.engine.tokenizer.eos_token_ids)]
        return BatchGenerator(self._tracker or self.engine.model, stop_tokens=eos, completion_batch_size=1 << 30,
                              prefill_batch_size=PREFILL_BATCH, prefill_step_size=self.config.scheduler.prefill_step)

    def _loop(self) -> None:
        while True:
            self._files.save_periodically(self.engine)
            self._intake()
            self._apply_cancels()
            self._controls()
            if self.controls.drain_deadline is not None and self._drain():
                return
            self._admit()
            self._probe()
            self._observe()
            if not self._active:
                self._wait(self._wake_at, WAIT_SLICE_S)
            elif time.monotonic() < self._next_step_at:
                self._wait(self._next_step_at, PACE_SLICE_S)
            else:
                self._step()

    def _observe(self) -> None:
        """The engine's figures for the observer (observing.py), when one is set."""
        if self._rates is not None and self._engine is not None:
            eng = self._engine
            self._rates.observe(active=len(self._active), queued=len(self._waiting), steps=self._steps,
                                decoded=self._decoded, cache=eng.cache.stats,
                                bytes_read=lambda: eng.reader.stats().bytes_read)

    def _wait(self, until: float | None, most: float) -> None:
        """Sleep until `until` (monotonic; None = no time of its own), at most `most` seconds, or until something
        is handed over."""
        timeout = most if until is None else min(most, max(0.0, until - time.monotonic()) + 0.001)
        if self.controls.wake.wait(timeout):
            self.controls.wake.clear()

    # -- controls ------------------------------------------------------------------------------------------
    def _controls(self) -> None:
        """Apply limits that changed, then let the budget policy set the cache's budget."""
        limits = self.controls.take_limits()
        if limits is not None and limits != self._limits:
            self._apply_limits(limits)
        self._apply_budget()

    def _apply_limits(self, limits: Limits) -> None:
        """The batch ceiling is read by admission and the budget by _apply_budget; the rest takes effect here."""
        if limits.prefetch_depth != self._limits.prefetch_depth:
            self.engine.set_prefetch_depth(limits.prefetch_depth)
        if limits.pace != self._limits.pace:
            self._next_step_at = 0.0  # a new pace counts from the next step
        self._limits = limits
        event(log, logging.INFO, "limits", max_batch=limits.max_batch, prefetch_depth=limits.prefetch_depth,
              cache_budget=limits.cache_budget, pace=limits.pace)

    def _apply_budget(self) -> None:
        assert self._policy is not None, "set in _load"
        m = self.engine.manifest
        configured = self._configured_budget if self._limits.cache_budget is None else budget.clamp(
            self._limits.cache_budget, m.total_expert_bytes, m.expert_bytes)
        decision = self._policy.decide(time.monotonic(), self._idle_since, len(self._active) + len(self._waiting),
                                       configured)
        self._wake_at = decision.wake_at
        self._resize(budget.clamp(decision.budget, m.total_expert_bytes, m.expert_bytes), decision.reason)

    def _resize(self, target: int, why: str) -> None:
        cache = self.engine.cache
        if cache.stats().budget_bytes == target:
            return
        try:
            cache.resize(target)
            self.engine.preload()  # back to a budget that holds every expert: refill it all in the background
        except Exception:  # noqa: BLE001 - a cache that could not be resized still serves at its old size
            log.exception("cache resize to %d bytes (%s) failed; keeping the current size", target, why)
            return
        event(log, logging.INFO, "cache resized", reason=why, budget_bytes=target, slots=cache.capacity)

    # -- intake, cancels, drain ----------------------------------------------------------------------------
    def _intake(self) -> None:
        """Hand new requests to the tokenizer thread; take the finished ones, in arrival order, into the queue."""
        items, draining = self.controls.take_inbox()
        for key, params, received_ns in items:
            if draining:
                self._reject(key, "shutting_down", "the daemon is shutting down; the request was not started")
                continue
            mode = self._speculation.config.mode if self._speculation is not None else "off"
            fut = self._tokenizer.submit(Job.create, key, params, received_ns, self.engine.tokenizer, self._model,
                                         mode)
            fut.add_done_callback(lambda _: self.controls.wake.set())
            self._tokenizing.append((key, fut))
        while self._tokenizing and self._tokenizing[0][1].done():
            key, fut = self._tokenizing.popleft()
            try:
                job = fut.result()
            except JobError as e:
                self._reject(key, e.code, e.message, **e.extra)
                continue
            except Exception as e:  # noqa: BLE001 - a tokenizer failure is this request's, not the daemon's
                log.exception("tokenizing a request failed")
                self._reject(key, "internal", f"tokenizing the request failed: {type(e).__name__}: {e}")
                continue
            self._waiting.append(job)
            self._jobs[key] = job
            if key in self._early_cancels:
                self.controls.cancel(key, self._early_cancels.pop(key))  # applied by the next pass
        self._publish_counts()

    def _apply_cancels(self) -> None:
        tokenizing = {key for key, _ in self._tokenizing}
        for key, reason in self.controls.take_cancels().items():
            job = self._jobs.get(key)
            if job is None:
                if key in tokenizing:
                    self._early_cancels[key] = reason
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
        for key, fut in self._tokenizing:
            fut.cancel()
            self._reject(key, "shutting_down", "the daemon is shutting down; the request was not started")
        self._tokenizing.clear()
        self._early_cancels.clear()
        for job in list(self._waiting):
            self._remove(job)
            self._end_error(job, "shutting_down", "the daemon is shutting down; the request was not started")
        if self._active and time.monotonic() >= (self.controls.drain_deadline or 0):
            for job in list(self._active.values()):
                self._remove(job)
                self._end_ok(job, "shutdown")
        self._publish_counts()
        return not self._active

    def _remove(self, job: Job) -> None:
        """Take a job out of the queue, the batch or the solo lane (its final is the caller's business)."""
        uid = self._uid_of.pop(job.key, None)
        if uid is None:
            self._waiting.remove(job)
            return
        if self._solo is not None and self._solo.job is job:
            self._solo = None  # its KV cache goes with the lane
        else:
            self.bg.remove([uid])  # a row the batch already dropped (it finished there) is no longer found
        del self._active[uid]

    # -- admission and progress ---------------------------------------------------------------------------
    def _admit(self) -> None:
        while self._waiting and len(self._active) < self._limits.max_batch:
            if self._solo is not None:
                self._leave_solo()
            job = self._waiting.popleft()
            uid = self.bg.insert([job.prompt], max_tokens=[job.params["max_tokens"]], samplers=[job.sampler])[0]
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
        eng = self.engine
        if self._limits.pace is not None:
            self._next_step_at = time.monotonic() + 1.0 / self._limits.pace
        if self._solo is None and self._speculation is not None and len(self._active) == 1:
            self._enter_solo()  # whoever waits now waits for the ceiling: admission ran just before
        if self._solo is not None:
            self._solo_step(self._solo)
            return
        c0, r0 = eng.cache.stats(), eng.reader.stats()
        try:
            prompts, tokens = self.bg.next()
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
                self._active[t.uid].verify_passes += 1
        self._charge(c0, r0, shares, len(tokens), prefill=bool(prompts))
        self._end_spoiled()
        for t in tokens:
            self._route(t)
        self._publish_counts()

    def _charge(self, c0: CacheStats, r0: ReaderStats, shares: Mapping[int, int], tokens: int, prefill: bool) -> None:
        """A step's expert traffic since (c0, r0): into status's counters, and split among its requests by the
        tokens each processed (`shares`: uid -> tokens)."""
        c1, r1 = self.engine.cache.stats(), self.engine.reader.stats()
        read = r1.bytes_read - r0.bytes_read
        self.controls.traffic(prefill, tokens, read)
        self._decoded += tokens
        hits = (c1.hits - c0.hits) + (c1.inflight_hits - c0.inflight_hits)
        charge_step(self._active, shares, cache_hits=hits, cache_misses=c1.misses - c0.misses, bytes_read=read)

    def _route(self, r: GenerationBatch.Response) -> None:
        job = self._active.get(r.uid)
        if job is not None:
            self._deliver(job, [(r.token, r.finish_reason == "stop", r.finish_reason == "length")])

    def _deliver(self, job: Job, tokens: list[tuple[int, bool, bool]]) -> None:
        """Feed a request its new (token, eos, last) in order, up to the one that ends it; send them as one chunk,
        then the final if it ended (stop string, text cap, eos, max_tokens)."""
        texts, toks, done = [], [], None
        for token, eos, last in tokens:
            text, new, done = job.feed(token, eos=eos, last=last)
            texts.append(text)
            toks += new
            if done is not None:
                break
        text = "".join(texts)
        if job.stream and (text or toks):
            self._emit(job.key, "chunk", {"text": text, "tokens": toks})
        if done is not None:
            self._remove(job)
            self._end_ok(job, done)

    # -- the solo lane (solo_lane.py) ------------------------------------------------------------------------
    def _enter_solo(self) -> None:
        """The one request in the batch decodes alone: move it into the solo lane if it may speculate."""
        assert self._speculation is not None
        ((uid, job),) = self._active.items()
        if not self._speculation.wants(job):
            return
        try:
            self._solo = self._speculation.enter(self.bg, uid, job)
        except Exception as e:  # noqa: BLE001 - the row may be half moved: end its request, not the daemon
            self._fail_one(job, e)

    def _leave_solo(self) -> None:
        """Put the solo lane's request back into the batch (someone else is about to join it)."""
        assert self._solo is not None
        lane, job = self._solo, self._solo.job
        try:
            uid = lane.leave(self.bg)
        except Exception as e:  # noqa: BLE001 - as in _enter_solo
            self._fail_one(job, e)
            return
        self._solo = None
        del self._active[lane.uid]
        self._active[uid], self._uid_of[job.key] = job, uid
        job.speculating = False

    def _solo_step(self, lane: SoloLane) -> None:
        """One verification pass: charge it to the request, then route its tokens as one chunk."""
        assert self._speculation is not None and self._tracker is not None
        eng, job, uid = self.engine, lane.job, lane.uid
        c0, r0 = eng.cache.stats(), eng.reader.stats()
        try:
            p = lane.step()
        except Exception as e:  # noqa: BLE001 - a failed pass fails its request, not the daemon
            self._fail_one(job, e)
            self._publish_counts()
            return
        self._steps += 1
        routed = lane.routed(p, self.engine.tokenizer.eos_token_ids)
        if self._steps % 8 == 0 or routed[-1][1] or routed[-1][2]:
            eng.cache.flush(keep=0, force=routed[-1][1] or routed[-1][2])  # as in _step; nothing is in flight
        self._charge(c0, r0, {uid: len(p.tokens)}, len(p.tokens), prefill=False)
        self._speculation.count(job, p)
        self.controls.publish_speculation(self._speculation.counters)  # before a final: status may follow it
        if p.spoiled is not None:
            self._tracker.spoiled[uid] = p.spoiled
        self._end_spoiled()
        if uid in self._active:
            self._deliver(job, routed)
        self._publish_counts()

    def _end_spoiled(self) -> None:
        """End, alone, the requests a failing expert or their own sampler spoiled in this step (isolation.py)."""
        assert self._tracker is not None, "set in _load"
        spoiled = self._tracker.take()
        if EVERY in spoiled:
            spoiled = {uid: spoiled[EVERY] for uid in self._active} | spoiled
        for uid, job in list(self._active.items()):
            if uid in spoiled:
                self._tracker.quarantine.failed_request(spoiled[uid][1])
                self._remove(job)
                code, message, extra = spoiled_reply(job.key[1], *spoiled[uid])
                self._end_error(job, code, message, **extra)
            elif job.failure.error is not None:
                self._remove(job)
                self._end_error(job, *sampler_reply(job.key[1], job.failure.error))

    def _fail_one(self, job: Job, e: Exception) -> None:
        self._remove(job)
        self._end_error(job, *step_failure_reply(e))

    def _fail_batch(self, e: Exception) -> None:
        code, msg = step_failure_reply(e)
        jobs = list(self._active.values())
        if self._tracker is not None:
            self._tracker.take()  # rows of the failed generator: every one of them fails here anyway
        self._active.clear()
        self._uid_of.clear()
        for job in jobs:
            self._end_error(job, code, msg)
        self.bg.close()
        self._bg = self._new_batch_generator()  # its state is unknown after a failure: start clean
        self._publish_counts()

    # -- finals ---------------------------------------------------------------------------------------------
    def _end_ok(self, job: Job, reason: str) -> None:
        result = job.result(reason)
        self._forget(job.key, reason)
        self._emit(job.key, "ok", result)
        fields = {k: v for k, v in result.items() if k != "text"}
        event(log, logging.INFO, "request", id=job.key[1], client=job.key[0].hex(), **fields)

    def _end_error(self, job: Job, code: str, message: str, **extra: Any) -> None:
        self._reject(job.key, code, message, **extra)

    def _reject(self, key: Key, code: str, message: str, **extra: Any) -> None:
        self._forget(key, code)
        self._emit(key, "error", {"code": code, "message": message, **extra})
        event(log, logging.INFO, "request", id=key[1], client=key[0].hex(), error=code, message=message)

    def _forget(self, key: Key, outcome: str) -> None:
        self._jobs.pop(key, None)
        self.controls.finished(key, outcome, len(self._active), self._queued)
        if not self._active and not self._waiting:
            self._idle_since = time.monotonic()

    @property
    def _queued(self) -> int:
        """Requests accepted and not yet running: waiting, or still being tokenized."""
        return len(self._waiting) + len(self._tokenizing)

    def _publish_counts(self) -> None:
        self.controls.counts(len(self._active), self._queued)
        self._publish_requests()

    # -- what ps and status show --------------------------------------------------------------------------
    def _publish_requests(self) -> None:
        """Each held request's state and token counts for ps; the expert map too when it is due (status)."""
        self.controls.publish_requests(request_rows(self._waiting, self._active.values()))
        if self._engine is not None and self.controls.experts_due():
            self.controls.publish_experts(expert_map(self._engine))

    def _fail_everything(self, code: str, message: str) -> None:
        keys = self.controls.failing()
        self._solo = None
        self._active.clear()
        self._waiting.clear()
        for key in keys:
            self._reject(key, code, message)

    # -- exit -----------------------------------------------------------------------------------------------
    def _close(self) -> None:
        """Save what should survive, then free MLX objects here: they must not be destroyed on another thread."""
        self._tokenizer.shutdown(wait=True, cancel_futures=True)
        if self._engine is not None:
            try:
                self._files.save_at_exit(self._engine, self.controls.snapshot())
            except Exception:  # noqa: BLE001 - saving statistics must not turn a clean exit into a crash
                log.exception("could not save the cache statistics")
            self._solo = self._speculation = None
            if self._bg is not None:
                self._bg.close()
            self._engine.close()
        self.controls.closed()
        self._bg = self._engine = None
        self._active.clear()
        gc.collect()
        self.controls.stopped()
        self._on_exit()

