"""Entry module each rank runs: ``python -m titan_rope_ext.launch.worker <torchtitan args>``.

``titan-rope train`` starts it with ``TITAN_ROPE_CPU_WORKER=1`` on hosts without an accelerator,
so the package applies the CPU shims on import, before torchtitan's import-time device detection
(see ``titan_rope_ext/launch/cpu.py``). With ``TITAN_ROPE_CHECK=1`` (a single rank) it first runs
the launcher's config check. Then it hands over to torchtitan's own
``torchtitan.train.main(Trainer)``, which parses the same arguments.
"""

import os
import sys

from titan_rope_ext.launch.cpu import apply_cpu_shims


def main() -> None:
    if os.environ.get("TITAN_ROPE_CPU_WORKER") == "1":
        apply_cpu_shims()  # already applied at package import; idempotent
    if os.environ.get("TITAN_ROPE_CHECK") == "1":
        from titan_rope_ext.launch.check import check_or_exit

        check_or_exit(sys.argv[1:])
    from torchtitan.train import main as torchtitan_main, Trainer

    torchtitan_main(Trainer)


if __name__ == "__main__":
    main()
