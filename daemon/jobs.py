"""A generate request inside the scheduler: prompt tokens, sampler, text with stop strings, and its stats.

The scheduler makes a Job when it takes a request in (tokenizing on its helper thread, never on the MLX thread
or the socket loop: scheduler.py), feeds it each token the batch produces, and asks it for the final result. What
a Job guarantees:

- Admission: `Model` holds what the loaded model allows (vocabulary, context limit, the longest token); a
  request is checked against it before anything runs (`top_k` above the vocabulary is `invalid_params`), and a
  prompt too many bytes long to fit the context is refused before it is tokenized.

- Text: tokens are detokenized with mlx-lm's streaming detokenizer; stop strings are matched on the text with
  mlx-lm's TextStateMachine, which holds back text that could still become a stop string and never emits the
  matched string. An end-of-sequence token ends with done reason `stop` and is neither emitted nor counted.
- Sampling: mlx-lm's make_sampler, guarded (isolation.py): a sampler error ends this request alone. Each sampled
  token uses a key derived from (seed, token index) alone, so a request's tokens depend on its seed and its own
  logits, never on what else shares the batch (rows of a batch are computed independently; see scheduler.py). A
  request without a seed gets a random one, reported in stats. The key's index is the token's generated position
  (`KeyedSampler.index`), which the solo lane (solo_lane.py) sets before each draw of a verify pass, so a request
  draws the same tokens with or without speculation.
- Stats: the timing fields of the protocol, plus this request's share of the cache hits, misses and bytes read
  of every step it took part in (scheduler.py decides the shares), and its decode passes, draft tokens checked
  and accepted (speculative decoding: solo_lane.py).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import mlx.core as mx
from mlx_lm.generate import TextStateMachine
from mlx_lm.sample_utils import make_sampler

from moed.clients.protocol import MAX_MESSAGE_BYTES

from .engine.keyed import KeyedSampler
from .isolation import SamplerFailure, guard_sampler

Key = tuple[bytes, str]  # (client identity, request id)
# A non-streamed result carries the whole text in one frame: stop generating before it could overflow it.
MAX_RESULT_TEXT_BYTES = MAX_MESSAGE_BYTES - (64 << 10)


@dataclass(frozen=True)
class Model:
    """What admission checks a request against: the vocabulary (logits) size, the context limit in tokens, and the
    longest token in characters (so a prompt's size bounds its token count from below)."""

    vocab_size: int
    context_limit: int
    longest_token: int = 1 << 10

    @classmethod
    def of(cls, tokenizer: Any, config: Mapping[str, Any], context_limit: int) -> Model:
        vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size") or len(tokenizer.vocab)
        longest = max((len(t) for t in tokenizer.vocab), default=1)
        return cls(int(vocab), int(context_limit), max(1, int(longest)))


def check_params(params: dict[str, Any], model: Model) -> None:
    """Check sampling parameters and the prompt's size against the model (before tokenizing).

    Raises:
        JobError: invalid_params naming the parameter, or context_overflow for a prompt that cannot fit.
    """
    if params["top_k"] > model.vocab_size:
        raise JobError("invalid_params", f"`top_k` is {params['top_k']}; this model's vocabulary has "
                       f"{model.vocab_size} tokens: give at most that (0 = off)")
    chars = len(params["prompt"]) if params.get("prompt") is not None else sum(
        len(str(m.get("content", ""))) for m in params.get("messages") or [] if isinstance(m, Mapping))
    fewest = -(-chars // model.longest_token)  # no token covers more characters than the longest one
    if fewest + params["max_tokens"] > model.context_limit:
        raise JobError("context_overflow", f"the prompt is {chars} characters, at least {fewest} tokens, and "
                       f"max_tokens is {params['max_tokens']}: more than the context limit of {model.context_limit} "
                       f"tokens; shorten the prompt or lower max_tokens", context_limit=model.context_limit)


class JobError(Exception):
    """A request the scheduler refuses (code from protocol.ERROR_CODES), with extra error fields."""

    def __init__(self, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.code, self.message, self.extra = code, message, extra


def encode_request(tokenizer: Any, params: dict[str, Any]) -> list[int]:
    """The prompt's token ids: `prompt` as plain text, or `messages` through the model's chat template.

    Raises:
        JobError: invalid_params when the model has no chat template, the template rejects the messages, or the
            prompt encodes to nothing.
    """
    if params.get("messages") is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise JobError("invalid_params", "this model has no chat template; send `prompt` instead of `messages`")
        try:
            ids = list(tokenizer.apply_chat_template(params["messages"], add_generation_prompt=True))
        except Exception as e:  # jinja templates raise their own errors (e.g. roles must alternate)
            raise JobError("invalid_params", f"the model's chat template rejected `messages`: {e}") from None
    else:
        prompt = params["prompt"]
        bos = getattr(tokenizer, "bos_token", None)
        # as mlx-lm's stream_generate: add special tokens unless the text already starts with BOS
        ids = list(tokenizer.encode(prompt, add_special_tokens=bos is None or not prompt.startswith(bos)))
    if not ids:
        raise JobError("invalid_params", "the prompt encodes to no tokens")
    return ids


def keyed_sampler(params: dict[str, Any], seed: int) -> KeyedSampler | None:
    """The request's keyed sampler; None for greedy (the batch's shared argmax)."""
    if params["temperature"] == 0:
        return None
    return KeyedSampler(make_sampler(temp=params["temperature"], top_p=params["top_p"], min_p=params["min_p"],
                                     top_k=params["top_k"]), seed)


def make_job_sampler(params: dict[str, Any], seed: int,
                     failure: SamplerFailure | None = None) -> Callable[[mx.array], mx.array] | None:
    """mlx-lm's sampler for the request, seeded per token (KeyedSampler); None for greedy. With `failure`,
    guarded: an error is kept there instead of raised (isolation.guard_sampler)."""
    sample = keyed_sampler(params, seed)
    if sample is None or failure is None:
        return sample
    return guard_sampler(sample, failure)


@dataclass
class Job:
    key: Key
    params: dict[str, Any]
    prompt: list[int]
    received_ns: int
    seed: int
    sampler: Callable[[mx.array], mx.array] | None
    detok: Any
    stops: TextStateMachine | None
    admitted_ns: int = 0
    first_token_ns: int = 0
    generated: int = 0
    prefilled: int = 0  # prompt tokens processed so far
    cache_hits: int = 0
    cache_misses: int = 0
    bytes_read: int = 0
    position: int = -1  # queue position last reported
    progress_ns: int = 0  # when progress was last sent
    text_bytes: int = 0
    text: list[str] = field(default_factory=list)  # kept only when not streaming
    _stop_state: Any = None
    failure: SamplerFailure = field(default_factory=SamplerFailure)
    keyed: KeyedSampler | None = None  # the unguarded sampler inside `sampler` (its index is the next position)
    speculate: bool = False  # this request may decode with speculation when alone (solo_lane.py)
    speculating: bool = False  # it does now
    verify_passes: int = 0  # decode forward passes that produced its tokens (batched steps included)
    draft_tokens: int = 0  # draft tokens its verify passes checked
    accepted_tokens: int = 0  # of those, accepted
    speculator: Any = None  # its engine.speculative.Speculator, kept between visits to the solo lane

    @classmethod
    def create(cls, key: Key, params: dict[str, Any], received_ns: int, tokenizer: Any,
               context_limit: int | Model, speculation: str = "off") -> Job:
        """Check and tokenize a validated generate request (any thread: it touches no MLX state). `speculation`
        is the daemon's speculate setting: the request's own `speculate` param may turn it off, or on unless the
        daemon's setting is `off`.

        Raises:
            JobError: invalid_params (see check_params and encode_request) or context_overflow.
        """
        if isinstance(context_limit, Model):
            check_params(params, context_limit)
            context_limit = context_limit.context_limit
        prompt = encode_request(tokenizer, params)
        need = len(prompt) + params["max_tokens"]
        if need > context_limit:
            raise JobError("context_overflow", f"the prompt is {len(prompt)} tokens and max_tokens is "
                           f"{params['max_tokens']}: {need} exceeds the context limit of {context_limit} tokens; "
                           f"shorten the prompt or lower max_tokens", prompt_tokens=len(prompt),
                           context_limit=context_limit)
        seed = params["seed"] if params["seed"] is not None else secrets.randbits(63)
        stops = TextStateMachine({"normal": [(s, None) for s in params["stop"]]}) if params["stop"] else None
        failure = SamplerFailure()
        keyed = keyed_sampler(params, seed)
        asked = params.get("speculate")
        job = cls(key, params, prompt, received_ns, seed, guard_sampler(keyed, failure) if keyed else None,
                  tokenizer.detokenizer, stops, failure=failure, keyed=keyed,
                  speculate=speculation != "off" and asked is not False)
        job._stop_state = stops.make_state() if stops else None
        return job

    @property
    def stream(self) -> bool:
        return bool(self.params["stream"])

    def feed(self, token: int, eos: bool, last: bool) -> tuple[str, list[int], str | None]:
        """Take one generated token; returns (new text, new tokens, done reason or None).

        eos: the token is an end-of-sequence token (done reason stop, not emitted).
        last: the batch reached max_tokens with this token (done reason length, unless a stop string ends it).
        """
        if self.first_token_ns == 0:
            self.first_token_ns = time.monotonic_ns()
        if eos:
            self.detok.finalize()
            return self._keep(self._filter(self.detok.last_segment, flush=True)[0]), [], "stop"
        self.generated += 1
        self.detok.add_token(token)
        full = not self.stream and self.text_bytes >= MAX_RESULT_TEXT_BYTES
        if last or full:
            self.detok.finalize()
        text, stopped = self._filter(self.detok.last_segment, flush=last or full)
        self._keep(text)
        if stopped:
            return text, [token], "stop"
        return text, [token], "length" if last or full else None

    def _filter(self, segment: str, flush: bool) -> tuple[str, bool]:
        """Apply stop strings to new text: (text safe to emit, whether a stop string matched)."""
        if self.stops is None:
            return segment, False
        self._stop_state, text, state_name = TextStateMachine.step(self._stop_state, segment)
        if state_name is None:
            return text, True
        if flush:
            self._stop_state, held, _ = TextStateMachine.flush(self._stop_state)
            text += held
        return text, False

    def _keep(self, text: str) -> str:
        """Keep the text of a non-streamed request for its result (the stream sends it as chunks)."""
        if not self.stream and text:
            self.text.append(text)
            self.text_bytes += len(text.encode())
        return text

    def result(self, done_reason: str, now_ns: int | None = None) -> dict[str, Any]:
        """The ok final's result map (protocol RESULT_FIELDS["generate"], plus `seed`, and `text` if not streamed)."""
        now = now_ns or time.monotonic_ns()
        admitted = self.admitted_ns or now
        first = self.first_token_ns or now
        out: dict[str, Any] = {
            "done_reason": done_reason, "prompt_tokens": len(self.prompt), "generated_tokens": self.generated,
            "queue_ns": admitted - self.received_ns,
            "prefill_ns": (first - admitted) if self.admitted_ns else 0,
            "decode_ns": (now - first) if self.first_token_ns else 0,
            "total_ns": now - self.received_ns,
            "cache_hits": self.cache_hits, "cache_misses": self.cache_misses, "bytes_read": self.bytes_read,
            "verify_passes": self.verify_passes, "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted_tokens, "seed": self.seed,
        }
        if not self.stream:
            out["text"] = "".join(self.text)
        return out


def charge_step(jobs: Mapping[int, Job], shares: Mapping[int, int], **totals: int) -> None:
    """Add one step's counters (e.g. cache_hits=12) to the jobs in it, split by the tokens each processed."""
    for name, total in totals.items():
        for uid, part in split_by_share(total, shares).items():
            setattr(jobs[uid], name, getattr(jobs[uid], name) + part)


def split_by_share(total: int, shares: Mapping[int, int]) -> dict[int, int]:
    """Split an integer total by integer shares; the parts sum to total exactly (largest remainder)."""
    weight = sum(shares.values())
    if weight <= 0 or total == 0:
        return {k: 0 for k in shares}
    parts = {k: total * w // weight for k, w in shares.items()}
    left = total - sum(parts.values())
    for k in sorted(shares, key=lambda k: (total * shares[k]) % weight, reverse=True)[:left]:
        parts[k] += 1
    return parts
