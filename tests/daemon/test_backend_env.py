"""The engine's defaults for MLX's own environment settings (moed.daemon.engine.model.long_lived_backend_env)."""

from __future__ import annotations

import os

from moed.daemon.config import engine_config
from moed.daemon.engine.model import BACKEND_ENV_DEFAULTS, load_engine, long_lived_backend_env

CHECK = "MLX_ENABLE_CACHE_THRASHING_CHECK"


def test_the_thrashing_check_is_off_unless_the_user_set_it(monkeypatch):
    assert BACKEND_ENV_DEFAULTS[CHECK] == "0"
    monkeypatch.delenv(CHECK, raising=False)
    long_lived_backend_env()
    assert os.environ[CHECK] == "0"
    monkeypatch.setenv(CHECK, "1")
    long_lived_backend_env()
    assert os.environ[CHECK] == "1"  # a user's own setting wins


def test_load_engine_applies_them_before_the_model_runs(monkeypatch, trained_store):
    monkeypatch.delenv(CHECK, raising=False)
    with load_engine(engine_config(trained_store, cache_budget="100%")):
        assert os.environ[CHECK] == "0"
