"""The torchtitan 0.3 side of ``titan-rope train`` (its entry is the top-level ``titan_rope_cli``)."""
