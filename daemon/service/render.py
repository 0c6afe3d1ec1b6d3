"""Render the service file from its template: a launchd plist or a systemd user unit, with absolute paths only.

    spec = ServiceSpec.build(host, interpreter=..., store=..., config=None, drain_timeout_s=10.0)
    text = render(host, spec)

The templates (templates/moed.plist.in, templates/moed.service.in, package data) hold every fixed key; render
fills in the values, escaped for their format: XML for the plist, systemd's quoting and `%` specifiers for the
unit. The stop timeout is the daemon's drain_timeout_s plus STOP_MARGIN_S, so the service manager does not kill
a daemon that is still finishing streams and saving its cache statistics.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape

from .host import Host, ServiceError

STOP_MARGIN_S = 20  # after the drain: scheduler shutdown, cache statistics saved, last finals flushed
THROTTLE_INTERVAL_S = 30  # launchd: at most one (re)start per this many seconds
RESTART_SEC = 5  # systemd: pause before a restart after a failure
START_TIMEOUT_S = 300  # systemd: loading the model may take minutes on a cold disk
WATCHDOG_SEC = 30  # systemd: the daemon pings every half of this while its socket loop answers
TEMPLATES = {"launchd": "moed.plist.in", "systemd": "moed.service.in"}


def template_text(platform: str) -> str:
    """The packaged template of a platform."""
    return (resources.files(__package__) / "templates" / TEMPLATES[platform]).read_text(encoding="utf-8")


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs and how long it may take to stop."""

    program: tuple[str, ...]  # absolute interpreter, then its arguments
    store: Path
    environment: tuple[tuple[str, str], ...]
    stop_timeout_s: int

    @classmethod
    def build(cls, host: Host, *, interpreter: Path, store: Path, config: Path | None, drain_timeout_s: float,
              extra_env: dict[str, str] | None = None) -> ServiceSpec:
        """The spec for `INTERPRETER -m moed.daemon.cli serve STORE [--config CONFIG]`.

        Raises:
            ServiceError: a path is not absolute.
        """
        for what, p in (("interpreter", interpreter), ("store", store), ("config", config)):
            if p is not None and not p.is_absolute():
                raise ServiceError(f"the {what} path {p} must be absolute")
        program: tuple[str, ...] = (str(interpreter), "-m", "moed.daemon.cli", "serve", str(store))
        if config is not None:
            program += ("--config", str(config))
        env = {"PYTHONUNBUFFERED": "1"}
        if host.platform == "launchd":  # launchd's PATH is minimal; the venv's bin folder comes first
            env["PATH"] = f"{interpreter.parent}:/usr/bin:/bin:/usr/sbin:/sbin"
        env.update(extra_env or {})
        return cls(program, store, tuple(sorted(env.items())), math.ceil(drain_timeout_s) + STOP_MARGIN_S)


def render(host: Host, spec: ServiceSpec) -> str:
    """The plist or unit text for `spec` on `host`'s platform."""
    return _plist(host, spec) if host.platform == "launchd" else _unit(spec)


def _plist(host: Host, spec: ServiceSpec) -> str:
    args = "\n".join(f"\t\t<string>{escape(a)}</string>" for a in spec.program)
    env = "\n".join(f"\t\t<key>{escape(k)}</key>\n\t\t<string>{escape(v)}</string>" for k, v in spec.environment)
    return Template(template_text("launchd")).substitute(
        label=escape(host.name), program_arguments=args, throttle_interval=THROTTLE_INTERVAL_S,
        stop_timeout=spec.stop_timeout_s, stdout_path=escape(str(host.log_file.with_name("moed.out.log"))),
        stderr_path=escape(str(host.log_file)), environment=env)


_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def unit_word(arg: str, *, expand_dollar: bool = True) -> str:
    """One command-line word for a unit file: `%` specifiers and (in ExecStart) `$` variables made literal,
    quoted when it holds anything but plain characters."""
    s = arg.replace("%", "%%")
    if expand_dollar:
        s = s.replace("$", "$$")
    if _PLAIN.fullmatch(arg):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unit(spec: ServiceSpec) -> str:
    for word in (*spec.program, *(k + v for k, v in spec.environment)):
        if any(c in word for c in "\n\r\0"):
            raise ServiceError(f"{word!r}: a unit file cannot hold a line break or NUL")
    env = "\n".join("Environment=" + unit_word(f"{k}={v}", expand_dollar=False) for k, v in spec.environment)
    return Template(template_text("systemd")).substitute(
        store=str(spec.store).replace("%", "%%"), exec_start=" ".join(unit_word(a) for a in spec.program),
        environment=env, restart_sec=RESTART_SEC, start_timeout=START_TIMEOUT_S, stop_timeout=spec.stop_timeout_s,
        watchdog_sec=WATCHDOG_SEC)
