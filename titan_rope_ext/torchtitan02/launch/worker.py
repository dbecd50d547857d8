"""Entry module each rank runs: ``python -m titan_rope_ext.torchtitan02.launch.worker <torchtitan args>``.

``titan-rope train`` starts it with ``TITAN_ROPE_CPU_WORKER=1`` on hosts without an accelerator,
so the package applies the CPU shims on import, before torchtitan's import-time device detection
(see ``titan_rope_ext/launch/cpu.py``). With ``TITAN_ROPE_CHECK=1`` (a single rank) it first runs
the launcher's config check. Then it runs ``torchtitan.train`` as ``__main__``, as
``torchrun -m torchtitan.train`` would, which parses the same arguments. When that returns, rank 0
completes a ``checkpoint.last_save_in_hf`` folder with its config.json (``titan_rope_ext.torchtitan02.tools.export``).
"""

import os
import runpy
import sys

from titan_rope_ext.launch.cpu import apply_cpu_shims


def main() -> None:
    if os.environ.get("TITAN_ROPE_CPU_WORKER") == "1":
        apply_cpu_shims()  # already applied at package import; idempotent
    if os.environ.get("TITAN_ROPE_CHECK") == "1":
        from titan_rope_ext.torchtitan02.launch.check import check_or_exit

        check_or_exit(sys.argv[1:])
    # exactly what `torchrun -m torchtitan.train` runs (0.2.1+ call main(Trainer) there; 0.2.0 inlines it)
    runpy.run_module("torchtitan.train", run_name="__main__", alter_sys=True)
    if os.environ.get("RANK", "0") == "0":
        complete_hf_save(sys.argv[1:])


def complete_hf_save(args: list[str]) -> None:
    """A job with ``checkpoint.last_save_in_hf`` gets its config.json (and tokenizer files) in the HF folder
    torchtitan wrote, as ``titan-rope export --config-only`` writes them; a job that cannot is told why."""
    from titan_rope_ext.tools.export_command import report_last_save
    from titan_rope_ext.torchtitan02.tools.export import complete_last_save, mentions_last_save_in_hf

    if not mentions_last_save_in_hf(args):  # skip parsing the job again (about a second) for most runs
        return
    report_last_save(lambda: complete_last_save(args))


if __name__ == "__main__":
    main()
