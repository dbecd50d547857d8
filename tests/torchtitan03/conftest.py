"""Tests of the torchtitan 0.3 glue (``titan_rope_ext/torchtitan03``): collected only with torchtitan 0.3.x."""

from tests.lines import only_for

collect_ignore_glob = only_for("0.3", "tests/torchtitan03")
