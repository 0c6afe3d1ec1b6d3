"""The reader's fault seam (store/faults.py): injected EIO, short reads, slow reads and checksum mismatches surface
as StoreErrors naming the layer and the expert, on both read paths, and leave other experts alone."""

from __future__ import annotations

import numpy as np
import pytest

from moed.daemon.store.faults import Fault, Faults
from moed.daemon.store.format import StoreError
from moed.daemon.store.reader import ExpertReader

from test_reader import LAYER_INDICES, NUM_EXPERTS, build_store, check_payload


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    return root, *build_store(root)


class ScatterSink:
    """A sink with targets: the reader reads straight into `out` (the scatter path)."""

    def __init__(self, nbytes: int):
        self.out = np.zeros(nbytes, dtype=np.uint8)
        self.targets = [(0, self.out)]

    def __call__(self, payload: np.ndarray) -> None:
        self.out[:] = payload[: self.out.nbytes]


def read_scattered(r: ExpertReader, pos: int, e: int) -> None:
    r.read(pos, e, ScatterSink(r.manifest.layout.payload_bytes)).result()


@pytest.mark.parametrize("read", [ExpertReader.read_now, read_scattered])
@pytest.mark.parametrize("kind, words", [("eio", "I/O error"), ("short", "short read"), ("corrupt", "checksum")])
def test_a_fault_names_layer_and_expert_and_spares_the_rest(store, read, kind, words):
    root, manifest, experts = store
    with ExpertReader(root, manifest, mode="buffered", threads=2) as r:
        r.faults = Faults([Fault(kind, layer=1, expert=4)])
        with pytest.raises(StoreError, match=rf"layer {LAYER_INDICES[1]} expert 4\b.*{words}"):
            read(r, 1, 4)
        for e in range(NUM_EXPERTS):  # the other experts of the layer, and the other layer, read fine
            if e != 4:
                check_payload(r.read_now(1, e), experts[1, e])
            check_payload(r.read_now(0, e), experts[0, e])
        assert r.faults.fired == [1]


def test_a_checksum_mismatch_on_the_nth_read_of_a_layer(store):
    root, manifest, experts = store
    with ExpertReader(root, manifest, mode="buffered", threads=1) as r:
        r.faults = Faults([Fault("corrupt", layer=0, on={3})])
        check_payload(r.read_now(0, 0), experts[0, 0])
        check_payload(r.read_now(0, 1), experts[0, 1])
        with pytest.raises(StoreError, match=rf"layer {LAYER_INDICES[0]} expert 2\b.*checksum mismatch"):
            r.read_now(0, 2)
        check_payload(r.read_now(0, 2), experts[0, 2])  # the 4th read is clean, and verified again
        assert r.stats().errors == 1


def test_slow_reads_are_slow_but_correct(store):
    root, manifest, experts = store
    with ExpertReader(root, manifest, mode="buffered", threads=1) as r:
        r.faults = Faults([Fault("slow", layer=0, expert=None, delay_s=0.01)])
        for e in range(NUM_EXPERTS):
            check_payload(r.read_now(0, e), experts[0, e])
        assert r.faults.fired == [NUM_EXPERTS]


def test_an_unknown_fault_kind_is_refused():
    with pytest.raises(ValueError, match="fault kind"):
        Fault("boom", layer=0)
