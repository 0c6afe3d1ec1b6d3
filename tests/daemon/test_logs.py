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


HOSTILE = ["a\rb", "\x1b[31mred\x1b[0m", "nul\x00here", "line\u2028sep", "nel\x85x", "para\u2029x",
           "rtl\u202eevil", "tab\tand\nnewline", 'back\\slash "q"', "zero\u200bwidth"]


def test_client_strings_cannot_break_or_colour_a_line():
    stream = io.StringIO()
    setup_logging(LogConfig(log_level="info"), stream)
    try:
        log = logging.getLogger("moed.daemon.test")
        for rid in HOSTILE:
            event(log, logging.INFO, "request", id=rid)
            log.info("refused %s", rid)
        out = stream.getvalue()
        lines = out.split("\n")[:-1]
        assert len(lines) == 2 * len(HOSTILE)  # one event, one line: nothing a client sent splits it
        for line in lines:
            assert line.isprintable(), repr(line)  # no ESC, NUL, CR, NEL, separators or bidi overrides survive
        first = dict(p.split("=", 1) for p in shlex.split(lines[0].split(" ", 1)[1]))
        assert first["id"] == "a\\rb"  # visible, escaped: the reader sees what was sent
        assert dict(p.split("=", 1) for p in shlex.split(lines[16].split(" ", 1)[1]))["id"] == 'back\\slash "q"'
    finally:
        setup_logging(LogConfig(), io.StringIO())
        for h in logging.getLogger("moed").handlers:
            h.close()
        logging.getLogger("moed").handlers.clear()
        logging.getLogger("moed").propagate = True
