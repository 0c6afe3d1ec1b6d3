"""`moed service` end to end in a temporary home: --dry-run prints every file and every launchctl / systemctl
command and touches nothing; a real run (against recording stand-ins for launchctl, systemctl, journalctl and
tail) runs exactly the commands the dry run printed; uninstall removes exactly what install wrote; a store that
does not verify is refused."""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from moed.daemon.cli import main
from moed.daemon.store.format import read_manifest

FAKE = """#!{python}
import os, shlex, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
sys.exit(int(os.environ.get("FAKE_EXIT_" + os.path.basename(sys.argv[0]).upper(), "0")))
"""
TOOLS = ("launchctl", "systemctl", "journalctl", "tail")


@pytest.fixture(scope="module")
def store(model_dir):
    return model_dir("qwen3_moe", "store-mlx")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private HOME (the real one is never touched), no XDG overrides, and recording stand-ins on PATH."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).write_text(FAKE.format(python=sys.executable))
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "MOED_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "commands.log"))
    return home


def ran(home: Path) -> list[str]:
    log = home.parent / "commands.log"
    return log.read_text().splitlines() if log.exists() else []


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def moed(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["service", *args])
    out, err = capsys.readouterr()
    return code, out, err


def commands_in(out: str) -> list[str]:
    return [line.split("run: ", 1)[1].split("  # may fail")[0] for line in out.splitlines() if "run: " in line]


UID = os.getuid()
CONTROL = {  # (platform, action) -> the commands a dry run shows
    ("launchd", "start"): [f"launchctl bootstrap gui/{UID} {{home}}/Library/LaunchAgents/org.moed.daemon.plist",
                           f"launchctl kickstart gui/{UID}/org.moed.daemon"],
    ("launchd", "stop"): [f"launchctl bootout gui/{UID}/org.moed.daemon"],
    ("launchd", "restart"): [f"launchctl kickstart -k gui/{UID}/org.moed.daemon"],
    ("launchd", "status"): [f"launchctl print gui/{UID}/org.moed.daemon"],
    ("launchd", "logs"): ["tail -n 100 {home}/Library/Logs/moed/moed.log"],
    ("systemd", "start"): ["systemctl --user start moed.service"],
    ("systemd", "stop"): ["systemctl --user stop moed.service"],
    ("systemd", "restart"): ["systemctl --user restart moed.service"],
    ("systemd", "status"): ["systemctl --user status --no-pager moed.service"],
    ("systemd", "logs"): ["journalctl --user -u moed.service -n 100 --no-pager"],
}


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_dry_run_install_prints_everything_and_touches_nothing(home, store, capsys, platform):
    code, out, err = moed(capsys, "install", str(store), "--platform", platform, "--dry-run",
                          "--env", "MOED_CACHE_BUDGET=25%")
    assert code == 0, err
    assert tree(home) == set() and ran(home) == []
    assert "checksums ok" in out
    if platform == "launchd":
        unit = home / "Library" / "LaunchAgents" / "org.moed.daemon.plist"
        record = home / "Library" / "Application Support" / "moed" / "state" / "service-install.json"
        assert commands_in(out) == [f"launchctl bootstrap gui/{UID} {unit}"]
        body = out.split(f"----- {unit}\n", 1)[1].split("\n-----", 1)[0]
        assert plistlib.loads(body.encode())["ProgramArguments"][4] == str(store.resolve())
        assert f"would create folder {home}/Library/Logs/moed" in out
    else:
        unit = home / ".config" / "systemd" / "user" / "moed.service"
        record = home / ".local" / "state" / "moed" / "service-install.json"
        assert commands_in(out) == ["systemctl --user daemon-reload", "systemctl --user enable --now moed.service"]
        assert 'Environment="MOED_CACHE_BUDGET=25%%"' in out
    assert f"would write {unit} (mode 0644)" in out and f"would write {record} (mode 0600)" in out
    assert f"----- {record}\n" in out


