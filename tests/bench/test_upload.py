"""The upload benchmark (bench/upload.py) measures every candidate and checks the bytes each one landed; the
CUDA driver's candidates run through the package's host-memory stand-in driver."""

from __future__ import annotations

import pytest

from bench.upload import run_upload
from moed.daemon.engine import managed
from moed.daemon.testmodel.driver import StandInDriver


@pytest.fixture
def stand_in(monkeypatch):
    drv = StandInDriver()
    monkeypatch.setattr(managed, "driver", lambda: drv)
    return drv


def test_upload_benchmark_measures_and_checks_every_candidate(model_dir, stand_in):
    r = run_upload({"store": str(model_dir("qwen3_moe", "store-mlx")), "experts": 6})
    assert set(r["candidates"]) == {"view_copy", "mx_array", "mx_array_batched", "read_copy", "read_into_bank",
                                    "view_copy_prefetch", "driver_copy", "read_driver_copy"}
    assert r["correct"] == dict.fromkeys(["read_into_bank", "view_copy_prefetch", "driver_copy",
                                          "read_driver_copy"], True)
    assert all(c["gb_per_s"] > 0 for c in r["candidates"].values())
    assert stand_in.copies == 6 + 1 + 1  # read_driver_copy per expert, driver_copy at once, the prefetch's wait
    assert len(stand_in.unpinned) == 2 and set(stand_in.unpinned) == set(stand_in.pinned)
