"""Entry module each rank runs: ``python -m titan_rope_ext.launch.worker <torchtitan args>``.

``titan-rope train`` starts it with ``TITAN_ROPE_CPU_WORKER=1``, so the package applies the
CPU shims on import when there is no accelerator (they must precede torchtitan's import-time
device detection). It then hands over to torchtitan's own ``torchtitan.train.main(Trainer)``
with the arguments unchanged.
"""

from titan_rope_ext.launch.cpu import apply_cpu_shims


def main() -> None:
    apply_cpu_shims()  # idempotent; a no-op when an accelerator is present
    from torchtitan.train import main as torchtitan_main, Trainer

    torchtitan_main(Trainer)


if __name__ == "__main__":
    main()
