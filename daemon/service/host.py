"""Where a service lives on this machine: the platform (launchd or systemd), the user, and the files' paths.

Everything comes from one Host value (platform, home, uid, environment), so tests render and install into a
temporary home; nothing here reads the real home unless `Host.current()` is asked to.

    launchd  ~/Library/LaunchAgents/<label>.plist, logs in ~/Library/Logs/moed/,
             install record in ~/Library/Application Support/moed/state/service-install.json
    systemd  $XDG_CONFIG_HOME/systemd/user/moed.service (else ~/.config/...), logs in the user journal,
             install record in $XDG_STATE_HOME/moed/service-install.json (else ~/.local/state/...)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PLATFORMS = ("launchd", "systemd")
LABEL = "org.moed.daemon"  # launchd job label (reverse DNS), also the plist's file name
UNIT = "moed.service"  # systemd unit name


class ServiceError(Exception):
    """A service operation cannot go ahead; the message says why and what to do."""


def platform_of(sys_platform: str) -> str:
    """The service manager of a sys.platform value.

    Raises:
        ServiceError: neither macOS nor Linux.
    """
    if sys_platform == "darwin":
        return "launchd"
    if sys_platform.startswith("linux"):
        return "systemd"
    raise ServiceError(f"no service manager is supported on {sys_platform!r}: use --platform launchd|systemd to "
                       f"render the files, or run `moed serve` yourself")


@dataclass(frozen=True)
class Host:
    platform: str  # launchd | systemd
    home: Path
    uid: int
    env: Mapping[str, str] = field(default_factory=dict)  # for XDG_* folders only

    @classmethod
    def current(cls, platform: str | None = None) -> Host:
        """This user on this machine; `platform` overrides the one sys.platform implies."""
        return cls(platform or platform_of(sys.platform), Path.home(), os.getuid(), dict(os.environ))

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ServiceError(f"unknown platform {self.platform!r}: choose one of {', '.join(PLATFORMS)}")
        if not self.home.is_absolute():
            raise ServiceError(f"home folder {self.home} is not absolute")

    def _xdg(self, var: str, default: str) -> Path:
        value = self.env.get(var, "")
        return Path(value) if value and Path(value).is_absolute() else self.home / default

    @property
    def name(self) -> str:
        """The job's name for its manager: the launchd label or the systemd unit."""
        return LABEL if self.platform == "launchd" else UNIT

    @property
    def service_file(self) -> Path:
        """The plist or unit file install writes."""
        if self.platform == "launchd":
            return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        return self._xdg("XDG_CONFIG_HOME", ".config") / "systemd" / "user" / UNIT

    @property
    def state_dir(self) -> Path:
        """The daemon's state folder (same rule as moed.daemon.paths.state_dir), where the install record goes."""
        if self.platform == "launchd":
            return self.home / "Library" / "Application Support" / "moed" / "state"
        return self._xdg("XDG_STATE_HOME", ".local/state") / "moed"

    @property
    def record_file(self) -> Path:
        return self.state_dir / "service-install.json"

    @property
    def log_dir(self) -> Path | None:
        """launchd's log folder (systemd logs go to the journal)."""
        return self.log_file.parent if self.platform == "launchd" else None

    @property
    def log_file(self) -> Path:
        """launchd: where the daemon's stderr (its log lines) goes."""
        return self.home / "Library" / "Logs" / "moed" / "moed.log"

    @property
    def default_config(self) -> Path:
        """The config file `moed serve` reads when given none (moed.daemon.paths.config_path)."""
        if self.platform == "launchd":
            return self.home / "Library" / "Application Support" / "moed" / "moed.toml"
        return self._xdg("XDG_CONFIG_HOME", ".config") / "moed" / "moed.toml"

    @property
    def domain(self) -> str:
        """launchd's per-user GUI domain."""
        return f"gui/{self.uid}"
