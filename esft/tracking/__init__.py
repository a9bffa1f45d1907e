"""Experiment tracking: the run dir's JSONL record plus TensorBoard, Weights & Biases and MLflow.

    base.py         the MetricLogger protocol and the row -> scalar-tag mapping all trackers share
    jsonl.py        the run dir's JSONL files (always on)
    scalar.py       the shared part of the scalar trackers (each (tag, step) sent once; resume)
    tensorboard.py  wandb.py  mlflow.py   one tracker each (optional extras esft[tensorboard|wandb|mlflow])
    fanout.py       the one logger the experiment calls: record + trackers, failures dropped with a warning
    registry.py     the `logger` config group: which trackers, and a one-line error for a missing extra
    context.py      sweep group / run name from Hydra; tracker run ids saved in trackers.json for resume
    publish.py      `esft drift-report --to ...`: a finished report's tables and plots to a tracker
"""

from esft.tracking.base import MetricLogger
from esft.tracking.context import JobInfo, job_from_hydra
from esft.tracking.fanout import MetricFanOut, open_loggers
from esft.tracking.jsonl import JsonlLogger
from esft.tracking.registry import check_trackers

__all__ = ["JobInfo", "JsonlLogger", "MetricFanOut", "MetricLogger", "check_trackers", "job_from_hydra",
           "open_loggers"]
