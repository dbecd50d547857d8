"""Rank-side pieces of the ``titan-rope`` launcher (its entry is the top-level ``titan_rope_cli``)."""
