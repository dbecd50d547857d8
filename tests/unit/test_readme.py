"""The README's promises that a test can hold: its two first commands, its links, paths and tables."""

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def first_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_first_screen_has_the_two_commands():
    setup, tests = first_commands()
    steps = [shlex.split(part) for part in setup.split("&&")]
    assert steps[0][:3] == ["python3", "-m", "venv"]
    pips = [s[2:] for s in steps if s[:2] == ["pip", "install"]]
    assert pips and all(not a.startswith("triton==") for args in pips for a in args), pips  # torch pins its own
    train = steps[-1]
    assert train[:2] == ["titan-rope", "train"] and (REPO / train[train.index("--job.config_file") + 1]).is_file()
    assert tests.endswith("python -m pytest tests")
    assert README.index(setup) < 1500, "the commands must be on the first screen"


def test_ci_runs_the_readmes_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert first_commands()[1].split("&&")[-1].strip() in ci
    assert "readme_install_resolves.py" in ci


def test_contents_links_resolve_to_headings():
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in re.findall(r"(?m)^#{2,3} (.+)$", README)}
    links = re.findall(r"\]\(#([^)]+)\)", README)
    assert links and not [a for a in links if a not in anchors]


def test_tables_are_not_split_by_blank_lines():
    # a blank line between two table rows ends the table: the rows after it render as plain paragraphs
    assert not re.search(r"(?m)^\|.*\|\n\n\|", README)


def test_paths_named_in_the_readme_exist():
    named = set(re.findall(r"(?:configs|scripts|docs|benchmarks|tests)/[\w./-]+\.(?:toml|py|md|json|png|sh)", README))
    assert named and not sorted(p for p in named if not (REPO / p).exists())


def test_license_file_matches_pyproject():
    assert "BSD 3-Clause License" in (REPO / "LICENSE").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'license = "BSD-3-Clause"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
