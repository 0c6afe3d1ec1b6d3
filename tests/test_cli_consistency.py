"""`moed` and `moectl` spell the same option the same way: sampling temperature is `--temperature` (or `--temp`)
in both, and both print their version."""

from __future__ import annotations

import pytest

from moed.clients.cli import build_parser as moectl_parser
from moed.daemon.cli import build_parser as moed_parser


@pytest.mark.parametrize("flag", ["--temperature", "--temp"])
def test_temperature_has_one_name_in_both_tools(flag):
    assert moed_parser().parse_args(["generate", "STORE", "hi", flag, "0.7"]).temp == 0.7
    assert moectl_parser().parse_args(["generate", "hi", flag, "0.7"]).temperature == 0.7


@pytest.mark.parametrize("parser, prog", [(moed_parser, "moed"), (moectl_parser, "moectl")])
def test_both_tools_print_their_version(parser, prog, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(prog + " ")
