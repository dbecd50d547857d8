"""CI check: the README's setup command resolves against the package registry alone.

Takes every ``pip install ...`` of the first command in the README's first bash block and resolves
them together with ``pip install --dry-run`` (metadata only, nothing installed) in a throwaway venv,
with this machine's pip configuration switched off (no local wheel directory, no local index, no
constraints), as on a plain PyPI machine. Run from the repository root: ``python .ci/readme_install_resolves.py``.
"""

import os
import re
import shlex
import subprocess
import sys
import tempfile


def setup_command(readme: str) -> str:
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    return next(line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def pip_installs(command: str) -> list[list[str]]:
    return [shlex.split(part)[2:] for part in command.split("&&") if shlex.split(part)[:2] == ["pip", "install"]]


def main() -> int:
    installs = pip_installs(setup_command(open("README.md").read()))
    requirements = [arg for args in installs for arg in args]
    print("README setup installs:", " | ".join(" ".join(a) for a in installs))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no pip.conf: no find-links, extra index or constraints of this machine
    with tempfile.TemporaryDirectory() as venv:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        python = os.path.join(venv, "bin", "python")
        subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True, env=env)
        proc = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", *requirements],
                              env=env, capture_output=True, text=True)
    tail = [line for line in proc.stdout.splitlines() if line.startswith("Would install")]
    print(tail[0] if tail else proc.stdout[-2000:] + proc.stderr[-3000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
