"""TensorBoard: event files under `<run dir>/tensorboard` (torch.utils.tensorboard's SummaryWriter).

`tensorboard --logdir outputs/multirun/DATE/TIME` then shows every job of a sweep as one run named by its
sub-directory (`N_awd.lambda=0,...`). Hyperparameters go to the HParams plugin (the flattened config) and, as
YAML, to a `config` text entry; the final state is a `status` text entry. A resumed run writes a new event
file into the same directory; its high-water marks come from reading the existing ones with TensorBoard's
own reader, so no step appears twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from esft.tracking.context import JobInfo, TrackerState
from esft.tracking.params import flat_params
from esft.tracking.scalar import ScalarTracker

DEFAULT_DIR = "tensorboard"


class TensorBoardTracker(ScalarTracker):
    name = "tensorboard"

    def __init__(self, settings: Mapping[str, Any], job: JobInfo, state: TrackerState) -> None:
        super().__init__()
        saved = state.get(self.name).get("log_dir")  # relative to the run dir unless the user gave a path
        self.log_dir = job.run_dir / (saved or settings.get("log_dir") or DEFAULT_DIR)
        self._saved = saved or settings.get("log_dir") or DEFAULT_DIR
        self.flush_secs = int(settings.get("flush_secs", 10))
        self._state = state

    def _open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=self.flush_secs)
        self._state.put(self.name, {"log_dir": str(self._saved)})

    def _held_marks(self) -> dict[str, int]:
        marks: dict[str, int] = {}
        for tag, step in read_scalar_steps(self.log_dir):
            marks[tag] = max(step, marks.get(tag, -1))
        return marks

    def _write(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, global_step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        import yaml
        from torch.utils.tensorboard.summary import hparams

        params = flat_params(config)
        for summary in hparams(params, {"train/theta_dist": 0.0}):  # experiment, session start, session end
            self._writer.file_writer.add_summary(summary)
        self._writer.add_text("config", "```yaml\n" + yaml.safe_dump(dict(config), sort_keys=False) + "```")

    def flush(self) -> None:
        self._writer.flush()

    def close(self, status: str) -> None:
        self._writer.add_text("status", status)
        self._writer.close()


def read_scalar_steps(log_dir: Path):
    """(tag, step) of every scalar event in every event file of `log_dir`, duplicates included (TensorBoard's
    own event-file loader; the EventAccumulator would hide repeats)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars" or value.HasField("simple_value"):
                    yield value.tag, int(event.step)


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard's EventAccumulator loads it (what the UI shows)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()[SCALARS]}
