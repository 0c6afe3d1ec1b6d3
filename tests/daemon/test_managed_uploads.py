"""The CUDA upload path (moed.daemon.engine.managed), exercised on the CPU through a driver stand-in that does
what the real calls promise (a copy moves bytes, a prefetch moves none): the cache must land every expert through
it, page-lock and release the reader's buffers, hint only memory of its banks, and stay bit-equal to mlx-lm.
The ctypes glue is checked against a fake libcuda: errors name the call and the driver's error name."""

from __future__ import annotations

import threading

import pytest
from mlx_lm import load as mlx_load

from moed.daemon.bench.workload import corpus_tokens
from moed.daemon.engine import managed
from moed.daemon.config import engine_config
from moed.daemon.engine.model import load_engine
from moed.daemon.testmodel.driver import StandInDriver

from test_engine_unsynced import assert_same_logits


@pytest.fixture
def stand_in(monkeypatch):
    drv = StandInDriver()
    monkeypatch.setattr(managed, "driver", lambda: drv)
    return drv


@pytest.fixture(scope="module")
def setup(model_dir):
    ref, tok = mlx_load(str(model_dir("qwen3_moe", "mlx")))
    return model_dir("qwen3_moe", "store-mlx"), ref, corpus_tokens(tok, 40)


def _bank_ranges(cache) -> list[tuple[int, int]]:
    return [(h.ctypes.data, h.ctypes.data + h.nbytes) for h in cache._pool.banks.host.values()]


def _inside(ranges, addr: int, n: int) -> bool:
    return any(lo <= addr and addr + n <= hi for lo, hi in ranges)


def test_copy_path_lands_every_expert_through_the_driver_and_stays_exact(setup, stand_in, monkeypatch):
    assert managed.upload_path() == managed.upload_path("auto") == "copy"
    store, ref, tokens = setup
    eng = load_engine(engine_config(store, cache_budget="25%", read_mode="buffered"))
    with eng:
        addr, nbytes = eng.reader.buffer_region()
        assert stand_in.pinned == {addr: nbytes}  # the reader's buffers, page-locked once
        banks = _bank_ranges(eng.cache)
        assert all(_inside(banks, a, n) for a, n in stand_in.prefetched)  # only the banks are hinted
        assert_same_logits(ref, eng, tokens[:24])
        reads = eng.reader.stats()
        assert reads.reads > 0 and reads.scatter_reads == 0  # staged in the pinned buffers, not read into rows
        assert stand_in.copies == stand_in.pinned_copies == reads.reads  # one per read, from the pinned buffers
        assert stand_in.copied_bytes == reads.reads * eng.cache.expert_bytes
        assert stand_in.threads and all(t.startswith("moed-reader") for t in stand_in.threads)
    assert stand_in.unpinned == [addr]  # released when the reader closed


def test_plain_path_on_request_with_a_driver(setup, stand_in):
    """load_engine(upload="plain"): the rows are written by the host even where the driver could copy."""
    store, ref, tokens = setup
    with load_engine(engine_config(store, cache_budget="25%", read_mode="buffered"), upload="plain") as eng:
        assert eng.cache.upload == "plain"
        assert_same_logits(ref, eng, tokens[:12])
        assert eng.reader.stats().reads > 0
    assert stand_in.copies == 0 and stand_in.pinned == {} and stand_in.prefetched == []


def test_plain_path_without_a_driver(setup, monkeypatch):
    monkeypatch.setattr(managed, "driver", lambda: None)
    assert managed.upload_path("copy") == "plain"  # no driver (CPU, Metal): the page-fault path, whatever was asked
    with pytest.raises(ValueError, match="fastest"):
        managed.upload_path("fastest")


class FakeLibcuda:
    """Enough of libcuda for managed.Driver: every call succeeds except those named in `failing`."""

    def __init__(self, failing=()):
        self.calls: list[str] = []
        self.failing = set(failing)
        for name in ("cuInit", "cuDeviceGet", "cuDevicePrimaryCtxRetain", "cuCtxSetCurrent", "cuStreamCreate",
                     "cuMemcpyHtoDAsync_v2", "cuMemPrefetchAsync_v2", "cuMemHostRegister_v2", "cuMemHostUnregister",
                     "cuStreamSynchronize"):
            setattr(self, name, self._call(name))

    def _call(self, name):
        def fn(*args):
            self.calls.append(name)
            return 2 if name in self.failing else 0  # 2: CUDA_ERROR_OUT_OF_MEMORY
        return fn

    @staticmethod
    def cuGetErrorName(rc, ref):
        ref._obj.value = b"CUDA_ERROR_OUT_OF_MEMORY" if rc == 2 else b"CUDA_ERROR_UNKNOWN"
        return 0


def test_driver_binds_the_context_once_per_thread_and_names_failures():
    lib = FakeLibcuda(failing={"cuMemcpyHtoDAsync_v2"})
    drv = managed.Driver(lib)
    drv.to_device([(4096, 8192), (65536, 4096)])
    drv.to_device([(4096, 8192)])
    assert lib.calls.count("cuCtxSetCurrent") == 1 and lib.calls.count("cuStreamCreate") == 1
    assert lib.calls.count("cuMemPrefetchAsync_v2") == 3
    t = threading.Thread(target=drv.to_device, args=([(4096, 8192)],))
    t.start()
    t.join()
    assert lib.calls.count("cuCtxSetCurrent") == 2  # a new thread binds MLX's context and gets its own stream
    with pytest.raises(managed.CudaError, match=r"cuMemcpyHtoDAsync failed: CUDA_ERROR_OUT_OF_MEMORY \(2\)"):
        drv.copy([(4096, 8192, 16)])
    assert "cuStreamSynchronize" not in lib.calls  # a failed copy is not waited for as if it had been queued


def test_copies_from_page_locked_memory_are_queued_holding_the_gil():
    """cuMemcpyHtoDAsync from pinned memory only queues the copy: it goes through the GIL-holding library (PyDLL);
    from pageable memory the driver copies before returning, so that call goes through the releasing one."""
    lib, held = FakeLibcuda(), FakeLibcuda()
    drv = managed.Driver(lib, held=held)
    drv.copy([(4096, 1 << 20, 4096), (8192, (1 << 20) + 4096, 4096)], pinned=True)
    assert held.calls == ["cuMemcpyHtoDAsync_v2"] * 2 and lib.calls[-1] == "cuStreamSynchronize"
    drv.copy([(4096, 1 << 30, 4096)])
    assert held.calls == ["cuMemcpyHtoDAsync_v2"] * 2 and lib.calls.count("cuMemcpyHtoDAsync_v2") == 1


def test_driver_setup_failure_is_a_cuda_error():
    with pytest.raises(managed.CudaError, match="cuDevicePrimaryCtxRetain failed"):
        managed.Driver(FakeLibcuda(failing={"cuDevicePrimaryCtxRetain"}))
