"""The ``titan-rope`` command itself: instant help that leads somewhere, one-line errors with status 2."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import titan_rope_cli
from titan_rope_ext import RopeScaling

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def cli(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "titan_rope_cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_help_and_usage_errors_import_neither_torch_nor_torchtitan():
    script = ("import sys, titan_rope_cli\n"
              "for argv in (['train', '--help'], ['eval', '--help'], ['inspect', '--help'], ['export', '--help'], ['train']):\n"
              "    try:\n"
              "        titan_rope_cli.main(argv)\n"
              "    except SystemExit:\n"
              "        pass\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchtitan', 'titan_rope_ext')))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_train_help_lists_every_rope_scaling_key_with_its_doc():
    out = " ".join(cli("train", "--help").stdout.split())
    for f in dataclasses.fields(RopeScaling):
        assert f"{f.name} " in out, f.name
    assert "Context extension ratio (new length / trained length), >= 1." in out
    assert "--job.config_file JOB.toml" in out and "--rope_scaling.<key> <value>" in out


LINE = titan_rope_cli.torchtitan_line()


def test_eval_help_names_the_installed_lines_job():
    out = cli("eval", "--help").stdout
    assert "--checkpoint" in out and "<job.dump_folder>/eval/" in out
    assert ("--module M --config F" if LINE == "0.3" else "--job.config_file JOB.toml") in out
    if LINE == "0.3":
        assert "--torchtitan-train" in out
        proc = cli("eval", "--checkpoint", "x")
        assert proc.returncode == 2 and proc.stderr.strip().startswith(
            "titan-rope eval: error: needs a job: --module M --config F (torchtitan 0.3), e.g. titan-rope eval ")
YARN = str(CONFIGS / "llama3_debug_yarn.toml")
NO_TOML_03 = "torchtitan 0.3 has no TOML jobs (--job.config_file): use --module M --config F"


@pytest.mark.parametrize("args, message_02, message_03", [
    (["train"], "titan-rope train: error: needs a job: --job.config_file JOB.toml",
     "titan-rope train: error: needs a job: --module M --config F (torchtitan 0.3)"),
    (["train", "--job.config_file", "missing.toml"],
     "titan-rope train: error: --job.config_file: no such file 'missing.toml'", NO_TOML_03),
    (["train", "--module", "llama3"], "titan-rope train: error: needs a job: --job.config_file JOB.toml",
     "titan-rope train: error: needs a job: --module M --config F (torchtitan 0.3)"),
    (["inspect", "missing.toml"], "titan-rope inspect: error: no such job file 'missing.toml'", NO_TOML_03),
    (["inspect"], "titan-rope inspect: error: needs a job: titan-rope inspect JOB.toml",
     "titan-rope inspect: error: needs a job: --module M --config F (torchtitan 0.3)"),
    (["eval", "--job.config_file", "missing.toml", "--checkpoint", "x"],
     "titan-rope eval: error: --job.config_file: no such file 'missing.toml'", NO_TOML_03),
    (["train", "--nproc", "0", "--job.config_file", YARN], "titan-rope train: error: --nproc must be >= 1, got 0",
     "titan-rope train: error: --nproc must be >= 1, got 0"),
    (["export", "--job.config_file", "missing.toml", "--checkpoint", "x", "--out", "y"],
     "titan-rope export: error: --job.config_file: no such file 'missing.toml'", NO_TOML_03),
], ids=["no-job", "missing-toml", "module-without-config", "inspect-missing-toml", "inspect-no-job", "eval", "nproc",
        "export-missing-toml"])
def test_bad_invocations_get_one_line_and_status_2(args, message_02, message_03):
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and (message_03 if LINE == "0.3" else message_02) in lines[0], proc.stderr


JOB = ["--module", "llama3", "--config", "llama3_debugmodel"] if LINE == "0.3" else ["--job.config_file", YARN]


@pytest.mark.parametrize("args, message", [
    ([], "titan-rope export: error: --checkpoint and --out are required (or --config-only)"),
    (["--config-only", "--checkpoint", "x"], "titan-rope export: error: --config-only writes no weights; drop --checkpoint"),
])
def test_export_checks_its_own_options_before_reading_the_job(args, message):
    # on 0.3, --config is the job's config function, not an abbreviation of --config-only
    proc = cli("export", *JOB, *args)
    assert proc.returncode == 2 and proc.stderr.strip() == message, proc.stderr


def test_export_names_the_installed_lines_job():
    out = cli("export", "--help").stdout
    assert ("--module M --config F" if LINE == "0.3" else "--job.config_file JOB.toml") in out and "--config-only" in out
    if LINE == "0.3":
        proc = cli("export", "--checkpoint", "x", "--out", "y")
        assert proc.returncode == 2 and proc.stderr.strip().startswith(
            "titan-rope export: error: needs a job: --module M --config F (torchtitan 0.3), e.g. titan-rope export ")


def test_the_cli_reads_the_installed_line_from_package_metadata():
    import importlib.metadata

    assert LINE == ".".join(importlib.metadata.version("torchtitan").split(".")[:2])


def test_plot_without_matplotlib_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(titan_rope_cli, "_has_matplotlib", lambda: False)
    status = titan_rope_cli.main(["inspect", str(CONFIGS / "llama3_debug_yarn.toml"), "--plot", str(tmp_path / "x.png")])
    assert status == 2
    assert "--plot needs matplotlib: pip install 'titan_rope_ext[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
