"""Entry each rank runs for torchtitan 0.3: ``python -m titan_rope_ext.torchtitan03.launch.worker <args>``.

``titan-rope train`` starts it with ``TITAN_ROPE_CPU_WORKER=1`` on hosts without an accelerator (the
package applies the CPU shims on import, before torchtitan is imported). With ``TITAN_ROPE_CHECK=1``
(one rank) it first runs the pre-launch check. Then it runs ``torchtitan.train`` as ``__main__`` -- what
``torchrun -m torchtitan.train`` runs -- on the arguments rewritten to the ``jobs`` form, so torchtitan's
own main parses the job (with its ``rope_scaling`` section) and builds and runs the Trainer. When that
returns, rank 0 completes a ``checkpoint.last_save_in_hf`` folder with its config.json and tokenizer files
(``titan_rope_ext.torchtitan03.tools.export``), as ``titan-rope export --config-only`` writes them.
"""

import os
import runpy
import sys

from titan_rope_ext.launch.cpu import apply_cpu_shims
from titan_rope_ext.torchtitan03.launch.args import with_rope_section


def main() -> None:
    if os.environ.get("TITAN_ROPE_CPU_WORKER") == "1":
        apply_cpu_shims()  # already applied at package import; idempotent
    args = sys.argv[1:]
    if os.environ.get("TITAN_ROPE_CHECK") == "1":
        from titan_rope_ext.torchtitan03.launch.check import check_or_exit

        check_or_exit(args)
    sys.argv = [sys.argv[0], *with_rope_section(args)]
    runpy.run_module("torchtitan.train", run_name="__main__", alter_sys=True)
    if os.environ.get("RANK", "0") == "0":
        complete_hf_save(args)


def complete_hf_save(args: list[str]) -> None:
    """A job with ``checkpoint.last_save_in_hf`` gets its config.json (and tokenizer files) in the HF folder torchtitan
    wrote; a job that cannot is told why. The job is parsed again (under a second), not searched for the flag: a
    config function may set ``last_save_in_hf`` itself."""
    from titan_rope_ext.tools.export_command import report_last_save
    from titan_rope_ext.torchtitan03.tools.export import complete_last_save

    report_last_save(lambda: complete_last_save(args))


if __name__ == "__main__":
    main()
