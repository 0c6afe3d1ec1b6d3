"""Per-request failure inside a batched step: which requests an expert failure or a sampler error spoiled.

A batched step computes every row at once, so a failure must be pinned on the rows it touched, and only those
requests end; the others go on with exactly the tokens they would have had alone.

- Expert failures. With a Quarantine on the cache (engine/quarantine.py), a failed or quarantined expert does not
  raise: the streaming layer computes the positions routed to it as zeros and reports a [rows, positions] mask.
  Rows are independent (scheduler.py, "Batching and exactness"), so no other row's numbers change. `RowTracker`
  wraps the model that mlx-lm's BatchGenerator calls: after each call it maps the reported rows to the calling
  batch's uids. mlx-lm passes no row ids to the model, so the tracker finds the calling batch (a
  GenerationBatch or PromptProcessingBatch, whose `prompt_cache` is the `cache` argument) in the caller's frame.
  A prompt chunk is right-padded to its longest row; a padded position that hit the expert spoils nothing (its
  keys are masked and its values finite), so only real positions count, as `prompt()`'s `lengths` tell.
  Where the calling batch cannot be found, every row of the call counts as spoiled (never a wrong token).
- Sampler errors. `guard_sampler` wraps a request's sampler: an exception is kept on the request and a
  placeholder token returned, so the rest of the batch samples as usual; the scheduler then ends that request.
- What the client is told: `spoiled_reply`, `sampler_reply` and `step_failure_reply` give the error code and message
  (and log them) for a spoiled row, a failed sampler and a failed step.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import mlx.core as mx
import numpy as np

from .engine.quarantine import Quarantine

log = logging.getLogger(__name__)
Sampler = Callable[[mx.array], mx.array]
Spoil = tuple[str, list[tuple[int, int]]]
EVERY = -1  # a spoiled "uid" meaning every request in the batch


class RowTracker:
    """The model as the BatchGenerator sees it; `spoiled` collects {uid: (reason, [(layer, expert)])} for the
    scheduler to take (Quarantine.describe)."""

    def __init__(self, model: Any, quarantine: Quarantine):
        self.model, self.quarantine = model, quarantine
        self.spoiled: dict[int, Spoil] = {}

    def __getattr__(self, name: str) -> Any:  # layers, make_cache, ...: whatever mlx-lm asks of the model
        return getattr(self.model, name)

    def __call__(self, inputs: mx.array, cache: Any = None, **kwargs: Any) -> mx.array:
        self.quarantine.take_poisoned()  # left by a call that raised: its batch was failed whole
        out = self.model(inputs, cache=cache, **kwargs)
        reports = self.quarantine.take_poisoned()
        if reports:
            self._attribute(reports, inputs.shape, cache, sys._getframe(1))
        return out

    def take(self) -> dict[int, Spoil]:
        spoiled, self.spoiled = self.spoiled, {}
        return spoiled

    def _attribute(self, reports: list, shape: tuple[int, ...], cache: Any, frame: Any) -> None:
        batch = frame.f_locals.get("self")
        uids = list(getattr(batch, "uids", [])) if getattr(batch, "prompt_cache", None) is cache else []
        if len(uids) != shape[0]:
            log.error("an expert failed in a model call whose rows could not be named; failing every request")
            uids = [EVERY] * shape[0]
        real = _real_positions(frame.f_locals, shape)
        for layer, experts, mask in reports:
            hit = (mask.reshape(shape[0], -1) & real).any(axis=1)  # [rows]
            if hit.any():
                reason = self.quarantine.describe(layer, experts)
                for row in np.flatnonzero(hit):
                    self.spoiled.setdefault(uids[row], reason)


def _real_positions(frame_locals: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """[rows, positions] True where the call's input is a real token: PromptProcessingBatch.prompt pads rows on
    the right to the longest (`lengths`, `max_length`, and `tokens` still to process are its locals)."""
    rows, n = shape[0], shape[1] if len(shape) > 1 else 1
    lengths, max_length, left = (frame_locals.get(k) for k in ("lengths", "max_length", "tokens"))
    if not isinstance(lengths, list) or not isinstance(max_length, int) or not hasattr(left, "shape"):
        return np.ones((rows, n), dtype=bool)
    start = max_length - left.shape[1]  # the chunk's first position within the padded prompts
    return (start + np.arange(n))[None, :] < np.array(lengths)[:, None]


class SamplerFailure:
    """Where a guarded sampler leaves its exception (one per request)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None


def guard_sampler(sampler: Sampler, failure: SamplerFailure) -> Sampler:
    """`sampler` made safe for its neighbours: an exception is kept in `failure` and the row gets the greedy
    token in its place (never emitted: the scheduler ends the request first). Greedy rows need no guard: they
    share mlx-lm's batched argmax."""

    def sample(logprobs: mx.array) -> mx.array:  # logprobs: [1, vocab]
        if failure.error is None:
            try:
                return sampler(logprobs)
            except Exception as e:  # noqa: BLE001 - this request's error, not the batch's
                failure.error = e
        return mx.argmax(logprobs, axis=-1)

    return sample


# -- what the client is told -----------------------------------------------------------------------------------
def spoiled_reply(request: str, reason: str, named: list[tuple[int, int]]) -> tuple[str, str, dict[str, int]]:
    """(code, message, extra fields) for a request a failing expert spoiled (logged here)."""
    log.error("request %s: %s", request, reason)
    extra = {"layer": named[0][0], "expert": named[0][1]} if named else {}
    return ("store_error", f"{reason} (the expert is quarantined: `moectl status` lists it; check the store with "
            "`moed inspect STORE --verify`, then `moectl clear-quarantine`)", extra)


def sampler_reply(request: str, e: BaseException) -> tuple[str, str]:
    """(code, message) for a request whose own sampler raised (logged here)."""
    log.error("request %s: sampling failed: %s: %s", request, type(e).__name__, e)
    return "internal", f"sampling failed for this request: {type(e).__name__}: {e}"


def step_failure_reply(e: Exception) -> tuple[str, str]:
    """(code, message) for the requests a failed step takes down: one row's, or the whole batch's (logged here)."""
    from .store.format import StoreError

    if isinstance(e, StoreError):
        log.error("step failed: %s", e)
        return "store_error", f"{e} (check the store with `moed inspect STORE --verify`)"
    log.exception("step failed")
    return "internal", f"generation failed: {type(e).__name__}: {e}"
