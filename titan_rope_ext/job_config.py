"""``[job] custom_config_module = "titan_rope_ext.job_config"``: the name torchtitan 0.2 jobs use for the
``[rope_scaling]`` section. It lives in ``titan_rope_ext.torchtitan02.job_config``; this module keeps the
documented name (torchtitan imports it and reads its ``JobConfig``)."""

from titan_rope_ext.torchtitan02.job_config import (  # noqa: F401
    CheckedSection,
    Debug,
    DebugIntoTraining,
    JobConfig,
    rope_scaling_field,
    unlisted_section_error,
)
