"""The ``titan-rope`` command: runs torchtitan's own trainer, on CPU-only hosts too."""
