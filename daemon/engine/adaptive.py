"""Adaptive K: how many draft tokens the next verification pass should check, from what this request measured.

Per pass the controller learns two things:
- the acceptance rate a: the chance that a draft token is accepted given the ones before it were, as decayed
  counts (recent passes weigh more) over a weak prior; also per kind of draft (`kind`: for prompt lookup the
  length of the matched n-gram, as a 3-token match is a much better guess than a 1-token one), each kind's
  estimate drawn towards the overall one until it has counts of its own;
- the cost of a pass of r rows (drafting included) relative to a plain one-row step, as a moving average of the
  measured seconds per row count; a row count not measured yet is extrapolated linearly from the measured ones.
  The cost is measured, not assumed: MLX's CPU kernels cost about linearly in rows, a GPU's barely, and a streaming
  MoE layer's expert reads and host synchronisation are paid once per pass whatever its rows.

It then picks K in 0..max_draft maximising expected tokens per unit time: E(K) / cost(K + 1), where
E(K) = (1 - a^(K+1)) / (1 - a) is the expected number of tokens a pass emits (accepted drafts plus one).
K = 0 is a plain step. Having backed off to 0, it probes with a small K now and then (the interval doubles while
probes keep failing), so a request whose text turns repetitive later is noticed.

A probe only tests acceptance, so where no K could pay even with every draft accepted (K + 1 tokens for the cost of
K + 1 rows: on MLX's CUDA backend a bf16 model's verification pass costs several plain steps, docs/speculation.md)
probes come only at the longest interval, to notice that costs have changed.

The model can be wrong: acceptance is not geometric (drafts often land all together or not at all), and at a small
cache budget a pass's cost depends on more than its rows (it also reads the experts of rejected drafts). So each K
also has a measured rate: tokens emitted per second by recent passes of K drafts (decayed sums), in plain-step
units; once K has `guard_after` passes measured, its score is the lower of the model's and the measured one. A K
that really loses against plain steps is then dropped whatever the model says, which keeps the promise that
speculation is never a loss, while a K the model undervalues is not promoted on a few lucky passes.

    ctl = AdaptiveK(max_draft=8)
    k = ctl.choose(kind)                    # kind: None, or what the drafter says about its next guess
    ... draft up to k tokens, verify them in one pass taking `seconds` ...
    ctl.record(drafted=len(drafts), accepted=n, seconds=seconds, kind=kind)
"""

from __future__ import annotations

from typing import Hashable

KIND_WEIGHT = 1.0  # pseudo-counts of the overall acceptance in a kind's estimate


