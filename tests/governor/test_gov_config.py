"""GovernorConfig: defaults, from_dict, and errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest

from moed.governor import GovernorConfig, GovernorConfigError
from moed.governor.config import describe


def test_defaults_and_from_dict() -> None:
    cfg = GovernorConfig.from_dict({"profile": "saver", "dwell_s": 30, "batch_fractions": [1, 0.5, 0.5, 0.25]})
    assert cfg.profile == "saver" and cfg.dwell_s == 30 and cfg.batch_fractions == (1.0, 0.5, 0.5, 0.25)
    assert GovernorConfig() == GovernorConfig.from_dict({})
    assert all(doc for _, _, doc in describe())


@pytest.mark.parametrize("data, key", [
    ({"dwel_s": 1}, "dwel_s"),
    ({"profile": "turbo"}, "profile"),
    ({"dwell_s": -1}, "dwell_s"),
    ({"dwell_s": "60"}, "dwell_s"),
    ({"thermal_saver": float("nan")}, "thermal_saver"),
    ({"batch_increase": 0}, "batch_increase"),
    ({"batch_increase": True}, "batch_increase"),
    ({"batch_fractions": [1, 0.5, 0.25]}, "batch_fractions"),
    ({"batch_fractions": [0.5, 1, 0.25, 0]}, "batch_fractions"),
    ({"pace_steps_per_s": [0, 0, 0.5, 0]}, "pace_steps_per_s"),
    ({"pace_steps_per_s": [0, 4, 0, 0]}, "pace_steps_per_s"),
    ({"power_cap_w": [0, 50, 100, 100]}, "power_cap_w"),
    ({"battery_critical_pct": 30}, "battery_critical_pct"),
    ({"thermal_balanced": 0.95}, "thermal_balanced"),
    ({"psi_warn": 50}, "psi_warn"),
])
def test_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(GovernorConfigError, match=key):
        GovernorConfig.from_dict(data)


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        GovernorConfig().dwell_s = 1.0  # type: ignore[misc]


def test_docs_list_every_key_and_knob() -> None:
    from pathlib import Path

    from moed.governor import KNOBS

    doc = (Path(__file__).parents[2] / "docs" / "governor.md").read_text()
    for key, _, _ in describe():
        assert f"| `{key}` |" in doc, key
    for knob in KNOBS:
        assert f"`{knob}`" in doc, knob
