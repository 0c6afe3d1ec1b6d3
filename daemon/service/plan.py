"""What each `moed service` action does on launchd and on systemd, as a list of steps (see steps.py).

    install    create missing folders, write the plist/unit and the install record, then load and start it:
               launchd `launchctl bootstrap gui/UID PLIST` (RunAtLoad starts it);
               systemd `systemctl --user daemon-reload`, `systemctl --user enable --now moed.service`
    uninstall  stop and unload (launchctl bootout / systemctl --user disable --now), then remove exactly the
               files and (if empty) the folders the install record lists, and the record
    start      launchctl bootstrap (if not loaded) + kickstart      | systemctl --user start
    stop       launchctl bootout (SIGTERM, ExitTimeOut to drain)   | systemctl --user stop (TimeoutStopSec)
    restart    launchctl kickstart -k                               | systemctl --user restart
    status     launchctl print gui/UID/LABEL                        | systemctl --user status --no-pager
    logs       tail ~/Library/Logs/moed/moed.log                    | journalctl --user -u moed.service

The install record (JSON in the state folder) names the platform, the files written and the folders created,
so uninstall never guesses, and a second install is refused unless --force (which uninstalls first).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .host import Host, ServiceError
from .render import ServiceSpec, render
from .steps import Command, MakeDir, RemoveDir, RemoveFile, Step, WriteFile

ACTIONS = ("install", "uninstall", "start", "stop", "restart", "status", "logs")


@dataclass(frozen=True)
class Record:
    """What an install wrote: files (with their sha256) and the folders it had to create."""

    platform: str
    name: str
    files: dict[str, str]  # path -> sha256 of the text written
    dirs: tuple[str, ...]  # created, outermost first
    program: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"format": 1, "platform": self.platform, "name": self.name, "files": self.files,
                           "dirs": list(self.dirs), "program": list(self.program)}, indent=1) + "\n"

    @classmethod
    def read(cls, host: Host) -> Record | None:
        """The record of the install on this host, or None if there is none.

        Raises:
            ServiceError: the record is unreadable, or was written for the other platform.
        """
        try:
            d = json.loads(host.record_file.read_text())
            record = cls(d["platform"], d["name"], dict(d["files"]), tuple(d["dirs"]), tuple(d["program"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ServiceError(f"the install record {host.record_file} is unreadable ({e}); remove the service "
                               f"files by hand, then the record") from None
        if record.platform != host.platform:
            raise ServiceError(f"the install record {host.record_file} is for {record.platform}, not "
                               f"{host.platform}: pass --platform {record.platform}")
        return record


def _missing(path: Path) -> list[Path]:
    """path and its missing ancestors, outermost first (empty if path exists)."""
    out = []
    while not path.exists():
        out.append(path)
        path = path.parent
    return out[::-1]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _changed(path: Path, digest: str) -> str:
    try:
        return "" if _sha256(path.read_text()) == digest else "changed since install"
    except (OSError, UnicodeDecodeError):
        return "already gone" if not path.exists() else "unreadable"


def install(host: Host, spec: ServiceSpec, *, start: bool = True, force: bool = False) -> list[Step]:
    """Write the service file and the record, then load (and start) the service.

    Raises:
        ServiceError: already installed, or a service file is in the way, and force is off.
    """
    old = Record.read(host)
    steps: list[Step] = []
    created: list[Path] = []
    if old is not None or host.service_file.exists():
        if not force:
            what = f"already installed (record {host.record_file})" if old else f"{host.service_file} exists"
            raise ServiceError(f"{what}: run `moed service uninstall` first, or pass --force to replace it")
        steps.append(_unload(host, old.name if old else host.name))
        if old is not None:  # its files go; its folders stay in use and in the new record
            steps += [RemoveFile(Path(p)) for p in old.files]
            created = [Path(d) for d in old.dirs]
    wanted = [host.service_file.parent, host.state_dir] + ([host.log_dir] if host.log_dir else [])
    for folder in wanted:
        for p in _missing(folder):
            if p not in created:
                created.append(p)
                steps.append(MakeDir(p))
    text = render(host, spec)
    record = Record(host.platform, host.name, {str(host.service_file): _sha256(text)},
                    tuple(str(p) for p in created), spec.program)
    steps += [WriteFile(host.service_file, text, 0o644), WriteFile(host.record_file, record.to_json(), 0o600)]
    if host.platform == "launchd":
        if start:
            steps.append(Command(("launchctl", "bootstrap", host.domain, str(host.service_file))))
    else:
        steps.append(Command(("systemctl", "--user", "daemon-reload")))
        steps.append(Command(("systemctl", "--user", "enable", *(["--now"] if start else []), host.name)))
    return steps


def uninstall(host: Host) -> list[Step]:
    """Stop and unload the service, then remove what the record lists (a file edited since is removed too:
    it is still the service's file, and the output says so).

    Raises:
        ServiceError: nothing is installed (no record).
    """
    record = Record.read(host)
    if record is None:
        raise ServiceError(f"nothing to uninstall: no install record at {host.record_file}")
    steps: list[Step] = [_unload(host, record.name)]
    steps += [RemoveFile(Path(p), note=_changed(Path(p), digest)) for p, digest in record.files.items()]
    steps.append(RemoveFile(host.record_file))
    steps += [RemoveDir(Path(d)) for d in reversed(record.dirs)]
    if host.platform == "systemd":
        steps.append(Command(("systemctl", "--user", "daemon-reload"), may_fail="no user manager is running"))
    return steps


def _unload(host: Host, name: str) -> Command:
    """Stop the service and keep it from starting again (allowed to fail: it may not be loaded)."""
    if host.platform == "launchd":
        return Command(("launchctl", "bootout", f"{host.domain}/{name}"), may_fail="the job was not loaded")
    return Command(("systemctl", "--user", "disable", "--now", name), may_fail="the unit was not loaded")


def control(host: Host, action: str, *, lines: int = 100, follow: bool = False) -> list[Step]:
    """start, stop, restart, status or logs.

    Raises:
        ServiceError: start or restart of a service that is not installed; an unknown action.
    """
    if action in ("start", "restart") and not host.service_file.exists():
        raise ServiceError(f"not installed ({host.service_file} is missing): run `moed service install STORE`")
    job = f"{host.domain}/{host.name}"
    if host.platform == "launchd":
        plans: dict[str, list[Step]] = {
            "start": [Command(("launchctl", "bootstrap", host.domain, str(host.service_file)),
                              may_fail="the job is already loaded"),
                      Command(("launchctl", "kickstart", job))],
            "stop": [Command(("launchctl", "bootout", job))],
            "restart": [Command(("launchctl", "kickstart", "-k", job))],
            "status": [Command(("launchctl", "print", job), passthrough=True)],
            "logs": [Command(("tail", "-n", str(lines), *(["-F"] if follow else []), str(host.log_file)),
                             passthrough=True)],
        }
    else:
        plans = {
            **{a: [Command(("systemctl", "--user", a, host.name))] for a in ("start", "stop", "restart")},
            "status": [Command(("systemctl", "--user", "status", "--no-pager", host.name), passthrough=True)],
            "logs": [Command(("journalctl", "--user", "-u", host.name, "-n", str(lines), "--no-pager",
                              *(["-f"] if follow else [])), passthrough=True)],
        }
    if action not in plans:
        raise ServiceError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    return plans[action]
