"""bench/governor_memory.py's mechanics on the tiny store in a real memory cgroup (skips where cgroups are not
permitted): both processes run in the cgroup, samples are taken, and a roomy limit kills nobody."""

from __future__ import annotations

import json
import os

import pytest

from bench import governor_memory


@pytest.mark.slow
def test_a_roomy_cgroup_kills_nobody_and_every_sample_has_its_fields(model_dir, tmp_path):
    if not governor_memory.CGROUP.is_dir() or not os.access(governor_memory.CGROUP, os.W_OK):
        pytest.skip("needs root and a writable cgroup v1 memory controller at /sys/fs/cgroup/memory")
    try:
        probe = governor_memory.Cgroup(1 << 30)
    except OSError as e:
        pytest.skip(f"cannot create a memory cgroup here: {e}")
    probe.remove()
    out = tmp_path / "gm.json"
    assert governor_memory.main([str(model_dir("qwen3_moe", "store-mlx")), "--limit", "3GB", "--budget", "50%",
                                 "--tenant-target", "64MB", "--tenant-step", "32MB", "--tenant-interval", "0.2",
                                 "--settle", "1", "--seconds", "3", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert not doc["daemon_killed"] and not doc["tenant_killed"] and doc["cgroup_oom_kills"] in (0, None)
    rows = [r for r in doc["samples"] if "t" in r]
    assert rows and all({"cgroup_usage", "daemon_rss", "tenant_rss", "cache_budget", "state"} <= set(r) for r in rows)
    assert rows[-1]["tenant_rss"] > 0 and rows[-1]["state"] == "PERFORMANCE"