@pytest.mark.parametrize("platform, action", sorted(CONTROL))
def test_dry_run_of_each_action_shows_its_commands(home, store, capsys, platform, action):
    assert moed(capsys, "install", str(store), "--platform", platform, "--no-checksums")[0] == 0
    before, ran_before = tree(home), ran(home)
    code, out, err = moed(capsys, action, "--platform", platform, "--dry-run")
    assert code == 0, err
    assert commands_in(out) == [c.format(home=home) for c in CONTROL[platform, action]]
    assert tree(home) == before and ran(home) == ran_before


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_real_runs_execute_what_the_dry_run_printed(home, store, capsys, platform):
    for args in (["install", str(store), "--no-checksums"], ["stop"], ["start"], ["restart"], ["status"],
                 ["logs", "-n", "5", "-f"], ["uninstall"]):
        code, dry, err = moed(capsys, *args, "--platform", platform, "--dry-run")
        assert code == 0, err
        count = len(ran(home))
        code, out, err = moed(capsys, *args, "--platform", platform)
        assert code == 0, err
        assert ran(home)[count:] == commands_in(dry) == commands_in(out)


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_uninstall_removes_exactly_what_install_wrote(home, store, capsys, platform):
    (home / ".config").mkdir()  # a folder the user had: it stays
    (home / ".config" / "other.toml").write_text("mine")
    before = tree(home)
    assert moed(capsys, "install", str(store), "--platform", platform, "--no-checksums")[0] == 0
    record_file = next(p for p in home.rglob("service-install.json"))
    record = json.loads(record_file.read_text())
    assert record["platform"] == platform and len(record["files"]) == 1
    unit = Path(next(iter(record["files"])))
    assert unit.is_file() and oct(unit.stat().st_mode & 0o777) == "0o644"
    assert oct(record_file.stat().st_mode & 0o777) == "0o600"
    assert str(home / ".config") not in record["dirs"]
    if platform == "launchd":  # a log the daemon wrote is the user's: its folder stays
        (home / "Library" / "Logs" / "moed" / "moed.log").write_text("level=info msg=ready\n")
    code, out, err = moed(capsys, "uninstall", "--platform", platform)
    assert code == 0, err
    left = tree(home) - before
    if platform == "launchd":
        assert left == {"Library", "Library/Logs", "Library/Logs/moed", "Library/Logs/moed/moed.log"}
    else:
        assert left == set()
    assert tree(home) >= before and (home / ".config" / "other.toml").read_text() == "mine"
    code, _, err = moed(capsys, "uninstall", "--platform", platform)
    assert code == 1 and "nothing to uninstall" in err


def test_second_install_is_refused_unless_forced(home, store, capsys):
    assert moed(capsys, "install", str(store), "--platform", "systemd", "--no-checksums")[0] == 0
    code, _, err = moed(capsys, "install", str(store), "--platform", "systemd", "--no-checksums")
    assert code == 1 and "already installed" in err
    code, out, err = moed(capsys, "install", str(store), "--platform", "systemd", "--no-checksums", "--force",
                          "--dry-run")
    assert code == 0, err
    assert commands_in(out)[0] == "systemctl --user disable --now moed.service"
    assert "remove folder" not in out  # the folders stay in use
    code, _, err = moed(capsys, "install", str(store), "--platform", "systemd", "--no-checksums", "--force")
    assert code == 0, err
    record = json.loads(next(home.rglob("service-install.json")).read_text())
    assert str(home / ".config" / "systemd" / "user") in record["dirs"]  # still removed by the next uninstall
    assert moed(capsys, "uninstall", "--platform", "systemd")[0] == 0
    assert tree(home) == set()


def test_a_record_of_the_other_platform_is_reported(home, store, capsys):
    assert moed(capsys, "install", str(store), "--platform", "systemd", "--no-checksums")[0] == 0
    shutil.copytree(home / ".local" / "state" / "moed", home / "Library" / "Application Support" / "moed" / "state")
    code, _, err = moed(capsys, "uninstall", "--platform", "launchd")
    assert code == 1 and "--platform systemd" in err


