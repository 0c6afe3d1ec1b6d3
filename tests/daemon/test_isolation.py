"""One request's failure ends that request alone: a batch of 4 streams where one is poisoned (a corrupt expert, an
injected EIO, a sampler that raises), the other 3 finish with their solo tokens; the expert is quarantined,
health says degraded, status lists it, clear_quarantine puts it back."""

from __future__ import annotations

import gc
import shutil
import threading

import numpy as np
import pytest

from daemon_harness import Conn, InProcess, check_sequence, tokens_of
from moed.daemon.store.faults import Fault, Faults
from moed.daemon.store.format import read_manifest

PROMPTS = ["Once", "The cat", "A dog ran", "Rain", "Sun", "We went", "It is", "Tom said", "She", "Long ago"]
MAX_TOKENS = 3


@pytest.fixture(scope="module")
def store(model_dir):
    return model_dir("qwen3_moe", "store-mlx")


@pytest.fixture(scope="module")
def routes(store):
    """{prompt: (greedy solo tokens, {(layer position, expert)} its real positions route to)} for PROMPTS."""
    from moed.daemon.config import engine_config
    from moed.daemon.engine import experts as ex
    from moed.daemon.engine.generate import generate
    from moed.daemon.engine.model import load_engine

    seen: set[tuple[int, int]] = set()
    call = ex.StreamingSwitchGLU.__call__

    def recording(self, x, indices):
        seen.update((self._layer, int(e)) for e in np.unique(np.array(indices)))
        return call(self, x, indices)

    ex.StreamingSwitchGLU.__call__ = recording
    out = {}
    eng = load_engine(engine_config(store, read_mode="buffered"))
    try:
        for p in PROMPTS:
            seen.clear()
            toks = [t for _, t in generate(eng, p, max_tokens=MAX_TOKENS)]
            out[p] = (toks, set(seen))
    finally:
        ex.StreamingSwitchGLU.__call__ = call
        eng.close()
        del eng
        gc.collect()
    return out


@pytest.fixture
def batched(monkeypatch):
    """The first 4 requests are admitted together (one prefill batch), so the poisoned one shares every step with
    the others; returns the batch sizes of the steps where a request was ended as spoiled."""
    from moed.daemon.scheduler import Scheduler

    real_admit, real_end = Scheduler._admit, Scheduler._end_spoiled
    holding, sizes = [True], []

    def admit(self):
        if holding[0] and len(self._waiting) < 4:
            return
        holding[0] = False
        real_admit(self)

    def end_spoiled(self):
        before = len(self._active)
        real_end(self)
        if len(self._active) < before:
            sizes.append(before)

    monkeypatch.setattr(Scheduler, "_admit", admit)
    monkeypatch.setattr(Scheduler, "_end_spoiled", end_spoiled)
    return sizes


def pick(routes) -> tuple[str, list[str], tuple[int, int]]:
    """A poisoned prompt, 3 survivors and an expert only the poisoned one routes to."""
    for bad in PROMPTS:
        others = [p for p in PROMPTS if p != bad]
        for i in range(len(others) - 2):
            trio = others[i:i + 3]
            used = set().union(*(routes[p][1] for p in trio))
            only = sorted(routes[bad][1] - used)
            if only:
                return bad, trio, only[0]
    raise AssertionError("no expert is used by one prompt and none of three others")


