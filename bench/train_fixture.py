"""Train moed's trained MoE fixture: a small mlx-lm `qwen3_moe` with Qwen3-30B-A3B's expert layout (128 experts,
top-8, normalised top-k), on the training part of the bundled corpus, saved as a 4-bit mlx-lm checkpoint.

    python -m bench.train_fixture OUT_DIR [--steps N] [--max-seconds S] [--note "..."]

AdamW with linear warmup and cosine decay, a fixed seed, a router load-balancing term; shares of the rows are copy
rows of training text and random rows (a random span repeated), the rest plain text (bench/fixture_data.py);
--random-only-steps first trains on random rows alone, so copying (an induction circuit) forms before the small
training text can be memorised, and weights are only kept from after that phase. Every
--eval-every steps the held-out text loss and the held-out copy loss are measured; the weights with the lowest
weighted mean of the two (--copy-select-weight) are kept and training stops after --patience evaluations
without improvement (or at --steps / --max-seconds). The kept float
model is quantized with mlx-lm (group 64, routers at 8 bits, other tensors float32) and written to OUT_DIR with
`training.json`, the training record.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from bench import fixture_data as fd
from bench import fixture_model as fm


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 3000
    batch: int = 16
    seq_len: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    aux_coef: float = 0.01
    copy_fraction: float = 0.5
    shuffled_fraction: float = 0.5  # of copy rows: spans in random order, learnable only by copying
    random_fraction: float = 0.5  # rows of a random span repeated (fresh each step): copying that cannot overfit
    text_weight: float = 1.0  # loss weight of the training-text rows (plain and copy rows)
    random_source: str = "uniform"  # what random rows repeat: uniform ids, unigram draws, shuffled text, mixed
    quote_weight: float = -1.0  # loss weight of a shuffled copy row's quoted repeat; <0: text_weight
    random_only_steps: int = 0  # a first phase of random rows only: copying learnt before any text can overfit
    copy_select_weight: float = 1.0  # weight of the held-out copy loss against the text loss in the selection
    select_ppl_ratio: float = 0.0  # >0: keep the best held-out copy loss among points within this x unigram ppl
    dropout: float = 0.2
    input_noise: float = 0.1
    eval_every: int = 50
    patience: int = 10
    max_seconds: float = 0.0  # 0: no limit; counted from the end of the first step (which compiles kernels)
    compile_step: bool = True  # mx.compile the training step (faster steps; on CUDA ~2 minutes of JIT first)
    bits: int = 4
    group_size: int = 64


def make_optimizer(tc: TrainConfig) -> optim.Optimizer:
    warm = optim.linear_schedule(tc.lr / 100, tc.lr, max(tc.warmup, 1))
    decay = optim.cosine_decay(tc.lr, max(tc.steps - tc.warmup, 1), tc.lr * tc.min_lr_ratio)
    return optim.AdamW(learning_rate=optim.join_schedules([warm, decay], [max(tc.warmup, 1)]),
                       weight_decay=tc.weight_decay)


def train(dims: fm.FixtureDims, tc: TrainConfig, log=print) -> tuple[object, dict, dict]:
    """Train and return (model holding the best weights, its float config, the record so far)."""
    mx.random.seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    corpus = fd.load_corpus(dims.vocab)
    config = fm.model_config(dims)
    model = fm.build_model(config)
    opt = make_optimizer(tc)
    ev_in, ev_tg = fd.heldout_windows(corpus, tc.seq_len)
    cp_rows, cp_mask = fd.heldout_copy_windows(corpus)
    rnd_rows, rnd_weights = fd.random_eval_rows(corpus, tc.seq_len)
    unigram = fd.unigram_perplexity(corpus)
    state = [model.state, opt.state, mx.random.state]
    grad_fn = nn.value_and_grad(model, fm.loss_fn)

    def step(inputs, targets, weights):
        (loss, ce), grads = grad_fn(model, inputs, targets, weights, tc.aux_coef, tc.dropout)
        grads, _ = optim.clip_grad_norm(grads, tc.grad_clip)
        opt.update(model, grads)
        return loss, ce

    if tc.compile_step:
        step = partial(mx.compile, inputs=state, outputs=state)(step)

    curve, best, best_score, since_best = [], None, math.inf, 0
    t0, tokens, done, ce_acc, n_acc = time.perf_counter(), 0, 0, 0.0, 0
    for i in range(1, tc.steps + 1):
        curriculum = i <= tc.random_only_steps
        rows, weights = fd.training_batch(corpus, rng, tc.batch, tc.seq_len, tc.copy_fraction,
                                          tc.shuffled_fraction, 1.0 if curriculum else tc.random_fraction,
                                          tc.text_weight, random_source=tc.random_source,
                                          quote_weight=tc.quote_weight if tc.quote_weight >= 0 else None)
        inputs, targets = fd.add_input_noise(rows, rng, tc.input_noise, dims.vocab)
        loss, ce = step(mx.array(inputs), mx.array(targets), mx.array(weights))
        mx.eval(state, loss, ce)
        if i == 1:
            t1 = time.perf_counter()  # after compilation (a fresh GPU machine JIT-compiles for ~2 minutes)
        tokens += tc.batch * tc.seq_len
        ce_acc, n_acc, done = ce_acc + ce.item(), n_acc + 1, i
        last = i == tc.steps or (tc.max_seconds and time.perf_counter() - t1 > tc.max_seconds)
        if i % tc.eval_every == 0 or last:
            point = {"step": i, "tokens": tokens, "seconds": round(time.perf_counter() - t0, 1),
                     "train_loss": round(ce_acc / n_acc, 4), **heldout_point(model, ev_in, ev_tg, cp_rows, cp_mask),
                     "random_copy_accuracy": round(fm.copy_scores(model, rnd_rows, rnd_weights)[1], 4)}
            score = selection_score(point, tc.copy_select_weight, tc.select_ppl_ratio and tc.select_ppl_ratio * unigram)
            curve.append(point)
            ce_acc, n_acc = 0.0, 0
            log(json.dumps(point))
            if curriculum and not last:
                continue  # weights are chosen, and patience counted, only once text is trained on
            if score < best_score:
                best_score, since_best = score, 0
                best = {"step": i, "tokens": tokens, "weights": dict(tree_flatten(model.parameters()))}
            else:
                since_best += 1
            if since_best >= tc.patience or last:
                break
    wall = time.perf_counter() - t0
    model.update(tree_unflatten(list(best["weights"].items())))
    mx.eval(model.parameters())
    record = {
        "seed": tc.seed, "dims": dims.as_dict(), "train_config": asdict(tc),
        "parameters": fm.parameter_count(model),
        "steps_run": done, "tokens_seen": tokens, "best_step": best["step"],
        "best_selection_loss": round(best_score, 4), "tokens_seen_at_best": best["tokens"],
        "stopped_by": "patience" if since_best >= tc.patience else ("max_seconds" if done < tc.steps else "steps"),
        "wall_seconds": round(wall, 1), "first_step_seconds": round(t1 - t0, 1), "loss_curve": curve,
        "corpus": {"train_tokens": int(len(corpus.train)), "heldout_tokens": int(len(corpus.heldout)),
                   "copy_separator": fd.SEPARATOR},
    }
    return model, config, record


def selection_score(point: dict, copy_weight: float, max_ppl: float = 0.0) -> float:
    """What the kept weights minimise: the weighted mean of the held-out text loss and held-out copy loss; with
    `max_ppl`, the held-out copy loss alone where the held-out perplexity is at most max_ppl (else infinity, with
    the weighted mean added so that the least bad point still wins when none qualifies)."""
    mean = (point["heldout_loss"] + copy_weight * point["heldout_copy_loss"]) / (1.0 + copy_weight)
    if not max_ppl:
        return mean
    return point["heldout_copy_loss"] if math.exp(point["heldout_loss"]) <= max_ppl else 1e6 + mean


def selection_text(tc: TrainConfig) -> str:
    where = "copy loss on quoted held-out spans, bench/fixture_data.heldout_copy_windows"
    if tc.select_ppl_ratio:
        return (f"the kept weights minimise the held-out copy loss ({where}) among evaluations whose held-out "
                f"perplexity is at most {tc.select_ppl_ratio} x the unigram's")
    return (f"the kept weights minimise (held-out text loss + {tc.copy_select_weight} x held-out copy loss) / "
            f"{1 + tc.copy_select_weight} ({where})")


def heldout_point(model, ev_in, ev_tg, cp_rows, cp_mask) -> dict:
    """The loss curve's held-out measures: text loss, copy loss and copy accuracy."""
    copy_loss, copy_acc = fm.copy_scores(model, cp_rows, cp_mask)
    return {"heldout_loss": round(fm.heldout_nll(model, ev_in, ev_tg), 4), "heldout_copy_loss": round(copy_loss, 4),
            "heldout_copy_accuracy": round(copy_acc, 4)}


