"""The docs say what the code does: the examples in docs/testing.md are test
files verbatim, and README's command and exit-code tables match the CLI
(its click tree and --help) and smpfs/errors.py."""
import inspect
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from smpfs import cli, errors

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", ["tests/mount/test_docs_example.py", "tests/mount/test_docs_example_caps.py"])
def test_docs_example_matches_the_test_file(name):
    doc = (ROOT / "docs" / "testing.md").read_text()
    m = re.search(rf"<!-- begin: {re.escape(name)} -->\n```python\n(.*?)```\n<!-- end: {re.escape(name)} -->",
                  doc, re.S)
    assert m, f"docs/testing.md lost the markers of {name}"
    assert m.group(1) == (ROOT / name).read_text(), f"docs/testing.md and {name} differ: keep them identical"


def leaves(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from leaves(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


COMMANDS = dict(leaves(cli.main))


def readme_command_spans() -> list[str]:
    section = README.split("## The command line", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `smpfs")]
    assert len(rows) >= 15
    return [span.replace("\\|", "|") for row in rows for span in re.findall(r"`(smpfs [^`]*)`", row.split(" | ")[0])]


def resolve_all(span: str) -> list:
    """Every command a span names (``smpfs client request|release capture|restore``
    names four), each as (path, command, the rest of the span)."""
    words = span.split()[1:]
    for n in (3, 2, 1):
        paths = [()]
        for w in words[:n]:
            paths = [p + (alt,) for p in paths for alt in w.split("|")]
        if all(p in COMMANDS for p in paths):
            return [(p, COMMANDS[p], words[n:]) for p in paths]
    raise AssertionError(f"README names `{span}`, which is no smpfs command")


def resolve(span: str):
    return resolve_all(span)[0]


def test_readme_command_table_names_every_command_and_only_real_ones():
    named = {r[0] for span in readme_command_spans() for r in resolve_all(span)}
    missing = sorted(" ".join(p) for p in set(COMMANDS) - named)
    assert not missing, f"commands missing from README's command table: {missing}"


def test_readme_options_exist_and_required_ones_are_shown():
    for path, cmd, rest, span in [(*r, s) for s in readme_command_spans() for r in resolve_all(s)]:
        opts = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
        for word in re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", " ".join(rest)):
            assert word in opts, f"README: `{span}`: {word} is not an option of smpfs {' '.join(path)}"
        for p in cmd.params:
            if isinstance(p, click.Option) and p.required:
                assert p.opts[0] in rest, f"README: `{span}` does not show the required {p.opts[0]}"
            if isinstance(p, click.Argument) and p.required:
                assert any(w[:1].isupper() or "|" in w for w in rest), f"README: `{span}` shows no argument"
        help_text = CliRunner().invoke(cli.main, [*path, "--help"]).stdout
        for word in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(rest)):
            assert word in help_text, f"`smpfs {' '.join(path)} --help` does not mention {word}"


def table_codes(text: str, heading: str) -> dict[int, str]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| ([^|]*)\|", section, re.M)}


def error_classes() -> dict[int, str]:
    return {c.exit_code: c.__name__ for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, errors.SmpError)}


def test_exit_code_tables_match_errors_py():
    codes = error_classes()
    readme = table_codes(README, "### Exit codes")
    assert set(readme) == set(codes) | {0}, "README's exit-code table and smpfs/errors.py differ"
    admin = table_codes((ROOT / "docs" / "admin.md").read_text(), "## Exit codes")
    assert set(admin) == set(codes) | {0}, "docs/admin.md's exit-code table and smpfs/errors.py differ"
    for code, name in codes.items():
        if code:
            assert f"`{name}`" in admin[code], f"docs/admin.md: exit code {code} should be `{name}`"


def test_readme_says_json_errors_the_way_the_cli_prints_them():
    assert '{"error": {"class": ' in README and '"exit": ' in README and '"hint": ' in README


def test_the_linux_smbclient_example_names_the_port_and_a_real_auth_file():
    """docs/network.md's smbclient example works on a non-445 port and with an
    auth file smbclient reads (`username = ...`, `password = ...`), as the SMB
    tests (smpfs.testnet.authfile) write it."""
    doc = (ROOT / "docs" / "network.md").read_text()
    block = doc.split("### From a Linux client or CI job", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    cmd = " ".join(line.rstrip("\\").strip() for line in block.splitlines()
                   if line.startswith(("smbclient ", "    -")))
    assert re.search(r"smbclient '//[^']+/SMPSTORED_[0-9A-F]{8}\$' .*-p \d+ ", cmd), cmd
    auth = re.search(r"-A (\S+)", cmd).group(1)
    made = re.search(rf"printf '([^']*)' .*> {re.escape(auth)}\n", block)
    assert made, f"the example does not show how {auth} is written"
    lines = made.group(1).split("\\n")
    assert [ln.split(" = ")[0] for ln in lines if ln] == ["username", "password", "domain"], lines
    testnet = (ROOT / "smpfs" / "testnet.py").read_text()
    assert 'f"username = {c.name}\\npassword = ' in testnet, "the SMB tests write the auth file another way"
