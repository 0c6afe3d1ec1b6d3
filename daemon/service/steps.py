"""The steps a service action is made of, and the Runner that performs them or, with dry_run, only prints them.

    Runner(out=sys.stdout, dry_run=True).run(steps)   # prints every file (with its text) and every command

A plan is a list of steps decided up front (reading the file system, never changing it), so a dry run shows
exactly what a real one does. Steps: MakeDir, WriteFile, RemoveFile, RemoveDir (only if empty), Command. A command
either must succeed, may fail (e.g. unloading a job that is not loaded), or passes its exit code through
(`status`, `logs`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, Union

from .host import ServiceError


@dataclass(frozen=True)
class MakeDir:
    path: Path
    mode: int = 0o700


@dataclass(frozen=True)
class WriteFile:
    path: Path
    text: str
    mode: int = 0o644


@dataclass(frozen=True)
class RemoveFile:
    path: Path
    note: str = ""


@dataclass(frozen=True)
class RemoveDir:
    path: Path  # removed only if empty: logs the daemon wrote there stay


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    may_fail: str = ""  # non-empty: why a failure is fine (said in the output)
    passthrough: bool = False  # the command's output and exit code are the action's (status, logs)


Step = Union[MakeDir, WriteFile, RemoveFile, RemoveDir, Command]


class Runner:
    def __init__(self, out: TextIO, *, dry_run: bool = False):
        self.out, self.dry_run = out, dry_run

    def run(self, steps: list[Step]) -> int:
        """Perform (or print) the steps in order; returns the exit code of the last passthrough command, else 0.

        Raises:
            ServiceError: a command that must succeed failed, or its program is missing.
        """
        code = 0
        for step in steps:
            self._say(step)
            if self.dry_run:
                continue
            if isinstance(step, Command):
                rc = self._do(step)
                code = rc if step.passthrough else code
            else:
                self._touch(step)
        return code

    def _say(self, step: Step) -> None:
        prefix = "would " if self.dry_run else ""
        if isinstance(step, MakeDir):
            print(f"{prefix}create folder {step.path} (mode {step.mode:04o})", file=self.out)
        elif isinstance(step, WriteFile):
            print(f"{prefix}write {step.path} (mode {step.mode:04o})", file=self.out)
            if self.dry_run:
                print(f"----- {step.path}\n{step.text.rstrip()}\n-----", file=self.out)
        elif isinstance(step, RemoveFile):
            print(f"{prefix}remove {step.path}" + (f" ({step.note})" if step.note else ""), file=self.out)
        elif isinstance(step, RemoveDir):
            print(f"{prefix}remove folder {step.path} (if empty)", file=self.out)
        else:
            note = f"  # may fail: {step.may_fail}" if step.may_fail else ""
            print(f"{prefix}run: {shlex.join(step.argv)}{note}", file=self.out)
        self.out.flush()

    @staticmethod
    def _touch(step: Step) -> None:
        if isinstance(step, MakeDir):
            step.path.mkdir(mode=step.mode, exist_ok=True)
        elif isinstance(step, WriteFile):
            tmp = step.path.with_name(step.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, step.mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(step.text)
            os.chmod(tmp, step.mode)  # the umask may have narrowed it
            os.replace(tmp, step.path)
        elif isinstance(step, RemoveFile):
            step.path.unlink(missing_ok=True)
        elif isinstance(step, RemoveDir):
            try:
                step.path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                pass  # not empty: what the daemon wrote there is the user's

    def _do(self, step: Command) -> int:
        if shutil.which(step.argv[0]) is None:
            raise ServiceError(f"{step.argv[0]} is not on PATH: is this the right platform (--platform)?")
        if step.passthrough:
            return subprocess.run(step.argv, check=False).returncode
        done = subprocess.run(step.argv, check=False, capture_output=True, text=True)
        for text in (done.stdout, done.stderr):
            if text.strip():
                print(text.rstrip(), file=self.out)
        if done.returncode != 0:
            if step.may_fail:
                print(f"(exit {done.returncode}: fine, {step.may_fail})", file=self.out)
                return 0
            raise ServiceError(f"`{shlex.join(step.argv)}` failed with exit code {done.returncode}")
        return 0
