"""The example test in docs/testing.md is tests/mount/test_docs_example.py, verbatim."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_example_matches_the_test_file():
    doc = (ROOT / "docs" / "testing.md").read_text()
    m = re.search(r"<!-- begin: tests/mount/test_docs_example.py -->\n```python\n(.*?)```\n"
                  r"<!-- end: tests/mount/test_docs_example.py -->", doc, re.S)
    assert m, "docs/testing.md lost its example markers"
    assert m.group(1) == (ROOT / "tests" / "mount" / "test_docs_example.py").read_text(), (
        "docs/testing.md and tests/mount/test_docs_example.py differ: keep them identical")
