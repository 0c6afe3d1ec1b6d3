"""Structured log lines for the daemon: logfmt (`key=value` pairs) to stderr and optionally a rotating file.

    2025-01-31T10:02:03.123Z level=info logger=moed.scheduler msg=request id=c1-7 client=8a3f01 done_reason=stop ...

Code logs with `log.info("request", extra={"fields": {...}})` (or the `event` helper); the fields become pairs
after `msg`. Values with spaces, quotes or `=` are quoted, so a line splits back into pairs with shlex.

Clients supply some of these strings (request ids, error messages that quote their input), so every value and
message is escaped before it reaches a line: control characters (C0, DEL, C1 such as U+0085 NEL), Unicode line
and paragraph separators and format characters (bidirectional overrides, zero-width joiners) become `\\xHH` or
`\\uHHHH`, newlines and tabs `\\n` and `\\t`. One event is always exactly one line, and a terminal that shows
the log never interprets anything a client sent.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

from .config import LogConfig

ROOT = "moed"


def event(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log one structured event: `msg` plus key=value fields."""
    logger.log(level, msg, extra={"fields": fields})


_UNSAFE = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")  # controls, format, separators, surrogates, unassigned
_SHORT = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(c: str) -> str:
    if c in _SHORT:
        return _SHORT[c]
    if unicodedata.category(c) not in _UNSAFE:
        return c
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _value(v: Any) -> str:
    """One logfmt value: quoted when it holds a space, quote, `=` or anything escaped (see the module docstring)."""
    s = f"{v:.6g}" if isinstance(v, float) else str(v)
    if s and s.isprintable() and not any(c in s for c in ' "=\\'):
        return s
    return '"' + "".join(_escape_char(c) for c in s) + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        pairs = [("level", record.levelname.lower()), ("logger", record.name), ("msg", record.getMessage())]
        pairs += list(getattr(record, "fields", {}).items())
        line = ts + " " + " ".join(f"{k}={_value(v)}" for k, v in pairs)
        if record.exc_info:
            line += " error=" + _value(self.formatException(record.exc_info))
        return line


def setup_logging(config: LogConfig, stream: Any = None) -> None:
    """Send the `moed` loggers to stderr (and the configured file) as logfmt lines, at the configured level."""
    root = logging.getLogger(ROOT)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if config.log_file:
        path = Path(config.log_file).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(path, maxBytes=config.log_max_bytes,
                                                             backupCount=config.log_backups))
    for h in handlers:
        h.setFormatter(LogfmtFormatter())
        root.addHandler(h)
    root.setLevel(config.log_level.upper())
    root.propagate = False
