"""Turning `moed bench` records into derived figures, a table, and a markdown section for the results file.

Derived per moed run (decode, teacher-forced, medians over repeats):
- vs mlx-lm: decode tok/s as a fraction of the mlx-lm all-in-RAM run on the same checkpoint;
- time split: I/O wait per token (time the layer calls blocked on reads) and the rest (compute, syncs, Python);
- overlap efficiency = max(compute-only, I/O-only time per token) / measured time per token, where compute-only
  is the mlx-lm step time (no I/O at all) and I/O-only is the run's bytes read per token at the raw read
  throughput of the run's read mode (direct or buffered) measured in the same bench run.
"""

from __future__ import annotations


def _med(xs: list[float]) -> float:
    s = sorted(x for x in xs if x is not None)
    return s[len(s) // 2] if s else 0.0


def group(records: list[dict]) -> list[list[dict]]:
    """Records of the same configuration, in first-seen order."""
    import json

    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(json.dumps(r["config"], sort_keys=True), []).append(r)
    return list(groups.values())


def summarise(records: list[dict]) -> list[dict]:
    """One summary row per configuration, with derived figures."""
    groups = group(records)
    ref = next((g for g in groups if g[0]["config"]["kind"] == "mlx-lm" and "error" not in g[0]), None)
    ref_tps = _med([r["forced_decode_tps"] for r in ref]) if ref else 0.0
    raw = {g[0]["config"]["read_mode"]: _med([r["raw"]["gb_per_s"] for r in g])
           for g in groups if g[0]["config"]["kind"] == "readpath" and "error" not in g[0]}
    rows = []
    for g in groups:
        cfg = g[0]["config"]
        row = {"config": cfg, "runs": len(g)}
        if "error" in g[0]:
            row["error"] = g[0]["error"]
        elif cfg["kind"] in ("mlx-lm", "moed"):
            for key in ("prefill_tps", "forced_decode_tps", "sampled_decode_tps", "peak_rss_bytes",
                        "decode_hit_rate", "decode_bytes_read_per_token", "decode_wait_ms_per_token",
                        "syncs_per_token", "unsynced_layers_per_token", "prefetch_accuracy",
                        "prefetch_wasted_bytes_per_token", "budget_fraction"):
                if key in g[0]:
                    row[key] = _med([r.get(key) for r in g])
            if cfg["kind"] == "moed":
                # I/O-only at the raw rate of the run's own read mode (page-cache reads are far faster)
                _derive(row, ref_tps, raw.get(cfg.get("read_mode", "direct"), raw.get("direct", 0.0)))
        else:
            row.update({k: v for k, v in g[0].items() if k not in ("config",)})
        rows.append(row)
    return rows


def _derive(row: dict, ref_tps: float, raw_gbps: float) -> None:
    tps = row["forced_decode_tps"]
    step = 1 / tps if tps else 0.0
    if ref_tps:
        row["vs_mlx_lm"] = tps / ref_tps
    if ref_tps and raw_gbps and step:
        compute_only = 1 / ref_tps
        io_only = row["decode_bytes_read_per_token"] / (raw_gbps * 1e9)
        row["overlap_efficiency"] = max(compute_only, io_only) / step
        row["io_only_ms"] = io_only * 1000
    row["step_ms"] = step * 1000
    row["wait_share"] = row["decode_wait_ms_per_token"] / (step * 1000) if step else 0.0


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        c = r["config"]
        if "error" in r:
            lines.append(f"| {c['kind']} | ERROR: {r['error'][:300]} |")
        elif c["kind"] == "mlx-lm":
            lines.append(f"| mlx-lm (all in RAM) | | | | | {r['prefill_tps']:.2f} | {r['forced_decode_tps']:.3f} | "
                         f"{r.get('sampled_decode_tps', 0):.3f} | 1.00 | | | | | | {r['peak_rss_bytes'] / 1e9:.2f} |")
        elif c["kind"] == "moed":
            acc = r.get("prefetch_accuracy")
            lines.append(
                f"| moed | {c['budget']} | {c['prefetch_depth']} | {c['read_mode']} | {c['policy']} | "
                f"{r['prefill_tps']:.2f} | {r['forced_decode_tps']:.3f} | {r.get('sampled_decode_tps', 0):.3f} | "
                f"{r.get('vs_mlx_lm', 0):.2f} | {r['decode_hit_rate']:.1%} | "
                f"{r['decode_bytes_read_per_token'] / 1e6:.1f} | {r['decode_wait_ms_per_token']:.0f} / "
                f"{r['step_ms']:.0f} | {r.get('overlap_efficiency', 0):.2f} | "
                f"{'-' if acc is None else f'{acc:.0%}'} / {r['prefetch_wasted_bytes_per_token'] / 1e6:.1f} | "
                f"{r['peak_rss_bytes'] / 1e9:.2f} |")
    head = ("| run | budget | depth | reads | policy | prefill tok/s | decode tok/s (forced) | decode tok/s "
            "(sampled) | vs mlx-lm | hit rate | MB read/token | I/O wait / step ms | overlap eff. | "
            "prefetch acc. / wasted MB/token | peak RSS GB |\n" + "|---" * 15 + "|")
    out = [head, *lines]
    for r in rows:
        c = r["config"]
        if c["kind"] == "readpath" and "error" not in r:
            out.append(f"\nRead path ({r['read_mode']}, {r['threads']} threads, {r['record_bytes']} B records): "
                       f"moed {r['moed_gb_per_s']:.2f} GB/s vs raw device {r['raw']['gb_per_s']:.2f} GB/s "
                       f"({r['ratio']:.0%}).")
        elif c["kind"] == "restart" and "error" not in r:
            out.append(f"\nWarm restart ({c['budget']}): hit rate over the first {r['window']} tokens "
                       f"{r['restart_first_hit_rate']:.1%} vs steady state {r['steady_hit_rate']:.1%} "
                       f"({r['gap_points']:+.1f} points); {r['warm_reads_started']} warm reads queued in "
                       f"{r['warm_start_seconds'] * 1000:.1f} ms.")
    return "\n".join(out)
