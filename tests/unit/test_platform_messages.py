"""Off Linux the step sandbox cannot confine code: it says so by name, and the CLI prints that in a
line instead of a traceback."""

from __future__ import annotations

import sys

import pytest

from rstar_app import cli
from rstar_app.sandbox.pool import Sandbox, SandboxUnavailable


def test_the_sandbox_refuses_other_systems_and_names_the_way_out(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(SandboxUnavailable, match="needs Linux.*not darwin.*container"):
        Sandbox()


def test_the_cli_reports_an_unavailable_sandbox_in_one_line(monkeypatch, capsys):
    def no_sandbox(a, **kw):
        raise SandboxUnavailable("the step sandbox needs Linux")
    monkeypatch.setattr(cli, "engine_from_args", no_sandbox)
    assert cli.main(["solve", "What is 2 + 3?"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: the step sandbox needs Linux"
