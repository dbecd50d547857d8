"""``titan-rope inspect``, ``eval`` and ``export`` on torchtitan 0.2 jobs (TOML)."""
