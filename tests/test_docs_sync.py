"""The example test in docs/testing.md is tests/test_docs_example.py, verbatim."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docs_example_matches_the_test_file():
    doc = (ROOT / "docs" / "testing.md").read_text()
    m = re.search(r"<!-- begin: tests/test_docs_example.py -->\n```python\n(.*?)```\n"
                  r"<!-- end: tests/test_docs_example.py -->", doc, re.S)
    assert m, "docs/testing.md lost its example markers"
    assert m.group(1) == (ROOT / "tests" / "test_docs_example.py").read_text(), (
        "docs/testing.md and tests/test_docs_example.py differ: keep them identical")
