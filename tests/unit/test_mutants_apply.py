"""Every planted bug of tools/mutants.py still applies to today's code (the
long tier runs them; a stale one would silently stop guarding its line)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mutants", ROOT / "tools" / "mutants.py")
mutants = importlib.util.module_from_spec(spec)
sys.modules["mutants"] = mutants            # its dataclasses look their module up
spec.loader.exec_module(mutants)


@pytest.mark.parametrize("m", mutants.MUTANTS, ids=[m.name for m in mutants.MUTANTS])
def test_the_mutant_applies_and_names_existing_tests(m):
    text = (ROOT / m.file).read_text()
    for old, _new in m.patches:
        assert text.count(old) == 1, f"{m.name}: its patch matches {text.count(old)} times in {m.file}"
    for t in m.tests:
        assert (ROOT / t).exists(), f"{m.name}: {t} does not exist"
