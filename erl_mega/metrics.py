"""Per-step metrics to JSONL and TensorBoard; the JSONL is what the report and plot read back."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class MetricsLog:
    """Appends one JSON object per step to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int = 0) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.jsonl"
        if self.path.exists():  # on resume, drop lines past the checkpoint so the log has no repeats
            kept = [json.dumps(r) for r in read_metrics(self.path) if r["step"] <= resume_step]
            tmp = self.path.with_name(".metrics.jsonl.tmp")  # renamed over: a kill mid-rewrite loses no line
            tmp.write_text("".join(l + "\n" for l in kept))
            os.replace(tmp, self.path)
        self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step} | metrics) + "\n")
        for key, value in metrics.items():
            self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    """All logged steps, in order. A torn last line (a kill mid-write) is dropped and said; a bad line
    before it is damage nobody should train past, so it is an error naming the line."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("no integer 'step'")
        except ValueError as err:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not a metrics record ({err})") from None
            print(f"erl-mega: {path}: dropped a torn last line ({len(line)} bytes, a run killed mid-write)", file=sys.stderr)
            break
        rows.append(row)
    return rows
