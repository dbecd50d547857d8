"""Tests of the torchtitan 0.2 glue: collected only with torchtitan 0.2.x (see tests/lines.py)."""

from tests.lines import only_for

collect_ignore_glob = only_for("0.2", "tests/gpu")
