"""The solo lane: speculative decoding for the one request decoding alone, beside mlx-lm's continuous batch.

Why alone: the rows of mlx-lm's BatchGenerator share one KV offset, so a verification pass (several positions per
row, each row accepting a different number) cannot be trimmed per row inside the batch; and while several rows
decode, batching already amortises each MoE layer's expert reads and host synchronisation over them. So the
scheduler speculates for a request only while it is the only one in the batch, already decoding, with no prompt
admitted beside it:

    lane = SoloLane.enter(bg, uid, job, speculator, model)  # takes the row out of the batch with its KV cache
    p = lane.step()          # one pass: p.tokens (1..K+1, never past max_tokens), p.drafted, p.accepted, ...
    uid = lane.leave(bg)     # the row back in the batch with its cache, decoding on where the lane stopped

The scheduler runs one pass per loop iteration, so cancels, limits, intake and the pace cap land between passes
as between batch steps (a pass is one step), and it calls `leave` before it admits anyone else. The Speculator
(engine/speculative.py) lives on the Job, so its adaptive K keeps what it learned across visits to the lane.
The lane decodes with the engine's Decoder (engine/speculative_loop.py): where adaptive K chooses 0 (drafts not
accepted, or verification not cheaper), passes are plain steps pipelined as the batch's are (the next step is
queued before the current token is read back, while K stays 0), so a request that backed off decodes at the batch's
speed.

Exactness. Taking the row out: the batch has already fed the last emitted token into the row's cache and sampled
the one after it; the lane trims that token from the cache and feeds it again as row 0 of its first pass, so it
decides the next token itself (the batch's draw is dropped). Row r of a pass is the token at generated position
index + r: greedy picks the argmax, a sampled request draws with the key from (seed, index + r) (jobs.py), exactly
the draw batched decoding makes for that position. Drafts are point masses, so the emitted tokens are the tokens
decoding without speculation would give (engine/speculative.py). Putting the row back: the lane's last token (not
yet in the cache; a queued plain step is dropped and its input trimmed from the cache) is inserted as a one-token
prompt with the cache, and the request's KeyedSampler index is set to its next position, so the batch draws on
with the same keys.

Failures stay this request's, as in the batch (isolation.py): the model runs through `Watched`, which collects the
quarantine's reports; a report on a position the pass emitted from spoils the request (`Pass.spoiled`), one on a
rejected draft's position does not (that row's output is discarded and its cache entries trimmed). A sampler error
is kept on the request (`job.failure`), as guard_sampler does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Container

import mlx.core as mx

from .engine.draft_rows import DraftRows
from .engine.drafters import DraftModel, load_draft_model, make_drafter
from .engine.speculative import GreedyPicker, KeyedPicker, Speculator, cache_trimmable
from .engine.speculative_loop import Decoder
from .isolation import Spoil
from .speculation import SpeculationConfig

if TYPE_CHECKING:
    from mlx_lm.generate import BatchGenerator

    from .engine.model import Engine
    from .engine.quarantine import Quarantine
    from .jobs import Job

log = logging.getLogger(__name__)


@dataclass
class Pass:
    """One pass of the lane (a verification pass, or a plain step of a pipelined run): the tokens it emitted, the
    draft tokens it checked and accepted, and the quarantine report that spoiled it (None: clean)."""

    tokens: list[int]
    drafted: int
    accepted: int
    spoiled: Spoil | None = None


class Watched:
    """The model as the lane calls it: collects the quarantine's reports of each call (positions computed as zeros
    because an expert failed) for the lane to pin on the request."""

    def __init__(self, model: Any, quarantine: Quarantine | None):
        self.model, self.quarantine = model, quarantine
        self.reports: list[tuple[int, Any, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, inputs: mx.array, cache: Any = None, **kwargs: Any) -> mx.array:
        if self.quarantine is None:
            return self.model(inputs, cache=cache, **kwargs)
        self.quarantine.take_poisoned()  # left by a call that raised
        out = self.model(inputs, cache=cache, **kwargs)
        self.reports += self.quarantine.take_poisoned()
        return out

    def spoiled(self, positions: int) -> Spoil | None:
        """The first report that hit one of the first `positions` positions of the calls since the last ask."""
        reports, self.reports = self.reports, []
        for layer, experts, mask in reports:
            if bool(mask.reshape(-1)[:positions].any()):
                assert self.quarantine is not None, "reports come from the quarantine"
                return self.quarantine.describe(layer, experts)
        return None


class _GuardedPicker:
    """The request's picker; an error is kept on the request and the argmax returned in its place (never emitted:
    the scheduler ends the request first), as isolation.guard_sampler does for batched rows."""

    def __init__(self, picker: GreedyPicker | KeyedPicker, job: Job):
        self.picker, self.job = picker, job

    def __call__(self, logprobs: mx.array, first_index: int) -> mx.array:
        if self.job.failure.error is None:
            try:
                return self.picker(logprobs, first_index)
            except Exception as e:  # noqa: BLE001 - this request's error, not the daemon's
                self.job.failure.error = e
        return mx.argmax(logprobs, axis=-1)


def picker_for(job: Job) -> _GuardedPicker:
    """Greedy, or the request's own sampler keyed by (seed, position): the draws batched decoding makes."""
    inner = GreedyPicker() if job.keyed is None else KeyedPicker(job.keyed.inner, job.seed)
    return _GuardedPicker(inner, job)


