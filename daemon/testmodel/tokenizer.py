"""The test models' tokenizer: a byte-level BPE trained offline on the bundled public-domain corpus.

`corpus_text()` is the corpus (also the text of teacher-forced benchmarks). `train_tokenizer(n)` trains
a BPE of exactly `n` tokens: specials first, then the byte alphabet and merges; when the corpus runs
out of merges before `n`, reserved special tokens fill the rest, so token ids and embedding rows
always match one to one. `write_tokenizer_files` writes the Hugging Face files (tokenizer.json,
tokenizer_config.json with a ChatML template, special_tokens_map.json) that mlx-lm and transformers
load. Training is deterministic and takes well under a second, so it is memoized in-process only.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS = "<|endoftext|>"  # also the pad token, as in Qwen checkpoints
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a chat turn: the eos token
SPECIALS = (BOS, IM_START, IM_END)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def corpus_files() -> list[str]:
    """Names of the corpus files, in the order `corpus_text` joins them."""
    folder = resources.files(__package__).joinpath("corpus")
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".txt"))


def _corpus_folder_text(name: str) -> str:
    """The text of one corpus file."""
    return resources.files(__package__).joinpath("corpus").joinpath(name).read_text(encoding="utf-8")


def corpus_text() -> str:
    """The whole corpus: every corpus/*.txt, in file-name order, separated by a blank line."""
    parts = [_corpus_folder_text(name).strip() for name in corpus_files()]
    return "\n\n".join(parts) + "\n"


@functools.lru_cache(maxsize=8)
def _trained_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Whole paragraphs (not lines) so that newlines take part in merges like any other byte.
    tok.train_from_iterator(corpus_text().split("\n\n"), trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True) for i in range(missing)])
    if tok.get_vocab_size() != vocab_size:
        raise AssertionError(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    return tok.to_str(pretty=True)


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE with exactly `vocab_size` tokens (ids 0, 1, 2 are BOS, IM_START, IM_END)."""
    if vocab_size < 256 + len(SPECIALS):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the byte alphabet plus specials")
    return Tokenizer.from_str(_trained_json(vocab_size))


def _bos_json(vocab_size: int) -> str:
    """The trained tokenizer with a post-processor that puts BOS before every encoded sequence."""
    tok = Tokenizer.from_str(_trained_json(vocab_size))
    bos = (BOS, tok.token_to_id(BOS))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[bos]),
    ])
    return tok.to_str()


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """Token ids of bos, eos and pad."""
    return {"bos": tok.token_to_id(BOS), "eos": tok.token_to_id(IM_END), "pad": tok.token_to_id(BOS)}


def write_tokenizer_files(out: Path, vocab_size: int, model_max_length: int, add_bos: bool = False) -> None:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and generation_config.json.

    `add_bos`: encoding a text puts the BOS token first, and so does the chat template, as for a model that
    was trained with BOS at the start of every row (the trained fixture): without it such a model is lost."""
    ids = special_ids(train_tokenizer(vocab_size))
    (out / "tokenizer.json").write_text(_bos_json(vocab_size) if add_bos else _trained_json(vocab_size),
                                        encoding="utf-8")
    _dump(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": IM_END,
        "pad_token": BOS,
        "unk_token": None,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": ("{{- bos_token }}" if add_bos else "") + CHAT_TEMPLATE,
    })
    _dump(out / "special_tokens_map.json", {
        "bos_token": BOS,
        "eos_token": IM_END,
        "pad_token": BOS,
        "additional_special_tokens": [IM_START, IM_END],
    })
    _dump(out / "generation_config.json", {
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        "do_sample": False,
        "transformers_version": "4.51.0",
    })


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
