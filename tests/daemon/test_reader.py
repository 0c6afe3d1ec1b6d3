"""ExpertReader and measure_device_throughput on small stores built directly with the format writer."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from moed.daemon.store import reader as reader_mod
from moed.daemon.store.format import (
    DTYPES,
    LayerFileWriter,
    Manifest,
    RecordLayout,
    StoreError,
    read_manifest,
    write_manifest,
)
from moed.daemon.bench.iobench import measure_device_throughput, store_layer_files
from moed.daemon.store.reader import ExpertReader

LAYOUT = RecordLayout.build([("gate_proj.weight", "uint32", (8, 100)), ("gate_proj.scales", "bfloat16", (8, 7)),
                             ("down_proj.weight", "uint8", (1000,))])
NUM_EXPERTS = 6
LAYER_INDICES = (1, 3)  # model layer numbers differ from manifest positions on purpose


def build_store(root: Path, seed: int = 0) -> tuple[Manifest, dict[tuple[int, int], dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    experts, entries = {}, []
    for pos, index in enumerate(LAYER_INDICES):
        w = LayerFileWriter(root, index, f"model.layers.{index}.mlp.switch_mlp", NUM_EXPERTS, LAYOUT)
        for e in range(NUM_EXPERTS):
            arrays = {t.name: rng.integers(0, 256, t.nbytes, dtype=np.uint8).view(DTYPES[t.dtype][0]).reshape(t.shape)
                      for t in LAYOUT.tensors}
            experts[pos, e] = arrays
            w.append(arrays)
        entries.append(w.close())
    manifest = Manifest("test", {}, None, LAYOUT, tuple(entries), ())
    write_manifest(root, manifest)
    return read_manifest(root), experts


@pytest.fixture(params=["tmp_path", "disk"])
def store(request, tmp_path):
    """A store under pytest's tmp_path and one on the real disk (where O_DIRECT normally works)."""
    if request.param == "tmp_path":
        root = tmp_path / "store"
    else:
        base = Path("/var/tmp") if os.path.isdir("/var/tmp") else Path(tempfile.gettempdir())
        root = base / f"moed-test-reader-{uuid.uuid4().hex}"
    root.mkdir(parents=True)
    yield root, *build_store(root)
    shutil.rmtree(root, ignore_errors=True)


