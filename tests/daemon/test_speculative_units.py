"""Speculation's parts without a model: the settings, prompt lookup, the adaptive-K controller, the draft-model
drafter's cache bookkeeping, and a verify pass on a scripted model."""

from __future__ import annotations

import mlx.core as mx
import pytest

from moed.daemon.engine.adaptive import AdaptiveK
from moed.daemon.engine.drafters import PromptLookup, make_drafter
from moed.daemon.engine.speculative import GreedyPicker, Speculator, verify
from moed.daemon.speculation import SpeculationConfig


# -- settings ---------------------------------------------------------------------------------------------------
def test_config_defaults_are_off_and_valid():
    c = SpeculationConfig()
    assert (c.mode, c.max_draft, c.adaptive, c.ngram_max, c.ngram_min, c.enabled) == ("off", 8, True, 3, 1, False)
    assert SpeculationConfig(mode="lookup").enabled
    assert SpeculationConfig(mode="draft", draft_model="m").draft_model == "m"


@pytest.mark.parametrize("kw, words", [
    ({"mode": "fast"}, "not one of off, lookup, draft"),
    ({"mode": "draft"}, "needs a draft model"),
    ({"max_draft": 0}, "give 1 to 32"),
    ({"max_draft": 33}, "give 1 to 32"),
    ({"max_draft": 2.5}, "whole number"),
    ({"max_draft": True}, "whole number"),
    ({"ngram_min": 4, "ngram_max": 3}, "ngram_min (4) is above ngram_max (3)"),
    ({"ngram_min": 0}, "give 1 to 16"),
    ({"adaptive": "yes"}, "true or false"),
    ({"mode": "draft", "draft_model": 3}, "folder path"),
])
def test_config_refuses_bad_values_with_a_message(kw, words):
    with pytest.raises(ValueError, match=None) as e:
        SpeculationConfig(**kw)
    assert words in str(e.value)


# -- prompt lookup ----------------------------------------------------------------------------------------------
def lookup(context, k=4, ngram_max=3, ngram_min=1):
    d = PromptLookup(ngram_max, ngram_min)
    d.start(context)
    return d.propose(k)


def test_lookup_proposes_what_followed_the_longest_suffix_match():
    # suffix [1, 2, 3] occurred at the start; [3] alone also occurred later (followed by 9): longest wins
    assert lookup([1, 2, 3, 4, 5, 6, 3, 9, 1, 2, 3]) == [4, 5, 6, 3]


def test_lookup_prefers_the_most_recent_occurrence():
    assert lookup([7, 1, 2, 7, 3, 4, 7], k=2) == [3, 4]


def test_lookup_falls_back_to_shorter_ngrams_and_finds_nothing_without_a_match():
    assert lookup([5, 6, 1, 8, 8, 1], k=2) == [8, 8]  # [8, 1] / [8, 8, 1] never occurred before; [1] did
    assert lookup([1, 2, 3, 4]) == []
    assert lookup([1, 2, 3, 1], ngram_min=2) == []  # only a 1-gram matches
    assert lookup([4]) == [] and lookup([4, 4], k=0) == []


def test_lookup_repeats_the_period_past_the_end_of_the_context():
    assert lookup([9, 1, 2, 1, 2], k=5) == [1, 2, 1, 2, 1]  # [1, 2] matched one period back
    assert lookup([3, 3, 3], k=3) == [3, 3, 3]


def test_lookup_index_grows_with_accepted_tokens_and_matches_a_full_scan():
    import random

    rng = random.Random(0)
    tokens = [rng.randrange(6) for _ in range(300)]
    d = PromptLookup(3, 1)
    d.start(tokens[:1])
    for i in range(1, len(tokens)):
        d.accept(tokens[i:i + 1])
        assert d.propose(3) == scan(tokens[:i + 1], 3), i


def scan(ctx, k, ngram_max=3, ngram_min=1):
    """The definition, by brute force: the longest suffix with an earlier occurrence, its latest one."""
    for n in range(min(ngram_max, len(ctx) - 1), ngram_min - 1, -1):
        suffix = ctx[len(ctx) - n:]
        for end in range(len(ctx) - 2, n - 2, -1):
            if ctx[end - n + 1:end + 1] == suffix:
                out = []
                for i in range(k):
                    src = end + 1 + i
                    out.append(ctx[src] if src < len(ctx) else out[src - len(ctx)])
                return out
    return []


# -- adaptive K -------------------------------------------------------------------------------------------------
def feed(ctl, passes, accept, seconds):
    """Run `passes` passes: each drafts what the controller chose, accepts accept(k) of them, takes seconds(rows)."""
    chosen = []
    for _ in range(passes):
        k = ctl.choose()
        chosen.append(k)
        ctl.record(k, accept(k), seconds(k + 1))
    return chosen


