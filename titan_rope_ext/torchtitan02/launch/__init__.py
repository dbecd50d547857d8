"""The torchtitan 0.2 side of ``titan-rope train``: the pre-launch check and the rank entry."""
