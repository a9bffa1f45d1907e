"""The run dir's own record, as a MetricLogger: the pinned JSONL files (esft/storage/rundir.py). Always on.

It writes through the experiment's writers (so torchrun followers, whose writers write nothing, stay
silent) and is the one logger whose errors are not swallowed: a full disk must stop the run with the
experiment's "disk full" message, since this is the record the others are rebuilt from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from esft.storage.rundir import DIAGNOSTICS_FILE, EVALS_FILE, METRICS_FILE, JsonlWriter


class JsonlLogger:
    name = "jsonl"

    def __init__(self, writers: Mapping[str, JsonlWriter]) -> None:
        self.writers = writers

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass  # Hydra already wrote the composed config to .hydra/config.yaml

    def log_metrics(self, row: Mapping[str, Any]) -> None:
        self.writers[METRICS_FILE].write(dict(row))

    def log_evals(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self.writers[EVALS_FILE].write(dict(row))

    def log_diagnostics(self, row: Mapping[str, Any]) -> None:
        self.writers[DIAGNOSTICS_FILE].write(dict(row))

    def flush(self) -> None:
        pass  # every row is flushed as it is written

    def close(self, status: str) -> None:
        pass  # status.json holds the final state; the experiment closes its writers