def test_adaptive_k_backs_off_to_plain_steps_when_drafts_are_rejected():
    ctl = AdaptiveK(4)
    chosen = feed(ctl, 40, accept=lambda k: 0, seconds=lambda rows: 1.0 + 0.05 * rows)
    assert chosen[0] > 0  # starts by trying
    assert ctl.acceptance < 0.1
    assert chosen[-20:].count(0) >= 18  # then plain steps, with a rare probe


def test_adaptive_k_drafts_the_most_when_all_are_accepted_and_rows_are_cheap():
    ctl = AdaptiveK(4)
    chosen = feed(ctl, 30, accept=lambda k: k, seconds=lambda rows: 1.0 + 0.05 * (rows - 1))
    assert ctl.acceptance > 0.9 and chosen[-10:] == [4] * 10


def test_adaptive_k_stops_drafting_when_rows_cost_linearly_and_acceptance_is_middling():
    # CPU-like: a pass of r rows costs r plain steps; accepting half the drafts cannot pay for that
    ctl = AdaptiveK(4)
    chosen = feed(ctl, 60, accept=lambda k: k // 2, seconds=lambda rows: float(rows))
    assert chosen[-20:].count(0) >= 18
    assert ctl.cost(3) == pytest.approx(3.0)


def test_adaptive_k_probes_again_after_backing_off_and_returns_when_drafts_start_to_land():
    ctl = AdaptiveK(4, probe_start=4, probe_max=8)
    feed(ctl, 30, accept=lambda k: 0, seconds=lambda rows: 1.0 + 0.1 * rows)
    probes = [k for k in feed(ctl, 40, accept=lambda k: 0, seconds=lambda rows: 1.0 + 0.1 * rows) if k > 0]
    assert 3 <= len(probes) <= 10  # now and then, not never, not always
    chosen = feed(ctl, 60, accept=lambda k: k, seconds=lambda rows: 1.0 + 0.01 * rows)
    assert chosen[-10:] == [4] * 10


def _all_or_nothing_rate(ctl: AdaptiveK, decisions: int, cost: float = 2.4) -> float:
    """Tokens per second of a simulated request whose drafts land all together or not at all (passes alternate),
    and whose every verification pass costs 2.4 plain steps (reads, whatever its rows)."""
    tokens = seconds = passes = 0.0
    for _ in range(decisions):
        k = ctl.choose()
        if k == 0:
            ctl.record(0, 0, 1.0)
            tokens, seconds = tokens + 1, seconds + 1.0
            continue
        accepted = k if passes % 2 == 0 else 0
        passes += 1
        ctl.record(k, accepted, cost)
        tokens, seconds = tokens + accepted + 1, seconds + cost
    return tokens / seconds


def test_adaptive_k_backs_off_where_passes_lose_though_the_acceptance_model_says_they_win():
    # all-or-nothing acceptance is not the geometric acceptance the model assumes: it keeps choosing passes of 1-3
    # drafts that emit fewer tokens than it expects, and ends below plain speed; each K's measured rate shows it
    assert _all_or_nothing_rate(AdaptiveK(4, guard_after=10**9), 300) < 0.95  # the model alone loses
    assert _all_or_nothing_rate(AdaptiveK(4), 300) >= 0.98  # the measured rates keep it near plain speed


def _gpu_bf16_pass(rows: int) -> float:
    """A pass as MLX's CUDA backend runs a bf16 model's, in plain steps: a verification pass costs about 4.5 plain
    steps more than its rows (a cuDNN attention plan built for each new key length), a plain step 1."""
    return 1.0 if rows == 1 else 5.0 + 0.3 * rows


def test_where_no_pass_could_pay_probes_come_only_at_the_longest_interval():
    # every draft accepted, yet a pass of K drafts costs more than K + 1 plain steps: a probe cannot find a K that
    # pays, only lose, so it comes every probe_max plain steps instead of after 4, 8, 16, 32, ...
    ctl = AdaptiveK(4, probe_start=4, probe_max=64)
    ctl.record(0, 0, 1.0)
    ctl.record(1, 1, _gpu_bf16_pass(2), 1)
    ctl.record(2, 2, _gpu_bf16_pass(3), 1)
    assert not ctl.could_pay()
    probes = [k for k in feed(ctl, 200, accept=lambda k: k, seconds=_gpu_bf16_pass) if k > 0]
    assert 1 <= len(probes) <= 3
    cheap = AdaptiveK(4, probe_start=4, probe_max=64)
    cheap.record(0, 0, 1.0)
    cheap.record(2, 0, 1.2)
    assert cheap.could_pay()  # cheap passes: probing stays frequent while drafts fail (the probe test above)


def test_one_slow_first_pass_does_not_stop_a_request_from_speculating():
    # the first pass of a row count may pay for kernel compilation (a fresh process, a new shape): 100 plain steps
    # here; every later pass is cheap and all drafts land. One such measurement must not make every pass look dear
    ctl = AdaptiveK(8)
    slow = {"left": 1}

    def seconds(rows):
        if rows > 1 and slow["left"]:
            slow["left"] -= 1
            return 100.0
        return 1.0 if rows == 1 else 1.0 + 0.1 * rows

    chosen = feed(ctl, 80, accept=lambda k: k, seconds=seconds)
    assert not slow["left"] and chosen[-10:].count(8) >= 8


def test_adaptive_k_keeps_acceptance_per_kind_of_draft():
    # prompt lookup: 1-token matches are always rejected, 3-token matches always accepted
    ctl = AdaptiveK(4)
    for i in range(60):
        kind = 1 if i % 2 else 3
        k = ctl.choose(kind)
        ctl.record(k, k if kind == 3 else 0, 1.0 + 0.1 * (k + 1), kind)
    assert ctl.acceptance_of(1) < 0.2 < 0.8 < ctl.acceptance_of(3)
    assert ctl.best(1) == 0 and ctl.best(3) == 4
    assert ctl.acceptance_of(2) == ctl.acceptance  # no counts of its own yet


def test_lookup_kind_is_the_matched_length():
    d = PromptLookup(3, 1)
    d.start([1, 2, 3, 9, 1, 2, 3])
    assert d.kind() == 3
    d.accept([7])
    assert d.kind() == 0 and d.propose(2) == []
    d.accept([2])
    assert d.kind() == 1


def test_adaptive_k_expected_tokens_and_fixed_k():
    ctl = AdaptiveK(4, prior_accept=0.5, prior_weight=1.0)
    assert ctl.expected_tokens(0) == pytest.approx(1.0)
    assert ctl.expected_tokens(2) == pytest.approx(1 + 0.5 + 0.25)
    fixed = AdaptiveK(3, adaptive=False)
    assert feed(fixed, 5, accept=lambda k: 0, seconds=lambda rows: 9.0) == [3] * 5


# -- a verify pass on a scripted model --------------------------------------------------------------------------
class Counter:
    """A KV cache stand-in: counts positions, trims."""

    def __init__(self):
        self.offset = 0

    def is_trimmable(self):
        return True

    def trim(self, n):
        n = min(self.offset, n)
        self.offset -= n
        return n


class NextModel:
    """A 'model' whose every row predicts a fixed function of its input token: next(t) = (t + 1) % V."""

    vocab = 16

    def __call__(self, x, cache):
        cache[0].offset += x.shape[1]
        return mx.eye(self.vocab)[(x + 1) % self.vocab] * 10.0  # [1, R, V]


def test_verify_accepts_the_matching_prefix_and_trims_the_rest():
    cache = [Counter()]
    cache[0].offset = 10
    tokens, n = verify(NextModel(), cache, 3, [4, 5, 9, 7], GreedyPicker(), 0)
    assert (tokens, n) == ([4, 5, 6], 2)
    assert cache[0].offset == 10 + 1 + 2  # last token and the two accepted drafts
    tokens, n = verify(NextModel(), cache, 6, [], GreedyPicker(), 3)
    assert (tokens, n, cache[0].offset) == ([7], 0, 14)
    tokens, n = verify(NextModel(), cache, 7, [8, 9], GreedyPicker(), 4)
    assert (tokens, n, cache[0].offset) == ([8, 9, 10], 2, 17)


def test_speculator_counts_drafts_and_stays_within_the_limit():
    spec = Speculator(SpeculationConfig(mode="lookup", adaptive=False, max_draft=4), make_drafter("lookup"))
    cache = [Counter()]
    ctx = [1, 2, 3, 4, 5, 6, 7, 1]  # lookup proposes 2 3 4 5, the model agrees
    spec.start(ctx)
    assert spec.step(NextModel(), cache, GreedyPicker(), 0, limit=10) == [2, 3, 4, 5, 6]
    assert (spec.draft_tokens, spec.accepted_tokens, spec.passes) == (4, 4, 1)
    assert spec.step(NextModel(), cache, GreedyPicker(), 5, limit=2) == [7, 8]  # at most limit - 1 drafts
    assert spec.draft_tokens == 5
    with pytest.raises(ValueError, match="not 'off'"):
        Speculator(SpeculationConfig(), make_drafter("lookup"))