def evaluate(model, corpus: fd.Corpus, seq_len: int) -> dict:
    """Held-out perplexity and held-out copy accuracy of `model`."""
    ev_in, ev_tg = fd.heldout_windows(corpus, seq_len)
    cp_rows, cp_mask = fd.heldout_copy_windows(corpus)
    return {"heldout_ppl": round(math.exp(fm.heldout_nll(model, ev_in, ev_tg)), 3),
            "heldout_copy_accuracy": round(fm.copy_scores(model, cp_rows, cp_mask)[1], 4)}


def device_name() -> str:
    dev = str(mx.default_device())
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        gpu = ""
    return f"{dev} ({gpu})" if gpu and "gpu" in dev else dev


def run(out: Path, dims: fm.FixtureDims, tc: TrainConfig, note: str = "", log=print) -> dict:
    """Train, quantize, save the checkpoint and training.json under `out`; returns the record."""
    import mlx_lm

    model, config, record = train(dims, tc, log)
    corpus = fd.load_corpus(dims.vocab)
    float_eval = evaluate(model, corpus, tc.seq_len)
    ev_in, _ = fd.heldout_windows(corpus, tc.seq_len)
    load = fm.expert_load(model, ev_in)
    qmodel, qconfig = fm.quantize(model, config, tc.bits, tc.group_size)
    q_eval = evaluate(qmodel, corpus, tc.seq_len)
    fm.save_checkpoint(qmodel, qconfig, out, dims.vocab)
    record |= {
        "note": note, "device": device_name(), "mlx_version": mx.__version__, "mlx_lm_version": mlx_lm.__version__,
        "python": sys.version.split()[0],
        "heldout_ppl_float": float_eval["heldout_ppl"], "heldout_ppl_quantized": q_eval["heldout_ppl"],
        "unigram_ppl": round(fd.unigram_perplexity(corpus), 3),
        "heldout_copy_accuracy_float": float_eval["heldout_copy_accuracy"],
        "heldout_copy_accuracy_quantized": q_eval["heldout_copy_accuracy"],
        "heldout_expert_load_float": load,
        "copy_fraction": tc.copy_fraction, "shuffled_copy_fraction": tc.shuffled_fraction,
        "random_copy_fraction": tc.random_fraction, "random_source": tc.random_source,
        "random_only_steps": tc.random_only_steps, "text_weight": tc.text_weight, "quote_weight": tc.quote_weight,
        "aux_loss_coef": tc.aux_coef, "dropout": tc.dropout, "input_noise": tc.input_noise,
        "selection": selection_text(tc),
        "quantization": {"bits": tc.bits, "group_size": tc.group_size, "router_bits": 8,
                         "other_tensors": "float32"},
        "perplexity_definition": "exp(mean NLL) of every held-out token, teacher-forced in consecutive windows "
                                 f"of {tc.seq_len - 1} tokens each after a BOS token",
    }
    others = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.name != "training.json")
    for _ in range(3):  # the record holds the folder's size, its own bytes included: settle the digits
        record["checkpoint_bytes"] = others + len((json.dumps(record, indent=1) + "\n").encode())
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"saved {out}: {record['checkpoint_bytes'] / 1e6:.1f} MB, held-out ppl float "
        f"{record['heldout_ppl_float']} 4-bit {record['heldout_ppl_quantized']} unigram {record['unigram_ppl']}")
    return record


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def parse_args(argv: list[str] | None = None) -> tuple[Path, fm.FixtureDims, TrainConfig, str]:
    p = argparse.ArgumentParser(prog="python -m bench.train_fixture", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="checkpoint folder to write")
    p.add_argument("--note", default="", help="free text kept in training.json (e.g. where it was trained)")
    for group, cls in (("model", fm.FixtureDims), ("training", TrainConfig)):
        g = p.add_argument_group(group)
        for name, value in asdict(cls()).items():
            kind = _flag if isinstance(value, bool) else type(value)
            g.add_argument("--" + name.replace("_", "-"), type=kind, default=value, help=f"(default {value})")
    a = vars(p.parse_args(argv))
    dims = fm.FixtureDims(**{k: a[k] for k in asdict(fm.FixtureDims())})
    tc = TrainConfig(**{k: a[k] for k in asdict(TrainConfig())})
    if tc.random_source not in fd.RANDOM_SOURCES:
        p.error(f"--random-source {tc.random_source!r}: expected one of {', '.join(fd.RANDOM_SOURCES)}")
    return a["out"], dims, tc, a["note"]


def main(argv: list[str] | None = None) -> int:
    out, dims, tc, note = parse_args(argv)
    run(out, dims, tc, note, log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
