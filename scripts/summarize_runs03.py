"""The table of ``scripts/gpu_model_runs03.sh``: stock vs stock-equivalent section per model and compile mode, YaRN.

    python scripts/summarize_runs03.py LOG_DIR --models "llama3 qwen3" [--md summary03.md] [--json losses03.json]

Reads ``<model>_<stock|equiv|yarn>_<eager|compile>.log`` (torchtitan's training log, ending with the script's
``rc=N`` line): the loss at every step (the 5 decimals torchtitan prints), the peak memory it reports, the
``rope_scaling:`` line our trainer logs. One row per pair (model, compile): max |equiv - stock| over the steps both
logged, the final losses, both exit codes; one row per YaRN run: the loss falls (last < first) or not. A run that
logged no step shows as failed with its rc, a log that is missing as "not run".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

STEP_RE = re.compile(r"step:\s*(\d+)\s+loss:\s*([-+\d.naninf]+)")
MEMORY_RE = re.compile(r"memory:\s*([\d.]+)\s*GiB")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
RC_RE = re.compile(r"^rc=(\S+)", re.M)


def read_run(path: Path) -> dict | None:
    """``{"losses": {step: loss}, "peak_gib", "rc", "rope"}`` of one log; None when it does not exist."""
    if not path.is_file():
        return None
    text = ANSI_RE.sub("", path.read_text(errors="replace"))
    rc = RC_RE.findall(text)
    rope = re.search(r"rope_scaling: (.*)", text)
    memory = [float(m) for m in MEMORY_RE.findall(text)]
    return {"losses": {int(s): float(v) for s, v in STEP_RE.findall(text)}, "peak_gib": max(memory, default=None),
            "rc": rc[-1] if rc else "?", "rope": rope.group(1).strip() if rope else None}


def _loss(run: dict | None) -> str:
    if run is None:
        return "not run"
    if not run["losses"]:
        return f"failed (rc={run['rc']})"
    return f"{run['losses'][max(run['losses'])]:.5f}"


def _memory(run: dict | None) -> str:
    return "-" if run is None or run["peak_gib"] is None else f"{run['peak_gib']:.2f}"


def max_diff(a: dict | None, b: dict | None) -> tuple[float | None, int]:
    """``(max |a - b| over the steps both logged, how many)``; None when they share no step."""
    if not a or not b:
        return None, 0
    steps = sorted(set(a["losses"]) & set(b["losses"]))
    if not steps:
        return None, 0
    return max(abs(a["losses"][s] - b["losses"][s]) for s in steps), len(steps)


def summarize(logs: Path, models: list[str]) -> tuple[list[list[str]], dict]:
    """Table rows (header first) and every run's parsed log, by run name."""
    runs = {p.stem: read_run(p) for p in sorted(logs.glob("*.log"))}
    rows = [["model", "run", "compile", "steps compared", "max |equiv - stock|", "final loss stock", "final loss other",
             "peak GiB stock / other", "rc stock / other"]]
    for model in models:
        for mode in ("eager", "compile"):
            stock, equiv = runs.get(f"{model}_stock_{mode}"), runs.get(f"{model}_equiv_{mode}")
            if stock is None and equiv is None:
                continue
            diff, n = max_diff(stock, equiv)
            rows.append([model, "stock vs equiv", "on" if mode == "compile" else "off", str(n),
                         "-" if diff is None else ("0 (identical)" if diff == 0 else f"{diff:.2e}"),
                         _loss(stock), _loss(equiv), f"{_memory(stock)} / {_memory(equiv)}",
                         f"{stock['rc'] if stock else '-'} / {equiv['rc'] if equiv else '-'}"])
        yarn, stock = runs.get(f"{model}_yarn_eager"), runs.get(f"{model}_stock_eager")
        if yarn is not None:
            losses = yarn["losses"]
            falls = ("falls" if losses[max(losses)] < losses[min(losses)] else "does not fall") if losses else "-"
            first = f"{losses[min(losses)]:.5f} -> " if losses else ""
            rows.append([model, f"yarn ({falls})", "off", str(len(losses)), "-", _loss(stock), first + _loss(yarn),
                         f"{_memory(stock)} / {_memory(yarn)}", f"{stock['rc'] if stock else '-'} / {yarn['rc']}"])
    return rows, runs


def eval_table(logs: Path) -> str:
    """The table ``titan-rope eval`` printed for the llama3 YaRN run's checkpoint (CUDA path), and its rc."""
    path = logs / "llama3_yarn_eval.log"
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace")
    kept = [line for line in text.splitlines() if line.startswith("llama3 debugmodel, ")
            or line.lstrip().startswith("length ") or re.match(r"\s+\d+\s+[\d.]+\s+[\d.]+", line)]
    rc = RC_RE.findall(text)
    return "\n".join(["titan-rope eval of llama3_yarn_eager's last checkpoint:", *kept, f"rc={rc[-1] if rc else '?'}"])


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def plain(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", type=Path, help="folder of <model>_<run>_<mode>.log files")
    p.add_argument("--models", required=True, help="space-separated model names, in table order")
    p.add_argument("--md", type=Path, help="write the table as markdown here")
    p.add_argument("--json", type=Path, help="write every run's losses, peak memory, rc and rope line here")
    opts = p.parse_args(argv)
    rows, runs = summarize(opts.logs, opts.models.split())
    versions = opts.logs / "versions.txt"
    header = versions.read_text().strip() if versions.is_file() else ""
    evaluation = eval_table(opts.logs)
    print(header)
    print(plain(rows))
    print(evaluation)
    if opts.md:
        opts.md.write_text((f"{header}\n\n" if header else "") + markdown(rows)
                           + (f"\n```\n{evaluation}\n```\n" if evaluation else ""))
    if opts.json:
        opts.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
