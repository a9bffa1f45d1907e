"""TensorBoard: what the run logged, read back with TensorBoard's own readers, equals the JSONL rows."""

from __future__ import annotations

from collections import Counter

import pytest
from tracking_helpers import expected_points

from esft.tracking.tensorboard import read_scalar_steps, read_scalars


def test_scalars_equal_the_jsonl_rows(tracked_run):
    want = expected_points(tracked_run)
    got = read_scalars(tracked_run / "tensorboard")
    assert set(got) == set(want)
    for tag, points in want.items():
        steps = [step for step, _ in got[tag]]
        assert steps == sorted(points), tag
        for step, value in got[tag]:
            assert value == pytest.approx(points[step], rel=1e-6, abs=1e-6), (tag, step)  # event files are float32


def test_every_kind_of_row_is_there(tracked_run):
    tags = set(read_scalars(tracked_run / "tensorboard"))
    for tag in ("train/reward_mean", "train/theta_dist", "train/update_norm", "train/forward_tokens",
                "train/seconds", "train/peak_rss_mb", "eval/curriculum/add/accuracy",
                "eval/curriculum/reverse/accuracy", "eval/eval_only/subtract/accuracy", "eval/stage",
                "drift/add", "drift/subtract", "diag/theta_dist", "diag/kl_to_base/subtract"):
        assert tag in tags, tag
    assert any(tag.startswith("diag/layers/") for tag in tags)  # per-layer distances


def test_no_step_is_written_twice(tracked_run):
    counts = Counter(read_scalar_steps(tracked_run / "tensorboard"))
    assert counts and max(counts.values()) == 1


def test_config_and_final_status(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tracked_run / "tensorboard"))
    accumulator.Reload()
    tensors = accumulator.Tags()["tensors"]
    assert "config/text_summary" in tensors and "status/text_summary" in tensors
    status = accumulator.Tensors("status/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert status == "done"
    assert accumulator.summary_metadata  # the HParams plugin's experiment/session entries
    plugins = {meta.plugin_data.plugin_name for meta in accumulator.summary_metadata.values()}
    assert "hparams" in plugins
