"""The speculation benchmark's workloads: greedy prompts with a fixed number of generated tokens.

- "quote": a held-out passage in the prompt, a blank line, then the passage's first words again; the model
  continues by quoting it (the quote-heavy case where prompt lookup finds drafts). The passages are held out
  (moed.daemon.testmodel.split), so a model trained on the training part has not memorised them.
- "quote-train": the same built from training passages (a trained model may continue these from memory, not only
  by copying from its prompt: report it apart from "quote").
- "free": a held-out passage's start, continued freely.

Every workload takes the first `count` passages long enough for it, in corpus order, so a run is the same
everywhere. Prompts are token ids of the benchmarked model's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKLOADS = ("quote", "quote-train", "free")
SEPARATOR = "\n\n"  # between the quoted passage and its start again, as between paragraphs


@dataclass(frozen=True)
class Prompt:
    workload: str
    source: str  # which passage, e.g. "heldout[1]"
    ids: tuple[int, ...]
    max_tokens: int  # tokens to generate (end-of-sequence is ignored by the bench)


def _passages(kind: str) -> list[str]:
    from ..testmodel.split import heldout_passages, train_passages

    return heldout_passages() if kind == "heldout" else train_passages()


def _bare(tokenizer, text: str) -> list[int]:
    """`text`'s ids without the special tokens the tokenizer may add around a sequence."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def _lead(tokenizer) -> list[int]:
    """What the tokenizer puts before every sequence (BOS for a tokenizer that adds it, else nothing)."""
    full, bare = list(tokenizer.encode("a")), _bare(tokenizer, "a")
    return full[:len(full) - len(bare)]


def quote_prompts(tokenizer, *, kind: str = "heldout", count: int = 3, max_tokens: int = 64,
                  prefix_tokens: int = 8) -> list[Prompt]:
    """Prompts "passage, blank line, its first `prefix_tokens` tokens": the rest of the quoted span is exactly
    `max_tokens` tokens, so a model that quotes faithfully generates the passage to its quoted end."""
    need = prefix_tokens + max_tokens
    lead, sep, out = _lead(tokenizer), _bare(tokenizer, SEPARATOR), []
    for i, text in enumerate(_passages(kind)):
        ids = _bare(tokenizer, text)
        if len(ids) < need:
            continue
        span = ids[:need]
        prompt = lead + span + sep + span[:prefix_tokens]
        out.append(Prompt("quote" if kind == "heldout" else "quote-train", f"{kind}[{i}]", tuple(prompt), max_tokens))
        if len(out) == count:
            break
    return _enough(out, count, kind, need)


def free_prompts(tokenizer, *, count: int = 3, max_tokens: int = 64, prompt_tokens: int = 48) -> list[Prompt]:
    """Prompts "a held-out passage's first `prompt_tokens` tokens", continued freely for `max_tokens`."""
    lead, out = _lead(tokenizer), []
    for i, text in enumerate(_passages("heldout")):
        ids = _bare(tokenizer, text)
        if len(ids) < prompt_tokens:
            continue
        out.append(Prompt("free", f"heldout[{i}]", tuple(lead + ids[:prompt_tokens]), max_tokens))
        if len(out) == count:
            break
    return _enough(out, count, "heldout", prompt_tokens)


def _enough(out: list[Prompt], count: int, kind: str, need: int) -> list[Prompt]:
    if len(out) < count:
        raise ValueError(f"only {len(out)} {kind} passages hold {need} tokens; asked for {count}: "
                         "give a smaller count or fewer tokens")
    return out


def prompts(name: str, tokenizer, *, count: int = 3, max_tokens: int = 64) -> list[Prompt]:
    """The prompts of workload `name` (one of WORKLOADS)."""
    if name == "quote":
        return quote_prompts(tokenizer, count=count, max_tokens=max_tokens)
    if name == "quote-train":
        return quote_prompts(tokenizer, kind="train", count=count, max_tokens=max_tokens)
    if name == "free":
        return free_prompts(tokenizer, count=count, max_tokens=max_tokens)
    raise ValueError(f"unknown workload {name!r}: expected one of {', '.join(WORKLOADS)}")
