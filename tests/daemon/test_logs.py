"""Log lines are logfmt (split back into pairs with shlex) and go to stderr and, when asked, a rotating file."""

from __future__ import annotations

import io
import logging
import shlex

from moed.daemon.config import LogConfig
from moed.daemon.logs import event, setup_logging


def test_logfmt_lines_to_stream_and_rotating_file(tmp_path):
    stream = io.StringIO()
    path = tmp_path / "log" / "moed.log"
    setup_logging(LogConfig(log_level="info", log_file=str(path), log_max_bytes=2048, log_backups=2), stream)
    try:
        log = logging.getLogger("moed.daemon.test")
        event(log, logging.INFO, "request", id="a b", done_reason="stop", total_ns=12, text='say "hi"')
        log.debug("hidden at info level")
        line = stream.getvalue().strip()
        pairs = dict(p.split("=", 1) for p in shlex.split(line.split(" ", 1)[1]))
        assert pairs == {"level": "info", "logger": "moed.daemon.test", "msg": "request", "id": "a b",
                         "done_reason": "stop", "total_ns": "12", "text": 'say "hi"'}
        for i in range(100):
            event(log, logging.INFO, "filler", i=i, pad="x" * 40)
        assert path.exists() and path.with_name("moed.log.1").exists()
        assert "hidden" not in stream.getvalue()
    finally:
        setup_logging(LogConfig(), io.StringIO())
        for h in logging.getLogger("moed").handlers:
            h.close()
        logging.getLogger("moed").handlers.clear()
        logging.getLogger("moed").propagate = True
