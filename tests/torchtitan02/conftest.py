"""Tests of the torchtitan 0.2 glue (``titan_rope_ext/torchtitan02``): collected only with torchtitan 0.2.x
(see tests/lines.py). ``models/``, ``tools/``: unit tests; ``integration/``: real Trainer runs through
``titan-rope`` on CPU; ``gpu/``: the parallelism matrix and the fused kernel on CUDA devices."""

from tests.lines import only_for

collect_ignore_glob = only_for("0.2", "tests/torchtitan02")
