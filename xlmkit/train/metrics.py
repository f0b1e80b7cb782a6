"""Run metrics: RUN/metrics.jsonl (one JSON object per line) and, when tensorboard is installed,
TensorBoard scalars under RUN/tb/.

    {"step": 20, "split": "train", "loss": 5.1, "loss_mlm_en": 5.0, "lr": 4e-4, "tokens_per_s": 9000, ...}
    {"step": 200, "split": "valid", "ppl/en": 41.2, "acc/en": 0.31, "ppl/en-fr": 30.5, ..., "mean_ppl": 36.0}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def perplexity(loss: float) -> float:
    """exp(mean cross-entropy), capped so that an untrained model's value stays a finite number."""
    return math.exp(min(loss, 50.0))


class MetricsLogger:
    """Appends records to RUN/metrics.jsonl (flushed per line, so a killed run keeps what it logged)
    and mirrors numeric values to TensorBoard as `{split}/{key}`. Disabled (a no-op) off rank 0."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 purge_step: int | None = None) -> None:
        """purge_step: on resume, TensorBoard discards its events from this step on (logged again)."""
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra: skip silently
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge_step)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step, split = record["step"], record.get("split", "train")
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (or of a run directory's), optionally of one split only. A torn last
    line (a run killed mid-write) is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if split is None or record.get("split") == split:
            out.append(record)
    return out


def truncate_metrics(run_dir: str | Path, after_step: int) -> None:
    """Drop records with step > after_step (a resumed run logs those steps again)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [json.dumps(r) for r in read_metrics(path) if r.get("step", 0) <= after_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)
