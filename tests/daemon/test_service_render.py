"""The service files as rendered: the LaunchAgent plist parses with plistlib and holds the required keys with
absolute paths; the systemd unit passes `systemd-analyze verify`; stop timeouts follow the drain timeout; the
templates in launchd/ are the packaged ones."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moed.daemon.service import Host, ServiceError, ServiceSpec, render, template_text
from moed.daemon.service.render import STOP_MARGIN_S, unit_word

REPO = Path(__file__).resolve().parents[2]
ODD = "odd & <dir> \"q\" 100% $HOME"  # characters each format must escape


def spec_for(host: Host, store: Path, *, drain: float = 10.0, config: Path | None = None, **env: str) -> ServiceSpec:
    return ServiceSpec.build(host, interpreter=Path(sys.executable).absolute(), store=store, config=config,
                             drain_timeout_s=drain, extra_env=env)


def unit_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def test_plist_parses_and_holds_the_required_keys(tmp_path):
    host = Host("launchd", tmp_path, 501)
    store, config = tmp_path / ODD / "store", tmp_path / ODD / "moed.toml"
    plist = plistlib.loads(render(host, spec_for(host, store, config=config, MOED_CACHE_BUDGET="25%")).encode())
    assert plist["Label"] == "org.moed.daemon"
    args = plist["ProgramArguments"]
    assert args == [sys.executable, "-m", "moed.daemon.cli", "serve", str(store), "--config", str(config)]
    assert Path(args[0]).is_absolute() and Path(args[4]).is_absolute() and Path(args[6]).is_absolute()
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restart after a crash only
    assert plist["ThrottleInterval"] == 30
    assert plist["ExitTimeOut"] == 10 + STOP_MARGIN_S
    assert plist["ProcessType"] == "Interactive"
    assert plist["Umask"] == 0o077 == 63
    logs = tmp_path / "Library" / "Logs" / "moed"
    assert plist["StandardErrorPath"] == str(logs / "moed.log")
    assert plist["StandardOutPath"] == str(logs / "moed.out.log")
    env = plist["EnvironmentVariables"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["MOED_CACHE_BUDGET"] == "25%"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).absolute().parent)
    assert all(Path(p).is_absolute() for p in env["PATH"].split(":"))


@pytest.mark.parametrize("drain, want", [(0.0, STOP_MARGIN_S), (10.0, 10 + STOP_MARGIN_S),
                                         (45.5, 46 + STOP_MARGIN_S)])
def test_stop_timeouts_follow_the_drain_timeout(tmp_path, drain, want):
    mac, linux = Host("launchd", tmp_path, 501), Host("systemd", tmp_path, 1000)
    assert plistlib.loads(render(mac, spec_for(mac, tmp_path, drain=drain)).encode())["ExitTimeOut"] == want
    assert unit_values(render(linux, spec_for(linux, tmp_path, drain=drain)))["TimeoutStopSec"] == [str(want)]


def test_relative_paths_are_refused(tmp_path):
    with pytest.raises(ServiceError, match="absolute"):
        ServiceSpec.build(Host("systemd", tmp_path, 1), interpreter=Path("python"), store=tmp_path, config=None,
                          drain_timeout_s=1.0)


def test_unit_holds_the_service_settings(tmp_path):
    host = Host("systemd", tmp_path, 1000)
    values = unit_values(render(host, spec_for(host, tmp_path / "store")))
    assert values["Type"] == ["notify"] and values["NotifyAccess"] == ["main"]
    assert values["Restart"] == ["on-failure"]
    assert values["WatchdogSec"] == ["30"]
    assert values["RuntimeDirectory"] == ["moed"] and values["RuntimeDirectoryMode"] == ["0700"]
    assert values["ExecStart"] == [f"{sys.executable} -m moed.daemon.cli serve {tmp_path}/store"]
    assert values["Environment"] == ["PYTHONUNBUFFERED=1"]
    assert values["WantedBy"] == ["default.target"]


def test_unit_words_are_quoted_and_escaped():
    assert unit_word("/usr/bin/python3") == "/usr/bin/python3"
    assert unit_word("/a b/c") == '"/a b/c"'
    assert unit_word("50%") == '"50%%"'
    assert unit_word("$HOME") == '"$$HOME"'
    assert unit_word("K=$x", expand_dollar=False) == '"K=$x"'
    assert unit_word('say "hi"\\') == '"say \\"hi\\"\\\\"'
    with pytest.raises(ServiceError, match="line break"):
        host = Host("systemd", Path("/h"), 1)
        render(host, ServiceSpec.build(host, interpreter=Path("/p"), store=Path("/a\nb"), config=None,
                                       drain_timeout_s=1.0))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is missing (Debian: apt-get install systemd)")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    host = Host("systemd", tmp_path, os.getuid())
    store = tmp_path / ODD / "store"
    unit = tmp_path / "moed.service"
    unit.write_text(render(host, spec_for(host, store, drain=12.5, config=tmp_path / ODD / "c.toml",
                                          MOED_CACHE_BUDGET="25%", MOED_LOG_LEVEL="debug")))
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    # --user: RuntimeDirectory= resolves against $XDG_RUNTIME_DIR; warnings (stderr) count as failures
    out = subprocess.run(["systemd-analyze", "--user", "verify", "--man=no", str(unit)], capture_output=True,
                         text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    # and the check can fail: an unknown key is reported
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("Type=notify", "Type=notify\nWatchdogPings=yes"))
    out = subprocess.run(["systemd-analyze", "--user", "verify", "--man=no", str(bad)], capture_output=True,
                         text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, timeout=60)
    assert "WatchdogPings" in out.stderr


@pytest.mark.parametrize("name, platform", [("moed.plist.in", "launchd"), ("moed.service.in", "systemd")])
def test_launchd_folder_links_to_the_packaged_templates(name, platform):
    """launchd/ shows the templates where the issue asks; the package (and so the wheel) holds the only copy."""
    link = REPO / "launchd" / name
    assert link.is_symlink() and link.resolve() == (REPO / "daemon" / "service" / "templates" / name).resolve()
    assert link.read_text() == template_text(platform)