class AdaptiveK:
    """Chooses K per pass; with adaptive=False always max_draft."""

    def __init__(self, max_draft: int, adaptive: bool = True, *, decay: float = 0.95, prior_accept: float = 0.5,
                 prior_weight: float = 1.0, prior_slope: float = 0.25, time_weight: float = 0.25,
                 probe_start: int = 8, probe_max: int = 256, base_after: int = 3, guard_after: int = 4):
        if max_draft < 0:
            raise ValueError(f"max_draft must be at least 0, not {max_draft}")
        self.max_draft, self.adaptive = max_draft, adaptive
        self.decay, self.prior_accept, self.prior_weight = decay, prior_accept, prior_weight
        self.prior_slope, self.time_weight = prior_slope, time_weight
        self.probe_start, self.probe_max, self.base_after = probe_start, probe_max, base_after
        self.guard_after = guard_after  # verification passes measured before their realised rate is trusted
        self._measured: dict[int, list[float]] = {}  # drafts K -> [decayed tokens emitted, decayed seconds, passes]
        self._hits = 0.0  # decayed accepted draft tokens
        self._trials = 0.0  # decayed draft tokens whose fate was decided (accepted, or the first rejected)
        self._kinds: dict[Hashable, list[float]] = {}  # kind -> [decayed hits, decayed trials]
        self._seconds: dict[int, float] = {}  # rows -> moving average of a pass's seconds
        self._plain_run = 0  # plain steps chosen in a row since the last probe
        self._probe_every = probe_start
        self._passes = 0

    # -- estimates ------------------------------------------------------------------------------------------------
    @property
    def acceptance(self) -> float:
        """The estimated chance that a draft token is accepted (given the previous ones were)."""
        return (self._hits + self.prior_accept * self.prior_weight) / (self._trials + self.prior_weight)

    def acceptance_of(self, kind: Hashable | None) -> float:
        """The estimate for one kind of draft, drawn towards the overall one (KIND_WEIGHT pseudo-counts)."""
        if kind is None or kind not in self._kinds:
            return self.acceptance
        hits, trials = self._kinds[kind]
        return (hits + self.acceptance * KIND_WEIGHT) / (trials + KIND_WEIGHT)

    def cost(self, rows: int) -> float:
        """A pass of `rows` rows in units of a plain one-row step (1.0 for rows == 1)."""
        base = self._base_seconds()
        if rows <= 1:
            return 1.0
        if base is not None and rows in self._seconds:
            return self._seconds[rows] / base
        return 1.0 + self._slope(base) * (rows - 1)

    def expected_tokens(self, k: int, kind: Hashable | None = None) -> float:
        """E(K): tokens one pass of k drafts emits on average (accepted drafts plus the target's own one)."""
        a = min(self.acceptance_of(kind), 0.999)
        return (1.0 - a ** (k + 1)) / (1.0 - a)

    def _base_seconds(self) -> float | None:
        if 1 in self._seconds:
            return self._seconds[1]
        if not self._seconds:
            return None
        r = min(self._seconds)  # no plain step measured yet: infer one from the smallest pass, with the prior slope
        return self._seconds[r] / (1.0 + self.prior_slope * (r - 1))

    def _slope(self, base: float | None) -> float:
        # cost(r) = 1 + s (r - 1) with the least s any measured row count shows: a row count measured once on a slow
        # pass (kernel compilation, a cold cache) is rarely measured again once it looks dear, so a fit through it
        # would price every longer pass by it; a slope too low is corrected by the longer pass's own measurement
        if base is None or base <= 0:
            return self.prior_slope
        slopes = [(t / base - 1.0) / (r - 1) for r, t in self._seconds.items() if r > 1]
        return max(0.0, min(slopes)) if slopes else self.prior_slope

    # -- decisions ------------------------------------------------------------------------------------------------
    def best(self, kind: Hashable | None = None) -> int:
        """The K maximising expected tokens per unit time now (the smaller K on a tie)."""
        scores = [self._score(k, kind) for k in range(self.max_draft + 1)]
        top = max(scores)
        return next(k for k, s in enumerate(scores) if s >= top * (1 - 1e-9))

    def _score(self, k: int, kind: Hashable | None) -> float:
        model = self.expected_tokens(k, kind) / self.cost(k + 1)
        measured = self.measured_rate(k) if k > 0 else None
        return model if measured is None else min(model, measured)

    def choose(self, kind: Hashable | None = None) -> int:
        """K for the next pass (0: a plain step), for drafts of this kind (None: any)."""
        if not self.adaptive or self.max_draft == 0:
            return self.max_draft
        self._passes += 1
        if 1 not in self._seconds and self._passes >= self.base_after:
            return 0  # costs are relative to a plain step: measure one (a drafter that always has drafts never does)
        k = self.best(kind)
        if k > 0:
            self._plain_run, self._probe_every = 0, self.probe_start
            return k
        self._plain_run += 1
        if self._plain_run > (self._probe_every if self.could_pay() else self.probe_max):
            self._plain_run = 0
            self._probe_every = min(self._probe_every * 2, self.probe_max)
            return min(2, self.max_draft)
        return 0

    def could_pay(self) -> bool:
        """Whether a pass of some K in 1..max_draft would beat plain steps were every draft accepted; True until two
        verification passes are measured (one may have been slow for reasons of its own)."""
        if sum(m[2] for m in self._measured.values()) < 2:  # verification passes measured
            return True
        return any((k + 1) / self.cost(k + 1) > 1.0 for k in range(1, self.max_draft + 1))

    def measured_rate(self, k: int) -> float | None:
        """Tokens per plain step's time that recent passes of k drafts emitted; None until `guard_after` of them
        and a plain step are measured."""
        m, plain = self._measured.get(k), self._seconds.get(1)
        if m is None or m[2] < self.guard_after or plain is None or m[1] <= 0:
            return None
        return m[0] / m[1] * plain

    def record(self, drafted: int, accepted: int, seconds: float, kind: Hashable | None = None) -> None:
        """What a pass did: drafts checked, drafts accepted, its seconds (drafting included), the drafts' kind."""
        if drafted > 0:
            decided = accepted + (1 if accepted < drafted else 0)
            self._hits = self.decay * self._hits + accepted
            self._trials = self.decay * self._trials + decided
            if kind is not None:
                counts = self._kinds.setdefault(kind, [0.0, 0.0])
                counts[0] = self.decay * counts[0] + accepted
                counts[1] = self.decay * counts[1] + decided
            keep = 1 - self.time_weight
            m = self._measured.setdefault(drafted, [0.0, 0.0, 0])
            m[0], m[1], m[2] = keep * m[0] + accepted + 1, keep * m[1] + seconds, m[2] + 1
        rows = drafted + 1
        old = self._seconds.get(rows)
        w = self.time_weight
        self._seconds[rows] = seconds if old is None else (1 - w) * old + w * seconds
