"""The installed torchtitan line in the session header, and the test directories left out for it at the end (see tests/lines.py)."""

import importlib.metadata

from tests.lines import LEFT_OUT
from titan_rope_ext._torchtitan import torchtitan_line


def pytest_report_header(config):
    try:
        version = importlib.metadata.version("torchtitan")
    except importlib.metadata.PackageNotFoundError:
        version = "none"
    return f"torchtitan {version} (line {torchtitan_line()})"


def pytest_terminal_summary(terminalreporter):
    if LEFT_OUT:
        terminalreporter.write_line(
            "not collected (tests for another torchtitan line): " + ", ".join(sorted(set(LEFT_OUT))))