def test_a_failing_command_fails_the_action(home, store, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_EXIT_SYSTEMCTL", "1")
    code, _, err = moed(capsys, "install", str(store), "--platform", "systemd", "--no-checksums")
    assert code == 1 and "systemctl --user daemon-reload` failed with exit code 1" in err
    # the record was written first, so uninstall still cleans up (unloading is best effort there)
    assert moed(capsys, "uninstall", "--platform", "systemd")[0] == 0
    assert tree(home) == set()


def test_status_passes_the_exit_code_through(home, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_EXIT_SYSTEMCTL", "3")  # systemctl status: the unit is not running
    assert moed(capsys, "status", "--platform", "systemd")[0] == 3


def test_install_refuses_a_store_that_does_not_verify(home, store, capsys, tmp_path):
    bad = tmp_path / "bad-store"
    shutil.copytree(store, bad)
    expert_file = bad / read_manifest(bad).layers[0].file
    data = bytearray(expert_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    expert_file.write_bytes(bytes(data))
    code, out, err = moed(capsys, "install", str(bad), "--platform", "systemd")
    assert code == 2 and "does not verify" in err and "bad expert records" in err
    assert tree(home) == set() and ran(home) == []
    (bad / "manifest.json").unlink()
    code, _, err = moed(capsys, "install", str(bad), "--platform", "systemd", "--no-checksums")
    assert code == 2 and "manifest.json is missing" in err
    assert tree(home) == set()


def test_store_and_drain_timeout_come_from_the_config(home, store, capsys, tmp_path):
    config = tmp_path / "moed.toml"
    config.write_text(f'[engine]\nstore = "{store}"\n[scheduler]\ndrain_timeout_s = 40.0\n')
    code, out, err = moed(capsys, "install", "--config", str(config), "--platform", "systemd", "--dry-run",
                          "--no-checksums")
    assert code == 0, err
    assert f"serve {store.resolve()} --config {config}" in out and "TimeoutStopSec=60" in out
    config.write_text("[scheduler]\ndrain_timeout_s = -1\n")
    code, _, err = moed(capsys, "install", str(store), "--config", str(config), "--platform", "systemd", "--dry-run")
    assert code == 2 and "drain_timeout_s" in err
    code, _, err = moed(capsys, "install", "--platform", "systemd", "--dry-run")
    assert code == 2 and "no store to serve" in err


def test_start_needs_an_install(home, capsys):
    code, _, err = moed(capsys, "start", "--platform", "launchd", "--dry-run")
    assert code == 1 and "not installed" in err


def test_bad_env_pair_is_a_usage_error(home, store, capsys):
    code, _, err = moed(capsys, "install", str(store), "--platform", "systemd", "--env", "NOEQUALS", "--dry-run",
                        "--no-checksums")
    assert code == 2 and "KEY=VALUE" in err


def test_commands_are_shell_words(home, store, capsys):
    """Paths with spaces come out quoted, so every printed command can be pasted into a shell."""
    code, out, _ = moed(capsys, "install", str(store), "--platform", "launchd", "--dry-run", "--no-checksums")
    (line,) = commands_in(out)
    assert shlex.split(line)[-1] == str(home / "Library" / "LaunchAgents" / "org.moed.daemon.plist")


def test_uninstall_says_when_a_file_was_edited_since_install(home, store, capsys):
    assert moed(capsys, "install", str(store), "--platform", "systemd", "--no-checksums")[0] == 0
    unit = home / ".config" / "systemd" / "user" / "moed.service"
    code, out, _ = moed(capsys, "uninstall", "--platform", "systemd", "--dry-run")
    assert code == 0 and f"would remove {unit}\n" in out
    unit.write_text(unit.read_text() + "# mine\n")
    code, out, _ = moed(capsys, "uninstall", "--platform", "systemd")
    assert code == 0 and f"remove {unit} (changed since install)" in out and not unit.exists()


def test_a_foreign_service_file_is_replaced_only_with_force(home, store, capsys):
    unit = home / ".config" / "systemd" / "user" / "moed.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    code, _, err = moed(capsys, "install", str(store), "--platform", "systemd", "--no-checksums")
    assert code == 1 and f"{unit} exists" in err
    code, out, err = moed(capsys, "install", str(store), "--platform", "systemd", "--no-checksums", "--force")
    assert code == 0, err
    assert commands_in(out)[0] == "systemctl --user disable --now moed.service"  # unload whatever ran it
    assert "moed.daemon.cli serve" in unit.read_text()