def check_payload(payload: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    assert payload.dtype == np.uint8 and len(payload) == LAYOUT.payload_bytes
    got = LAYOUT.unpack(payload)
    for name, a in arrays.items():
        np.testing.assert_array_equal(got[name], a)


@pytest.mark.parametrize("mode", ["direct", "buffered"])
def test_every_expert_reads_back_exactly(store, mode):
    root, manifest, experts = store
    with ExpertReader(root, manifest, mode=mode, threads=2) as r:
        for (pos, e), arrays in experts.items():
            check_payload(r.read_now(pos, e), arrays)
        s = r.stats()
        assert s.reads == len(experts) and s.bytes_read == s.reads * LAYOUT.record_bytes
        assert s.errors == 0 and s.read_ns > 0 and s.verify_ns > 0
        if mode == "buffered":
            assert s.mode == "buffered"
        else:
            assert s.mode == "direct" or s.mode.startswith("buffered (direct unsupported on ")


def test_many_concurrent_reads_more_than_buffers(store):
    root, manifest, experts = store
    results: dict[int, np.ndarray] = {}
    lock = threading.Lock()

    def sink_for(i):
        def sink(p):
            with lock:
                results[i] = p.copy()
        return sink

    keys = list(experts) * 10
    with ExpertReader(root, manifest, threads=3, buffers=2) as r:
        futs = [r.read(pos, e, sink_for(i), priority=i % 3) for i, (pos, e) in enumerate(keys)]
        for f in futs:
            assert f.result(timeout=30) is None
        for i, key in enumerate(keys):
            check_payload(results[i], experts[key])
        s = r.stats()
        assert s.reads == len(keys) and s.bytes_read == len(keys) * LAYOUT.record_bytes
        assert s.errors == 0


def test_priority_order_with_one_thread(store):
    root, manifest, _ = store
    release, started, order = threading.Event(), threading.Event(), []

    def blocker(p):
        started.set()
        assert release.wait(10)

    with ExpertReader(root, manifest, threads=1) as r:
        first = r.read(0, 0, blocker, priority=5)
        assert started.wait(10)
        low = [r.read(0, e, lambda p, e=e: order.append(("low", e)), priority=5) for e in range(1, 4)]
        high = r.read(1, 0, lambda p: order.append(("high", 0)), priority=0)
        release.set()
        for f in [first, high, *low]:
            f.result(timeout=10)
    assert order == [("high", 0), ("low", 1), ("low", 2), ("low", 3)]


def test_checksum_mismatch_names_layer_and_expert(store):
    root, manifest, experts = store
    path = root / manifest.layers[1].file
    with open(path, "r+b") as f:  # flip one payload byte of expert 2 of the second layer
        f.seek(2 * LAYOUT.record_bytes + 100)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    with ExpertReader(root, manifest, threads=2) as r:
        with pytest.raises(StoreError) as ei:
            r.read_now(1, 2)
        msg = str(ei.value)
        assert f"layer {LAYER_INDICES[1]}" in msg and "expert 2" in msg and str(path) in msg
        assert f"{manifest.layers[1].checksums[2]:08x}" in msg
        with pytest.raises(StoreError):  # not marked verified: still refused
            r.read_now(1, 2)
        check_payload(r.read_now(1, 3), experts[1, 3])
        check_payload(r.read_now(0, 2), experts[0, 2])
        assert r.stats().errors == 2


def test_verify_off_skips_checksum(store):
    root, manifest, _ = store
    with ExpertReader(root, manifest, verify=False) as r:
        r.read_now(0, 0)
        assert r.stats().verify_ns == 0


def test_truncated_file_is_a_clear_error(store):
    root, manifest, experts = store
    path = root / manifest.layers[0].file
    os.truncate(path, (NUM_EXPERTS - 1) * LAYOUT.record_bytes + 1000)  # last record cut short
    with ExpertReader(root, manifest) as r:
        with pytest.raises(StoreError) as ei:
            r.read_now(0, NUM_EXPERTS - 1)
        msg = str(ei.value)
        assert str(path) in msg and "short read" in msg
        assert f"offset {(NUM_EXPERTS - 1) * LAYOUT.record_bytes}" in msg
        assert f"expected {LAYOUT.record_bytes} bytes, got 1000" in msg
        check_payload(r.read_now(0, 0), experts[0, 0])


def test_missing_file_is_a_store_error(store):
    root, manifest, _ = store
    (root / manifest.layers[0].file).unlink()
    with ExpertReader(root, manifest) as r:
        with pytest.raises(StoreError, match="layer-001.bin"):
            r.read_now(0, 0)


def test_sink_exception_propagates_and_buffer_returns(store):
    root, manifest, experts = store

    def bad(p):
        raise ValueError("sink failed")

    with ExpertReader(root, manifest, threads=2, buffers=2) as r:
        futs = [r.read(0, e % NUM_EXPERTS, bad) for e in range(8)]
        for f in futs:
            with pytest.raises(ValueError, match="sink failed"):
                f.result(timeout=10)
        assert sorted(r._free) == [0, 1]  # every buffer back in the pool
        for e in range(NUM_EXPERTS):  # more reads than buffers still complete
            check_payload(r.read_now(0, e), experts[0, e])
        assert r.stats().errors == 0


def test_payload_is_read_only(store):
    root, manifest, _ = store
    with ExpertReader(root, manifest) as r:
        seen = []
        r.read(0, 0, lambda p: seen.append(p.flags.writeable)).result(timeout=10)
        assert seen == [False]


def test_bad_arguments(store):
    root, manifest, _ = store
    with pytest.raises(ValueError):
        ExpertReader(root, manifest, mode="mmap")
    with ExpertReader(root, manifest) as r:
        with pytest.raises(IndexError):
            r.read(len(manifest.layers), 0, lambda p: None)
        with pytest.raises(IndexError):
            r.read(0, NUM_EXPERTS, lambda p: None)


def test_close_is_idempotent_and_cancels_queued(store):
    root, manifest, _ = store
    release, started = threading.Event(), threading.Event()
    r = ExpertReader(root, manifest, threads=1)
    first = r.read(0, 0, lambda p: (started.set(), release.wait(10)))
    assert started.wait(10)
    queued = [r.read(0, e, lambda p: None) for e in range(1, 4)]
    threading.Timer(0.2, release.set).start()
    r.close()
    first.result(timeout=10)
    assert all(f.cancelled() for f in queued)
    r.close()
    with pytest.raises(RuntimeError):
        r.read(0, 0, lambda p: None)


def test_fallback_when_direct_open_refused(store, monkeypatch, caplog):
    root, manifest, experts = store
    o_direct = getattr(os, "O_DIRECT", 0)
    if not o_direct:
        pytest.skip("no O_DIRECT on this platform")
    real_open = os.open

    def fake_open(path, flags, *a, **k):
        if flags & o_direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(reader_mod.os, "open", fake_open)
    with ExpertReader(root, manifest, mode="direct") as r:
        check_payload(r.read_now(0, 1), experts[0, 1])
        check_payload(r.read_now(1, 1), experts[1, 1])
        mode = r.stats().mode
    assert mode == f"buffered (direct unsupported on {root / manifest.layers[0].file})"
    assert sum("direct I/O is not supported" in rec.message for rec in caplog.records) == 1  # once per reader


def test_fallback_when_direct_read_refused(store, monkeypatch):
    root, manifest, experts = store
    o_direct = getattr(os, "O_DIRECT", 0)
    if not o_direct:
        pytest.skip("no O_DIRECT on this platform")
    import fcntl

    real = reader_mod._PREADV

    def fake_preadv(fd, bufs, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & o_direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, bufs, offset)

    monkeypatch.setattr(reader_mod, "_PREADV", fake_preadv)
    with ExpertReader(root, manifest, mode="direct", threads=2) as r:
        futs = [r.read(0, e, lambda p: None) for e in range(NUM_EXPERTS)]
        for f in futs:
            f.result(timeout=10)
        check_payload(r.read_now(0, 3), experts[0, 3])
        assert r.stats().mode.startswith("buffered (direct unsupported on ")


def test_pread_fallback_without_preadv(store, monkeypatch):
    root, manifest, experts = store
    monkeypatch.setattr(reader_mod, "_PREADV", None)
    with ExpertReader(root, manifest, mode="buffered") as r:
        check_payload(r.read_now(1, 4), experts[1, 4])


@pytest.mark.parametrize("mode", ["direct", "buffered"])
def test_measure_device_throughput(store, mode):
    root, manifest, _ = store
    res = measure_device_throughput(store_layer_files(root), mode=mode, block_bytes=LAYOUT.record_bytes,
                                    threads=2, total_bytes=40 * LAYOUT.record_bytes)
    assert res["bytes"] == 40 * LAYOUT.record_bytes
    assert res["seconds"] > 0 and res["gb_per_s"] > 0
    assert res["threads"] == 2 and res["block_bytes"] == LAYOUT.record_bytes
    assert res["mode"] == mode or res["mode"].startswith("buffered (direct unsupported on ")
    if mode == "buffered":
        assert "page-cache" in res["note"]
    timed = measure_device_throughput(root / manifest.layers[0].file, mode=mode, block_bytes=4096, threads=1,
                                      seconds=0.05)
    assert timed["bytes"] > 0 and timed["seconds"] >= 0.05


def scatter_read(r: ExpertReader, layer: int, expert: int) -> tuple[dict[str, np.ndarray], bool]:
    """Read through a sink with `targets` (as the cache's): returns the destination rows and whether the sink was
    called (the staging path) rather than the record read straight into them."""
    rows = {t.name: np.zeros(t.nbytes, dtype=np.uint8) for t in LAYOUT.tensors}
    called = []

    def sink(payload):
        called.append(True)
        for t in LAYOUT.tensors:
            rows[t.name][:] = payload[t.offset : t.offset + t.nbytes]

    sink.targets = [(t.offset, rows[t.name]) for t in LAYOUT.tensors]
    r.read(layer, expert, sink).result()
    return rows, bool(called)


def check_rows(rows: dict[str, np.ndarray], arrays: dict[str, np.ndarray]) -> None:
    for name, a in arrays.items():
        assert rows[name].tobytes() == np.ascontiguousarray(a).tobytes(), name


@pytest.mark.parametrize("mode", ["buffered", "direct"])
def test_scatter_reads_land_in_the_targets(store, mode):
    root, manifest, experts = store
    with ExpertReader(root, manifest, mode=mode, threads=2) as r:
        for key in [(0, 0), (1, 5), (0, 3)]:
            rows, staged = scatter_read(r, *key)
            check_rows(rows, experts[key])
            # buffered: straight into the rows; direct: these rows are not 4 KiB-aligned, so through the buffer
            assert staged == (r.stats().mode == "direct")
        assert r.stats().reads == 3 and r.stats().bytes_read == 3 * LAYOUT.record_bytes
        assert r.stats().scatter_reads == (0 if r.stats().mode == "direct" else 3)


def test_scatter_reads_verify_checksums_and_length(store):
    root, manifest, experts = store
    with open(root / manifest.layers[1].file, "r+b") as f:
        f.seek(4 * LAYOUT.record_bytes + LAYOUT.payload_bytes - 1)  # the payload's last byte
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    os.truncate(root / manifest.layers[0].file, (NUM_EXPERTS - 1) * LAYOUT.record_bytes + 100)
    with ExpertReader(root, manifest, mode="buffered") as r:
        with pytest.raises(StoreError, match=f"layer {LAYER_INDICES[1]} expert 4: checksum mismatch"):
            scatter_read(r, 1, 4)
        with pytest.raises(StoreError, match="short read"):
            scatter_read(r, 0, NUM_EXPERTS - 1)
        rows, _ = scatter_read(r, 1, 3)
        check_rows(rows, experts[1, 3])
        assert r.stats().errors == 2


def test_direct_reads_checksum_off_the_worker(store, monkeypatch):
    """With direct reads a first read's CRC runs on a checker thread: the one worker starts the next read while the
    previous checksum is still running; each future resolves only after its checksum, a mismatch fails that read
    alone (named), and close() resolves every future."""
    root, manifest, experts = store
    release = threading.Event()
    seen: list[tuple[str, int]] = []
    real = ExpertReader._checksum

    def slow_checksum(self, layer, expert, *args):
        seen.append((threading.current_thread().name, expert))
        assert release.wait(10)
        return real(self, layer, expert, *args)

    fd, direct = reader_mod.open_for_read(str(root / manifest.layers[0].file), "direct")
    os.close(fd)
    if not direct:  # then reads are buffered and checksums stay on the worker
        pytest.skip("O_DIRECT not available on this filesystem")
    monkeypatch.setattr(ExpertReader, "_checksum", slow_checksum)
    with ExpertReader(root, manifest, mode="direct", threads=1) as r:
        first = r.read(0, 0, lambda p: None)
        for _ in range(500):
            if seen:
                break
            release.wait(0.01)
        if not r._files[0].direct:  # O_DIRECT accepted on open, refused on read: reads fell back to buffered
            release.set()
            pytest.skip("O_DIRECT reads refused on this filesystem")
        second = r.read(0, 1, lambda p: None)
        for _ in range(500):  # the single worker reads the second record while the first checksum is held
            if r.stats().reads == 2:
                break
            release.wait(0.01)
        assert r.stats().reads == 2 and not first.done() and not second.done()
        assert {name for name, _ in seen} == {"moed-checksum-0"}
        release.set()
        assert first.result(5) is None and second.result(5) is None
        check_payload(r.read_now(0, 1), experts[0, 1])  # verified once: no checksum the second time
        assert [e for _, e in seen] == [0, 1]
    monkeypatch.setattr(ExpertReader, "_checksum", real)
    with open(root / manifest.layers[1].file, "r+b") as f:  # corrupt expert 4 of the second layer
        f.seek(4 * LAYOUT.record_bytes + 10)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    with ExpertReader(root, manifest, mode="direct", threads=2) as r:
        futs = [r.read(1, e, lambda p: None) for e in range(NUM_EXPERTS)]
        for e, fut in enumerate(futs):
            if e == 4:
                with pytest.raises(StoreError, match=f"layer {LAYER_INDICES[1]} expert 4: checksum mismatch"):
                    fut.result(5)
            else:
                assert fut.result(5) is None
        assert r.stats().errors == 1
        pending = [r.read(0, e, lambda p: None) for e in range(NUM_EXPERTS)]
    assert all(f.done() for f in pending)  # close() left no future unresolved