class SoloLane:
    """One request decoding alone with speculation; see the module docstring."""

    def __init__(self, job: Job, uid: int, decoder: Decoder):
        self.job, self.uid, self.decoder = job, uid, decoder

    @classmethod
    def enter(cls, bg: BatchGenerator, uid: int, job: Job, speculator: Speculator, model: Watched) -> SoloLane:
        """Take decoding row `uid` out of the batch with its KV cache; the lane goes on from its last token."""
        cache, tokens = bg.remove([uid], return_prompt_caches=True)[uid]
        context = [int(t) for t in tokens]  # prompt + emitted tokens: all in the cache
        for c in cache:
            c.trim(1)  # the last token is fed again as the first pass's row 0
        speculator.start(context)
        return cls(job, uid, Decoder(model, cache, context, speculator, picker_for(job), bg.stream))

    @property
    def remaining(self) -> int:
        """Tokens the request may still emit."""
        return int(self.job.params["max_tokens"]) - self.job.generated

    def step(self) -> Pass:
        """One pass, as the request's adaptive K decides: a verification pass of K drafts, or (K = 0) one plain
        step of a pipelined run. At most `remaining` tokens. Raises what the model raises."""
        tokens, drafted, accepted = self.decoder.step(self.job.generated, self.remaining)
        return Pass(tokens, drafted, accepted, self.decoder.model.spoiled(len(tokens)))

    def routed(self, p: Pass, eos: Container[int]) -> list[tuple[int, bool, bool]]:
        """The pass's tokens as the scheduler feeds them: (token, is end-of-sequence, is the max_tokens-th). Call
        before the request is fed them."""
        first, cap = self.job.generated, int(self.job.params["max_tokens"])
        return [(t, t in eos, t not in eos and first + j + 1 >= cap) for j, t in enumerate(p.tokens)]

    def leave(self, bg: BatchGenerator) -> int:
        """Put the row back into the batch with its cache; returns its new uid. The lane is spent."""
        job, d = self.job, self.decoder
        d.drop_pending()  # the batch feeds that step's input token again
        if job.keyed is not None:
            job.keyed.index = job.generated  # the batch's first draw is the token at this position
        job.prefilled = 0  # the one-token prompt is all the batch will process for it
        uid: int = bg.insert([[d.context[-1]]], max_tokens=[self.remaining], caches=[d.cache],
                             all_tokens=[d.context[:-1]], samplers=[job.sampler])[0]
        d.cache = []
        return uid


class Speculation:
    """The daemon's side of speculation: its setting, the draft model (mode "draft"), the model as the lane calls it,
    each request's Speculator, and the daemon-wide counters status reports (`counters`)."""

    def __init__(self, mode: str, model: Any, quarantine: Quarantine | None, draft: DraftModel | None = None,
                 rows: DraftRows | None = None):
        self.config = SpeculationConfig(mode=mode, draft_model=draft.path if draft is not None else None)
        self.rows = rows  # the engine's DraftRows (the expert cache credits only accepted drafts)
        self.model, self.draft = Watched(model, quarantine), draft
        self.counters = {"mode": mode, "passes": 0, "drafted": 0, "accepted": 0, "tokens": 0, "entered": 0}

    @classmethod
    def load(cls, mode: str, draft_model: str, engine: Engine, quarantine: Quarantine | None) -> Speculation | None:
        """The setup for `mode` (the `speculate` key); None for "off" or a model whose KV cache cannot be rewound
        (said once in the log). Raises what load_draft_model raises for a bad draft model."""
        from mlx_lm.models.cache import make_prompt_cache

        if mode == "off":
            return None
        if not cache_trimmable(make_prompt_cache(engine.model)):
            log.warning("speculative decoding is off: this model's KV cache cannot be rewound")
            return None
        draft = load_draft_model(draft_model, engine.tokenizer) if mode == "draft" else None
        return cls(mode, engine.model, quarantine, draft, engine.draft_rows)

    def wants(self, job: Job) -> bool:
        """Whether the request (the only one in the batch) should enter the solo lane now: it may speculate, it is
        decoding, and it may still emit at least two tokens (room for a draft)."""
        return bool(job.speculate and job.first_token_ns and job.failure.error is None
                    and int(job.params["max_tokens"]) - job.generated >= 2)

    def speculator(self, job: Job) -> Speculator:
        """The request's Speculator (made on its first visit to the lane, kept on the Job after)."""
        if job.speculator is None:
            drafter = make_drafter(self.config.mode, ngram_max=self.config.ngram_max, ngram_min=self.config.ngram_min,
                                   draft=self.draft)
            job.speculator = Speculator(self.config, drafter, rows=self.rows)
        return job.speculator

    def enter(self, bg: BatchGenerator, uid: int, job: Job) -> SoloLane:
        """Take the request's row out of the batch into a solo lane (SoloLane.enter)."""
        lane = SoloLane.enter(bg, uid, job, self.speculator(job), self.model)
        self.counters["entered"] += 1
        job.speculating = True
        return lane

    def count(self, job: Job, p: Pass) -> None:
        """A pass's figures, on the request and daemon-wide."""
        job.verify_passes += 1
        job.draft_tokens += p.drafted
        job.accepted_tokens += p.accepted
        c = self.counters
        c["passes"] += 1
        c["drafted"] += p.drafted
        c["accepted"] += p.accepted
        c["tokens"] += len(p.tokens)
