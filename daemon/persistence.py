"""What the daemon keeps across runs, in its state folder: expert usage statistics and the last run's summary.

    usage-<store name>-<hash of its path>.json   decayed use counts per expert (engine/warm.py), saved every
                                                 save_interval_s while serving and at exit; read at start to warm
                                                 the cache
    last-run.json                                the cache, reader and outcome counters at exit

The state folder is `state_dir` from the config, else the platform's (paths.state_dir), created private (0700).
Used by the scheduler thread only; the engine's save writes atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DaemonConfig
from .logs import event

if TYPE_CHECKING:
    from .engine.model import Engine

log = logging.getLogger(__name__)


class StateFiles:
    """The state files of one daemon config, and when the usage statistics are next due."""

    def __init__(self, config: DaemonConfig):
        self.config = config
        self._last_save = time.monotonic()

    def state_dir(self) -> Path:
        from .paths import make_private_dir, state_dir

        return make_private_dir(Path(self.config.server.state_dir or state_dir()).expanduser())

    def usage_path(self) -> Path:
        """Per store (by its resolved path), so two daemons on two stores keep separate statistics."""
        store = str(Path(self.config.engine.store).resolve())
        digest = hashlib.sha256(store.encode()).hexdigest()[:12]
        return self.state_dir() / f"usage-{Path(store).name}-{digest}.json"

    def save_periodically(self, engine: Engine) -> None:
        """Save the usage statistics every save_interval_s (0 = never here), so a crash still leaves a warm
        restart; a failed save is logged and retried at the next interval."""
        interval = self.config.server.save_interval_s
        now = time.monotonic()
        if interval <= 0 or now - self._last_save < interval:
            return
        self._last_save = now
        try:
            engine.save_state(self.usage_path())
        except OSError:
            log.exception("could not save the expert usage statistics")

    def save_at_exit(self, engine: Engine, snapshot: dict[str, Any]) -> None:
        """The usage statistics, then last-run.json from a status snapshot and the reader's counters."""
        engine.save_state(self.usage_path())
        doc = {"store": self.config.engine.store, "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "cache": snapshot["cache"], "reader": vars(engine.reader.stats()), "finished": snapshot["finished"]}
        path = self.state_dir() / "last-run.json"
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        os.replace(tmp, path)
        event(log, logging.INFO, "saved", path=str(path))
