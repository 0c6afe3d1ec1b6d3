"""`moectl governor [show | profile NAME | set KNOB=VALUE ... | auto] [--json]`: see and steer the daemon's governor.

    moectl governor                      state, profile, limits and why, readings, sources (same as `show`)
    moectl governor profile saver        switch profile: auto, performance, balanced, saver
    moectl governor set batch_ceiling=2 pace_steps_per_s=4     pin knobs above every law (overrides)
    moectl governor set pace_steps_per_s=none                  pin a knob to "no cap"
    moectl governor cap 150              hold average power under 150 W (pacing steps; needs a power reading)
    moectl governor cap off              drop that cap
    moectl governor auto                 profile auto, no overrides, no power cap

Requests: governor_get {} and governor_set {profile | set | power_cap_w | auto} (docs/protocol.md). Knobs: batch_ceiling,
prefetch_depth, cache_budget_bytes (a byte count, or with a unit: 2GB, 512MiB), pace_steps_per_s (a number >= 1.25,
or none). The change reaches the daemon's next step boundary.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_output import duration, nbytes, print_json, table
from .sync import Client

ACTIONS = ("show", "profile", "set", "cap", "auto")
_UNITS = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}


class GovernorUsage(ValueError):
    """A governor command line that cannot be sent (exit 2)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="show", choices=ACTIONS, help="what to do (default: show)")
    p.add_argument("args", nargs="*", metavar="ARG", help="profile: NAME; set: KNOB=VALUE ...")
    p.add_argument("--json", action="store_true", help="print the governor's status as JSON")


def cmd_governor(client: Client, args: argparse.Namespace) -> int:
    """See and steer the governor: show (default), profile NAME, set KNOB=VALUE ..., cap WATTS|off, auto.

    Requests: governor_get {} / governor_set {profile | set | power_cap_w | auto}.  Reply: the governor's status.
    Usage: moectl governor [show | profile NAME | set KNOB=VALUE ... | cap WATTS|off | auto] [--json]
    """
    settings = settings_from(args.action, args.args)
    status = client.governor_get() if settings is None else client.governor_set(**settings)
    if args.json:
        print_json(status)
    else:
        table(status_rows(status))
    return 0


def settings_from(action: str, argv: list[str]) -> dict[str, Any] | None:
    """The governor_set settings a command line asks for (None: just show). Raises GovernorUsage."""
    if action == "show":
        if argv:
            raise GovernorUsage("`governor show` takes no arguments")
        return None
    if action == "auto":
        if argv:
            raise GovernorUsage("`governor auto` takes no arguments")
        return {"auto": True}
    if action == "cap":
        if len(argv) != 1:
            raise GovernorUsage("`governor cap WATTS` (or `cap off`)")
        if argv[0].lower() in ("off", "none"):
            return {"power_cap_w": None}
        try:
            return {"power_cap_w": float(argv[0].lower().removesuffix("w"))}
        except ValueError:
            raise GovernorUsage(f"`governor cap {argv[0]}`: a number of watts, or off") from None
    if action == "profile":
        if len(argv) != 1:
            raise GovernorUsage("`governor profile NAME`: NAME is auto, performance, balanced or saver")
        return {"profile": argv[0]}
    if not argv:
        raise GovernorUsage("`governor set KNOB=VALUE ...`: knobs are batch_ceiling, prefetch_depth, "
                            "cache_budget_bytes, pace_steps_per_s")
    overrides = {}
    for item in argv:
        knob, sep, text = item.partition("=")
        if not sep or not knob:
            raise GovernorUsage(f"{item!r}: write KNOB=VALUE, e.g. batch_ceiling=2")
        overrides[knob] = _value(knob, text)
    return {"set": overrides}


def _value(knob: str, text: str) -> Any:
    t = text.strip()
    if knob == "pace_steps_per_s":
        if t.lower() in ("none", "off", "null"):
            return None
        try:
            return float(t)
        except ValueError:
            raise GovernorUsage(f"pace_steps_per_s={text!r}: a number of steps per second, or none") from None
    if knob == "cache_budget_bytes":
        u = t.upper().replace(" ", "")
        unit = next((k for k in _UNITS if u.endswith(k) and u[: -len(k)].replace(".", "", 1).isdigit()), None)
        if unit:
            return int(float(u[: -len(unit)]) * _UNITS[unit])
    try:
        return int(t)
    except ValueError:
        raise GovernorUsage(f"{knob}={text!r}: an integer") from None


def status_rows(st: dict[str, Any]) -> list[tuple[str, str]]:
    """The governor's status as rows: state and why, each limit and why, overrides, readings, sources."""
    if st.get("state") is None:
        return [("state", "starting (no decision yet)"), ("profile", str(st.get("profile")))]
    reasons, limits = st.get("reasons", {}), st.get("limits", {})
    since = ""
    if isinstance(st.get("at"), (int, float)) and isinstance(st.get("state_changed_at"), (int, float)):
        since = f", for {duration(st['at'] - st['state_changed_at'])}"
    rows = [("state", f"{st['state']}{since} ({reasons.get('state', '')})"), ("profile", str(st.get("profile")))]
    if st.get("power_cap_w") is not None:
        rows.append(("power cap", f"{st['power_cap_w']:g} W"))
    for knob, value in limits.items():
        shown = nbytes(value) if knob == "cache_budget_bytes" and isinstance(value, (int, float)) else (
            "no cap" if value is None else str(value))
        rows.append((knob, f"{shown}  ({reasons.get(knob, '')})"))
    overrides = st.get("overrides") or {}
    if overrides:
        rows.append(("overrides", ", ".join(f"{k}={v}" for k, v in overrides.items())))
    readings = st.get("readings") or {}
    for i, (name, value) in enumerate(sorted(readings.items())):
        rows.append(("readings" if i == 0 else "", f"{name} = {value:.4g}" if isinstance(value, float)
                     else f"{name} = {value}"))
    for i, (name, src) in enumerate(sorted((st.get("sources") or {}).items())):
        rows.append(("sources" if i == 0 else "", f"{name}: {src.get('status')}"))
    return rows
