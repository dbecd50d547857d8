"""Which torchtitan line a test directory serves, so each CI lane collects only its own line's tests.

A directory whose tests need one torchtitan line puts one line in its ``conftest.py``::

    collect_ignore_glob = only_for("0.3")   # from tests.lines import only_for

Under another line (or with no torchtitan) pytest then collects nothing there, so nothing there
imports torchtitan modules it was not written for; the top-level ``tests/conftest.py`` prints in
the session header which line is installed and which directories were left out. Tests of the
core (``tests/unit/test_*.py``, ``tests/unit/kernels``) import no torchtitan and run on every line.
"""

from __future__ import annotations

from titan_rope_ext._torchtitan import torchtitan_line

LEFT_OUT: list[str] = []
"""Directories left out in this session, as ``"path (torchtitan X.Y)"``, for the report header."""


def only_for(line: str, directory: str | None = None) -> list[str]:
    """``collect_ignore_glob`` for a conftest whose directory holds tests for torchtitan ``line`` only."""
    if torchtitan_line() == line:
        return []
    if directory is not None:
        LEFT_OUT.append(f"{directory} (torchtitan {line})")
    return ["*"]
