"""One package, two torchtitan lines: what imports where (runs under every line, and checks a run with none)."""

from __future__ import annotations

import subprocess
import sys

from titan_rope_ext._torchtitan import torchtitan_line


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_core_imports_without_torchtitan():
    # torchtitan made invisible in this process: no distribution metadata, no importable module
    proc = run(
        "import importlib.metadata as md, sys\n"
        "real = md.version\n"
        "def version(name):\n"
        "    if name == 'torchtitan': raise md.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "md.version = version\n"
        "sys.modules['torchtitan'] = None\n"
        "import titan_rope_ext\n"
        "from titan_rope_ext import RopeScaling, rope_frequencies\n"
        "inv, af = rope_frequencies(RopeScaling(rope_type='yarn', factor=4.0, original_max_position_embeddings=64), 16, 1e4, 256)\n"
        "print(titan_rope_ext._torchtitan.torchtitan_line(), inv.shape[0], round(af, 4))\n"
        "try:\n"
        "    import titan_rope_ext.torchtitan03\n"
        "except ImportError as e:\n"
        "    print(e)\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "None 8 1.1386"
    assert lines[1] == "titan_rope_ext.torchtitan03 serves torchtitan 0.3.x; this environment has no torchtitan"


def test_each_lines_glue_loads_only_under_its_line():
    proc = run("import sys, titan_rope_ext\n"
               "print('titan_rope_ext.torchtitan02.converter' in sys.modules)\n"
               "try:\n"
               "    import titan_rope_ext.torchtitan03.trainer\n"
               "    print('0.3 glue')\n"
               "except ImportError as e:\n"
               "    print(e)\n")
    assert proc.returncode == 0, proc.stderr
    converter_loaded, glue = proc.stdout.splitlines()
    assert converter_loaded == str(torchtitan_line() == "0.2")
    if torchtitan_line() == "0.3":
        assert glue == "0.3 glue"
    else:
        assert glue.startswith("titan_rope_ext.torchtitan03 serves torchtitan 0.3.x; this environment has torchtitan 0.2")


def test_launcher_module_imports_neither_torch_nor_torchtitan():
    proc = run("import sys, titan_rope_cli; print(sorted(m for m in ('torch', 'torchtitan', 'titan_rope_ext') "
               "if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
