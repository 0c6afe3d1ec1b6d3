"""The speculation benchmark's records as one summary row per (budget, workload, mode) and a markdown table.

Medians over the repeats of a configuration. "vs off" is the median of paired ratios: the i-th run of a mode
against the i-th run without speculation at the same budget (the plan alternates them). "tokens = off" says
whether every prompt gave the same tokens as without speculation; "tokens = mlx-lm" the same against mlx-lm's own
greedy generation on the checkpoint (with --reference).
"""

from __future__ import annotations

READ_BACK = "routing read back (with the prediction)"  # engine/probe.py's Phase values (no MLX import here)
WAIT = "acquire: waiting for reads"


def _med(xs: list) -> float | None:
    s = sorted(x for x in xs if x is not None)
    return s[len(s) // 2] if s else None


def _tokens(rec: dict, workload: str) -> list[list[int]]:
    return [r["tokens"] for r in rec["workloads"][workload]["runs"]]


def summarise_spec(records: list[dict]) -> list[dict]:
    """Rows: budget, workload, mode, and the figures (see the module docstring)."""
    ref = next((r for r in records if r["config"]["kind"] == "spec-ref" and "error" not in r), None)
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        c = r["config"]
        if c["kind"] == "spec":
            runs.setdefault((c["budget"], c["speculation"]), []).append(r)
    rows = []
    for (budget, mode), recs in runs.items():
        good = [r for r in recs if "error" not in r]
        if not good:
            rows.append({"budget": budget, "mode": mode, "workload": "-", "error": recs[0]["error"]})
            continue
        base = [r for r in runs.get((budget, "off"), []) if "error" not in r]
        for w in good[0]["workloads"]:
            figs = [r["workloads"][w] for r in good]
            row = {"budget": budget, "mode": mode, "workload": w, "runs": len(good),
                   "budget_fraction": good[0].get("budget_fraction"), "backend": good[0].get("backend")}
            for k in ("decode_tps", "tokens_per_pass", "draft_tokens", "accepted_tokens", "acceptance",
                      "decode_bytes_per_token", "decode_hit_rate", "ms_per_token", "syncs_per_token",
                      "misses_per_token", "prefetches_per_token"):
                row[k] = _med([f.get(k) for f in figs])
            phases = [f.get("phases_ms_per_token") or {} for f in figs]
            row["synced_ms_per_token"] = _med([sum(p.values()) for p in phases])
            row["read_back_ms_per_token"] = _med([p.get(READ_BACK, 0.0) for p in phases])
            row["wait_ms_per_token"] = _med([p.get(WAIT, 0.0) for p in phases])
            if base:
                pairs = zip(good, base)
                row["vs_off"] = _med([a["workloads"][w]["decode_tps"] / b["workloads"][w]["decode_tps"]
                                      for a, b in pairs if b["workloads"][w]["decode_tps"]])
                row["bytes_vs_off"] = _med([
                    a["workloads"][w]["decode_bytes_per_token"] / b["workloads"][w]["decode_bytes_per_token"]
                    for a, b in zip(good, base) if b["workloads"][w]["decode_bytes_per_token"]])
                row["same_as_off"] = all(_tokens(r, w) == _tokens(base[0], w) for r in good)
            if ref is not None and w in ref["workloads"]:
                row["same_as_mlx_lm"] = all(_tokens(r, w) == _tokens(ref, w) for r in good)
                row["mlx_lm_decode_tps"] = ref["workloads"][w]["decode_tps"]
            rows.append(row)
    order = {"off": 0, "lookup": 1, "draft": 2}
    rows.sort(key=lambda r: (-float(r["budget"].rstrip("%")), r["workload"], order.get(r["mode"], 9)))
    return rows


def _f(x, fmt: str, unit: str = "") -> str:
    return "-" if x is None else format(x, fmt) + unit


def _yn(x) -> str:
    return "-" if x is None else ("yes" if x else "**no**")


def spec_table(rows: list[dict]) -> str:
    head = ("| budget | workload | speculation | decode tok/s | vs off | tokens / pass | drafts accepted / proposed "
            "| MB read / token | vs off | hit rate | tokens = off | tokens = mlx-lm |\n" + "|---" * 12 + "|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['budget']} | | {r['mode']} | ERROR: {r['error'][:300]} |")
            continue
        acc = ("-" if not r["draft_tokens"] else
               f"{r['accepted_tokens']:.0f} / {r['draft_tokens']:.0f} ({r['acceptance']:.0%})")
        mb = r["decode_bytes_per_token"] / 1e6
        lines.append(
            f"| {r['budget']} | {r['workload']} | {r['mode']} | {r['decode_tps']:.2f} | "
            f"{_f(r.get('vs_off'), '.2f', 'x')} | {_f(r['tokens_per_pass'], '.2f')} | {acc} | {mb:.3g} | "
            f"{_f(r.get('bytes_vs_off'), '.2f', 'x')} | {_f(r['decode_hit_rate'], '.1%')} | "
            f"{_yn(r.get('same_as_off'))} | {_yn(r.get('same_as_mlx_lm'))} |")
    ref = {r["workload"]: r["mlx_lm_decode_tps"] for r in rows if r.get("mlx_lm_decode_tps")}
    if ref:
        lines.append("\nmlx-lm (whole checkpoint in RAM, no speculation) decode tok/s: "
                     + ", ".join(f"{w} {v:.2f}" for w, v in ref.items()) + ".")
    return "\n".join(lines)


def pass_cost_lines(records: list[dict]) -> str:
    """Per budget, the median time of one forward pass by rows (records with pass_ms_by_rows, every mode)."""
    by: dict[str, dict[str, list[float]]] = {}
    for r in records:
        for n, ms in r.get("pass_ms_by_rows", {}).items():
            by.setdefault(r["config"]["budget"], {}).setdefault(n, []).append(ms)
    lines = []
    for budget, rows in by.items():
        one = _med(rows.get("1", [])) or 0.0
        parts = [f"{n} rows {_med(v):.1f} ms" + (f" ({_med(v) / one:.2f}x)" if one else "") for n, v in rows.items()]
        lines.append(f"One forward pass at {budget} (median; a verify pass of K drafts has K + 1 rows): "
                     + ", ".join(parts) + ".")
    return "\n".join(lines)


def profile_table(rows: list[dict]) -> str:
    """Where a generated token's time goes (medians): all of it, inside synchronised layer calls (of which the
    routing read back and waiting for reads), and the calls and reads per token."""
    head = ("| budget | workload | speculation | ms / token | in synced layer calls | read back | waiting for reads "
            "| synced calls / token | demand reads / token | prefetch reads / token |\n" + "|---" * 10 + "|")
    lines = [head]
    for r in rows:
        if "error" in r or r.get("ms_per_token") is None:
            continue
        lines.append(f"| {r['budget']} | {r['workload']} | {r['mode']} | {r['ms_per_token']:.2f} | "
                     f"{_f(r.get('synced_ms_per_token'), '.2f')} | {_f(r.get('read_back_ms_per_token'), '.2f')} | "
                     f"{_f(r.get('wait_ms_per_token'), '.2f')} | {_f(r.get('syncs_per_token'), '.2f')} | "
                     f"{_f(r.get('misses_per_token'), '.2f')} | {_f(r.get('prefetches_per_token'), '.2f')} |")
    return "\n".join(lines) if len(lines) > 1 else ""
