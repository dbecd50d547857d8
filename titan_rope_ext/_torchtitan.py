"""Which torchtitan line is installed, read from package metadata (no torchtitan import: it takes seconds)."""

from __future__ import annotations

import functools
import importlib.metadata


@functools.cache
def torchtitan_line() -> str | None:
    """``"0.2"`` or ``"0.3"`` for an installed torchtitan 0.2.x / 0.3.x, ``None`` when none is installed.

    Any other version is an error naming the supported range, so no glue is loaded against a
    torchtitan it was not written for.
    """
    try:
        version = importlib.metadata.version("torchtitan")
    except importlib.metadata.PackageNotFoundError:
        return None
    line = ".".join(version.split(".")[:2])
    if line not in ("0.2", "0.3"):
        raise ImportError(f"titan_rope_ext supports torchtitan 0.2.x and 0.3.x, found torchtitan {version}")
    return line


def require_line(line: str, package: str) -> None:
    """ImportError naming the installed torchtitan unless it is of ``line``: each line's glue package calls it
    first, so nothing there is imported against a torchtitan it was not written for."""
    if torchtitan_line() == line:
        return
    try:
        found = f"torchtitan {importlib.metadata.version('torchtitan')}"
    except importlib.metadata.PackageNotFoundError:
        found = "no torchtitan"
    raise ImportError(f"{package} serves torchtitan {line}.x; this environment has {found}")
