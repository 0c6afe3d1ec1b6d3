"""A Job's text handling (stop strings held back and never emitted, EOS, length, non-streamed text), its checks
(context limit, chat template), seeded per-token sampling, and the scheduler's split of shared step costs."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.utils import load_tokenizer

from moed.clients import protocol as P
from moed.daemon.engine.keyed import derive_seed
from moed.daemon.jobs import Job, JobError, make_job_sampler
from moed.daemon.jobs import split_by_share


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return load_tokenizer(model_dir("qwen3_moe", "store-mlx"))


def params(**kw) -> dict:
    return P.parse_request(P.pack(P.request("r", "generate", {"prompt": "x", **kw})))["params"]


def run(job: Job, tokens: list[int], last_at: int | None = None) -> tuple[str, list[int], str | None]:
    text, toks = "", []
    for i, t in enumerate(tokens):
        out, new, done = job.feed(t, eos=False, last=i == last_at)
        text, toks = text + out, toks + new
        if done:
            return text, toks, done
    return text, toks, None


def test_stop_string_is_held_back_and_never_emitted(tokenizer):
    ids = tokenizer.encode("abc def ghi jkl")
    job = Job.create((b"c", "r"), params(stop=["ef g", "zzz"]), 0, tokenizer, 4096)
    text, toks, done = run(job, ids)
    assert (text, done) == ("abc d", "stop")
    assert 0 < len(toks) <= len(ids) and job.generated == len(toks)


def test_length_flushes_held_text_and_eos_is_not_emitted(tokenizer):
    ids = tokenizer.encode("abc xy")
    job = Job.create((b"c", "r"), params(stop=["xyz"]), 0, tokenizer, 4096)
    text, _, done = run(job, ids, last_at=len(ids) - 1)
    assert (text, done) == ("abc xy", "length")
    job = Job.create((b"c", "r"), params(stream=False), 0, tokenizer, 4096)
    run(job, ids)
    out, toks, done = job.feed(next(iter(tokenizer.eos_token_ids)), eos=True, last=False)
    assert (toks, done) == ([], "stop") and job.generated == len(ids)
    result = job.result("stop")
    assert result["text"] == "abc xy" and result["generated_tokens"] == len(ids)
    assert set(P.RESULT_FIELDS["generate"]) <= set(result)


def test_context_limit_and_chat_template(tokenizer):
    with pytest.raises(JobError) as e:
        Job.create((b"c", "r"), params(prompt="one two three", max_tokens=10), 0, tokenizer, 8)
    assert e.value.code == "context_overflow" and e.value.extra["context_limit"] == 8
    chat = P.parse_request(P.pack(P.request("r", "generate", {"messages": [{"role": "user", "content": "hi"}]})))
    job = Job.create((b"c", "r"), chat["params"], 0, tokenizer, 4096)
    assert len(job.prompt) > len(tokenizer.encode("hi"))

    class NoTemplate:
        chat_template = None

    with pytest.raises(JobError, match="no chat template"):
        Job.create((b"c", "r"), chat["params"], 0, NoTemplate(), 4096)


def test_seeded_sampler_depends_on_seed_and_index_only():
    logprobs = mx.log(mx.softmax(mx.random.normal((1, 64), key=mx.random.key(0)), axis=-1))
    p = params(temperature=1.5)
    a, b, c = make_job_sampler(p, 5), make_job_sampler(p, 5), make_job_sampler(p, 6)
    mx.random.seed(123)  # the global state in between must not matter
    draws_a = [a(logprobs).item() for _ in range(20)]
    mx.random.seed(999)
    draws_b = [b(logprobs).item() for _ in range(20)]
    assert draws_a == draws_b
    assert draws_a != [c(logprobs).item() for _ in range(20)]
    assert make_job_sampler(params(temperature=0.0), 5) is None
    assert len({derive_seed(1, i) for i in range(1000)}) == 1000


def test_split_by_share_is_exact():
    assert split_by_share(10, {1: 1, 2: 1, 3: 1}) in ({1: 4, 2: 3, 3: 3}, {1: 3, 2: 4, 3: 3}, {1: 3, 2: 3, 3: 4})
    parts = split_by_share(1001, {1: 100, 2: 1, 3: 7})
    assert sum(parts.values()) == 1001 and parts[1] > parts[3] > parts[2]
    assert split_by_share(0, {1: 1}) == {1: 0} and split_by_share(5, {}) == {}