def run_four(endpoint: str, bad: dict, survivors: list[str]) -> tuple[list[dict], list[list[dict]]]:
    """Send the 4 requests at once, each on its own connection; returns (poisoned replies, survivors' replies)."""
    results: dict[int, list[dict]] = {}

    def client(i: int, params: dict) -> None:
        c = Conn(endpoint)
        try:
            results[i] = c.call("generate", params, timeout=60)
        finally:
            c.close()

    jobs = [bad] + [{"prompt": p, "max_tokens": MAX_TOKENS} for p in survivors]
    threads = [threading.Thread(target=client, args=(i, params)) for i, params in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return results[0], [results[i] for i in (1, 2, 3)]


def check_isolated(d: InProcess, routes, bad: str, survivors: list[str], expert: tuple[int, int],
                   batched: list[int]) -> dict:
    """The 4-stream batch: the poisoned request fails with store_error naming the expert, the rest are exact."""
    m = read_manifest(d.config.engine.store)
    layer_no = m.layers[expert[0]].index
    poisoned, others = run_four(d.endpoint, {"prompt": bad, "max_tokens": MAX_TOKENS}, survivors)
    err = check_sequence(poisoned)["error"]
    assert err["code"] == "store_error", err
    assert batched[0] == 4  # it failed in a step it shared with the 3 others
    assert (err["layer"], err["expert"]) == (layer_no, expert[1])
    assert f"layer {layer_no} expert {expert[1]}" in err["message"]
    for p, replies in zip(survivors, others):
        assert check_sequence(replies)["status"] == "ok"
        assert tokens_of(replies) == routes[p][0], p
    c = Conn(d.endpoint)
    try:
        health = c.result("health")
        assert health["ok"] and health["state"] == "degraded"
        assert f"layer {layer_no} expert {expert[1]}" in health["reason"]
        status = c.result("status")
        assert status["state"] == "degraded"
        entry = status["quarantine"][f"layer {layer_no} expert {expert[1]}"]
        again = check_sequence(c.call("generate", {"prompt": bad, "max_tokens": MAX_TOKENS}))
        assert again["error"]["code"] == "store_error"  # fails fast: the expert is not read again
        assert c.result("status")["quarantine"][f"layer {layer_no} expert {expert[1]}"]["failures"] == \
            entry["failures"] + 1
        for p in survivors:  # and the daemon keeps serving the others
            assert tokens_of(c.call("generate", {"prompt": p, "max_tokens": MAX_TOKENS})) == routes[p][0]
        return entry
    finally:
        c.close()


def corrupt_copy(store, tmp_path, pos: int, expert: int):
    """A copy of the store where one byte of one expert's record is flipped."""
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    m = read_manifest(copy)
    path = copy / m.layers[pos].file
    data = bytearray(path.read_bytes())
    data[expert * m.layout.record_bytes + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    return copy


def test_corrupt_expert_fails_only_the_request_routed_to_it(store, routes, tmp_path, batched):
    bad, survivors, (pos, expert) = pick(routes)
    copy = corrupt_copy(store, tmp_path, pos, expert)
    m = read_manifest(copy)
    path = copy / m.layers[pos].file
    data = bytearray(path.read_bytes())
    with InProcess(copy, max_batch=4) as d:
        entry = check_isolated(d, routes, bad, survivors, (pos, expert), batched)
        assert "checksum mismatch" in entry["error"]
        c = Conn(d.endpoint)
        try:
            assert c.result("clear_quarantine") == {"cleared": 1}
            assert c.result("health")["state"] == "ready"
            # the store is still corrupt: the next use reads and verifies it again, and quarantines it again
            assert check_sequence(c.call("generate", {"prompt": bad, "max_tokens": MAX_TOKENS}))["error"]["code"] \
                == "store_error"
            assert c.result("health")["state"] == "degraded"
            data[expert * m.layout.record_bytes + 10] ^= 0xFF  # repair the store
            path.write_bytes(bytes(data))
            assert c.result("clear_quarantine") == {"cleared": 1}
            assert tokens_of(c.call("generate", {"prompt": bad, "max_tokens": MAX_TOKENS})) == routes[bad][0]
            assert c.result("health")["state"] == "ready"
        finally:
            c.close()


def test_injected_eio_fails_only_the_request_routed_to_it(store, routes, batched):
    from moed.daemon.engine.model import load_engine

    bad, survivors, (pos, expert) = pick(routes)
    faults = Faults([Fault("eio", pos, expert)])

    def loader(ec):
        eng = load_engine(ec)
        eng.reader.faults = faults
        return eng

    with InProcess(store, loader=loader, max_batch=4) as d:
        entry = check_isolated(d, routes, bad, survivors, (pos, expert), batched)
        assert "Input/output error" in entry["error"] or "injected I/O error" in entry["error"]
        assert faults.fired[0] >= 2  # the failed read was retried once before the expert was quarantined


def test_a_raising_sampler_ends_only_its_request(store, routes, monkeypatch, batched):
    import moed.daemon.jobs as jobs

    real = jobs.make_sampler

    def make_sampler(**kw):
        if kw["top_k"] == 7:  # the poisoned request's marker
            def boom(logprobs):
                raise ValueError("sampler exploded")
            return boom
        return real(**kw)

    monkeypatch.setattr(jobs, "make_sampler", make_sampler)
    survivors = PROMPTS[1:4]
    with InProcess(store, max_batch=4) as d:
        poisoned, others = run_four(d.endpoint, {"prompt": PROMPTS[0], "max_tokens": 20, "temperature": 1.0,
                                                 "top_k": 7}, survivors)
        err = check_sequence(poisoned)["error"]
        assert err["code"] == "internal" and "sampler exploded" in err["message"]
        assert batched[0] == 4
        for p, replies in zip(survivors, others):
            assert tokens_of(replies) == routes[p][0], p
        c = Conn(d.endpoint)
        try:
            assert c.result("health")["state"] == "ready"
        finally:
            c.close()


def test_top_k_above_the_vocabulary_is_refused_at_admission(store, routes):
    with InProcess(store, max_batch=4) as d:
        poisoned, others = run_four(d.endpoint, {"prompt": "Hi", "max_tokens": 2, "temperature": 1.0,
                                                 "top_k": 5000}, PROMPTS[1:4])
        err = check_sequence(poisoned)["error"]
        assert err["code"] == "invalid_params" and "top_k" in err["message"] and "1024" in err["message"]
        for p, replies in zip(PROMPTS[1:4], others):
            assert tokens_of(replies) == routes[p][0], p


def test_moectl_shows_and_clears_the_quarantine(store, routes, capsys):
    from moed.clients.cli import main as moectl
    from moed.daemon.engine.model import load_engine

    bad, survivors, (pos, expert) = pick(routes)

    def loader(ec):
        eng = load_engine(ec)
        eng.reader.faults = Faults([Fault("short", pos, expert)])
        return eng

    with InProcess(store, loader=loader) as d:
        c = Conn(d.endpoint)
        try:
            assert check_sequence(c.call("generate", {"prompt": bad, "max_tokens": MAX_TOKENS}))["error"]["code"] \
                == "store_error"
        finally:
            c.close()
        layer_no = read_manifest(store).layers[pos].index
        assert moectl(["--endpoint", d.endpoint, "health"]) == 0  # degraded still admits work
        out = capsys.readouterr().out
        assert out.startswith("degraded: ") and f"layer {layer_no} expert {expert}" in out
        assert moectl(["--endpoint", d.endpoint, "status"]) == 0
        out = capsys.readouterr().out
        assert "quarantined" in out and "short read" in out
        assert moectl(["--endpoint", d.endpoint, "clear-quarantine"]) == 0
        assert capsys.readouterr().out.strip() == "1 expert(s) back in service"


def test_moed_generate_refuses_top_k_above_the_vocabulary(store, capsys):
    from moed.daemon.cli import main as moed_main

    assert moed_main(["generate", str(store), "Hi", "--max-tokens", "2", "--temp", "1", "--top-k", "5000"]) == 2
    assert "top_k is 5000" in capsys.readouterr().err


def test_a_request_joining_a_decoding_batch_is_the_only_one_spoiled(store, routes, tmp_path):
    """The poisoned prompt enters while the others decode: its prefill is a separate model call, and the rows are
    still told apart (the RowTracker on mlx-lm's BatchGenerator, the scheduler's way)."""
    from mlx_lm.generate import BatchGenerator

    from moed.daemon.config import engine_config
    from moed.daemon.engine.generate import encode_prompt
    from moed.daemon.engine.model import load_engine
    from moed.daemon.engine.quarantine import Quarantine
    from moed.daemon.isolation import RowTracker

    bad, survivors, (pos, expert) = pick(routes)
    copy = corrupt_copy(store, tmp_path, pos, expert)
    eng = load_engine(engine_config(copy, read_mode="buffered"))
    try:
        quarantine = Quarantine([layer.index for layer in eng.manifest.layers])
        eng.cache.quarantine = quarantine
        tracker = RowTracker(eng.model, quarantine)
        eos = [[t] for t in sorted(eng.tokenizer.eos_token_ids)]
        bg = BatchGenerator(tracker, stop_tokens=eos, completion_batch_size=1 << 30, prefill_batch_size=8)
        uids = bg.insert([encode_prompt(eng, p) for p in survivors], max_tokens=[MAX_TOKENS] * 3)
        got: dict[int, list[int]] = {u: [] for u in uids}
        bad_uid, spoiled = None, {}
        for _ in range(50):
            _, tokens = bg.next()
            spoiled |= tracker.take()
            for u in spoiled:
                bg.remove([u])
            for t in tokens:
                if t.uid in got and t.finish_reason != "stop":
                    got[t.uid].append(t.token)
            if bad_uid is None and any(got.values()):  # the others are decoding now
                bad_uid = bg.insert([encode_prompt(eng, bad)], max_tokens=[MAX_TOKENS])[0]
            if bad_uid is not None and (bad_uid in spoiled or any(t.uid == bad_uid and t.finish_reason
                                                                  for t in tokens)):
                break
        bg.close()
        assert set(spoiled) == {bad_uid}
        assert spoiled[bad_uid][1] == [(eng.manifest.layers[pos].index, expert)]
        for u, p in zip(uids, survivors):
            assert got[u] == routes[p][0][:len(got[u])] and got[u], p
    finally:
        eng.close()
        del eng
        gc.collect()
