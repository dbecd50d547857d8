"""torchtitan 0.2.x custom config module: adds the ``[rope_scaling]`` section.

``[job] custom_config_module = "titan_rope_ext.job_config"`` makes torchtitan's
ConfigManager merge this JobConfig into its own (TOML and ``--rope_scaling.<key>`` CLI
overrides), and importing it registers the ``rope_scaling`` converter.

The section is also checked against ``model.converters`` whenever the ConfigManager builds
the job config (from the TOML, then again with the CLI overrides), on every entry point:
``run_train.sh``, ``torchrun -m torchtitan.train`` and ``titan-rope``. A section that sets
anything while ``model.converters`` does not list ``rope_scaling`` would train stock RoPE
silently, so it is refused there, before any model or device work. torchtitan 0.2.x offers
no whole-config validation hook; the check is the section field's default value, a data
descriptor: dataclasses route every ``__init__`` assignment of the field through its
``__set__``, and this field comes after torchtitan's own sections, so ``model`` is set by
then. Nothing of torchtitan's is modified.
"""

import dataclasses
from dataclasses import dataclass, field

import titan_rope_ext.torchtitan02.converter  # noqa: F401  (registers the converter)
from titan_rope_ext.config import RopeScaling
from titan_rope_ext.torchtitan02.converter import NAME


def unlisted_section_error(section: RopeScaling, converters: list) -> "str | None":
    """The error for a ``[rope_scaling]`` section that sets something while ``model.converters``
    does not list the converter (torchtitan would ignore the section); None when the job is consistent."""
    if NAME in converters or section == RopeScaling():
        return None
    return (f"[{NAME}] sets {section.describe()} but model.converters = {list(converters)} does not list "
            f"{NAME!r}, so torchtitan would train its stock RoPE; add {NAME!r} to model.converters "
            f"(TOML: converters = [\"{NAME}\"]), or remove the [{NAME}] section to train stock RoPE")


class CheckedSection:
    """Default value of ``JobConfig.rope_scaling``: a data descriptor that stores the section and checks
    it against ``model.converters`` of the job config being built (see the module docstring).

    Raises ValueError (which torchtitan's ConfigManager reports as a config error) naming the section's
    keys and the converters list.
    """

    _slot = "_rope_scaling_section"

    def __get__(self, obj, objtype=None):
        if obj is None:  # class access: dataclasses reads the default through it
            return self
        return obj.__dict__.get(self._slot, RopeScaling())

    def __set__(self, obj, value) -> None:
        if value is self:  # the field's default
            value = RopeScaling()
        model = getattr(obj, "model", None)
        if isinstance(value, RopeScaling) and model is not None:
            if error := unlisted_section_error(value, getattr(model, "converters", [])):
                raise ValueError(error)
        obj.__dict__[self._slot] = value


def rope_scaling_field():
    """The ``rope_scaling`` field for a JobConfig of your own custom config module (checked like ours):
    ``rope_scaling: RopeScaling = rope_scaling_field()``."""
    return field(default=CheckedSection())


@dataclass
class Debug:
    """torchtitan 0.2.0 only: the ``[debug]`` section of torchtitan 0.2.1+ (0.2.0 keeps these keys under
    ``[training]``), so one job file, e.g. a shipped config with ``[debug] seed = 0``, runs on every 0.2.x.
    Set values are copied into ``[training]``, where 0.2.0's Trainer reads them."""

    seed: int | None = None
    """Base RNG seed (0.2.0: ``training.seed``)."""

    deterministic: bool = False
    """Use deterministic algorithms (0.2.0: ``training.deterministic``)."""


class DebugIntoTraining:
    """Default value of ``JobConfig.debug`` on torchtitan 0.2.0: a data descriptor (as ``CheckedSection``)
    that copies the set ``[debug]`` keys into the job config's ``[training]`` section."""

    _slot = "_debug_section"

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return obj.__dict__.get(self._slot, Debug())

    def __set__(self, obj, value) -> None:
        if value is self:
            value = Debug()
        training = getattr(obj, "training", None)
        if isinstance(value, Debug) and training is not None:
            if value.seed is not None:
                training.seed = value.seed
            if value.deterministic:
                training.deterministic = True
        obj.__dict__[self._slot] = value


def _torchtitan_has_debug_section() -> bool:
    from torchtitan.config.job_config import JobConfig as TorchtitanJobConfig

    return any(f.name == "debug" for f in dataclasses.fields(TorchtitanJobConfig))


if _torchtitan_has_debug_section():

    @dataclass
    class JobConfig:
        rope_scaling: RopeScaling = rope_scaling_field()
        """RoPE method applied by the ``rope_scaling`` model converter."""

else:  # torchtitan 0.2.0

    @dataclass
    class JobConfig:
        debug: Debug = field(default=DebugIntoTraining())
        """torchtitan 0.2.1+'s ``[debug]`` keys, copied into ``[training]``."""

        rope_scaling: RopeScaling = rope_scaling_field()
        """RoPE method applied by the ``rope_scaling`` model converter."""
