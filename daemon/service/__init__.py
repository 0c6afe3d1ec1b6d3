"""Run `moed serve` as a per-user service: a launchd LaunchAgent on macOS, a systemd user unit on Linux.

    host = Host.current()                                   # or Host("systemd", home=tmp, uid=1000) in tests
    spec = ServiceSpec.build(host, interpreter=..., store=..., config=None, drain_timeout_s=10.0)
    Runner(sys.stdout, dry_run=True).run(plan.install(host, spec))

host.py knows where things go, render.py fills the templates (templates/, shipped as package data), plan.py turns
each action into steps and keeps the install record, steps.py performs or prints the steps. The command line is
moed.daemon.commands.service; docs/service.md describes the whole.
"""

from . import plan
from .host import PLATFORMS, Host, ServiceError, platform_of
from .render import ServiceSpec, render, template_text
from .steps import Runner

__all__ = ["PLATFORMS", "Host", "Runner", "ServiceError", "ServiceSpec", "plan", "platform_of", "render",
           "template_text"]
