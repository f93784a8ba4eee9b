"""Fixtures of the unit tier's CLI tests: the caller taken for root or not
(no real root needed), and an initialised state dir."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from smpfs import cli
from smpfs.cli import base as cli_base


@pytest.fixture
def admin(monkeypatch):
    monkeypatch.setattr(cli_base, "is_admin", lambda: True)


@pytest.fixture
def not_admin(monkeypatch):
    monkeypatch.setattr(cli_base, "is_admin", lambda: False)


@pytest.fixture
def state(tmp_path, admin):
    s = tmp_path / "state"
    r = CliRunner().invoke(cli.main, ["--state", str(s), "init", "--server", "SMP01"])
    assert r.exit_code == 0, r.output
    return s
