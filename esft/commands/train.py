"""The ten-line bridge between the CLI and Hydra (lightning-hydra-template style).

`run_hydra` hands the raw arguments to `hydra.main`; `train_job` is what Hydra runs for each job. A user error
(EsftError) becomes one line on stderr, a failed status.json and exit code 2; in a multirun the failed job is
recorded and the sweep continues, and so does a job that crashed with any other exception (a multirun job's
failure must not take its siblings down; its status.json and log say what happened). Under torchrun,
`prepare_args` first makes all ranks agree on one run dir (esft/distributed/torchrun.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from esft.errors import EsftError
from esft.resources import conf_dir

log = logging.getLogger("esft")


_FAILED_JOBS: list[str] = []  # run dirs of sweep jobs that failed; the sweep goes on, the exit code says so


def train_job(cfg: DictConfig) -> None:
    from esft.distributed.torchrun import make_experiment
    from esft.run.threads import configure_threads, launcher_parallelism
    from esft.tracking import job_from_hydra

    hydra_cfg = HydraConfig.get()
    configure_threads(launcher_parallelism(hydra_cfg))  # before any model exists: see esft/run/threads.py
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        job = job_from_hydra(hydra_cfg)  # tracker group/run name from the sweep (esft/tracking)
        make_experiment(cfg, run_dir, job).run_all()
        log.info("run dir: %s", run_dir)
    except EsftError as exc:
        print(f"esft: error: {exc}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        _FAILED_JOBS.append(str(run_dir))
    except Exception as exc:  # a bug or a crash in one sweep point: status.json says failed, the sweep goes on
        if not multirun:
            raise
        log.exception("job failed: %s", run_dir)
        print(f"esft: job {run_dir} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        _FAILED_JOBS.append(str(run_dir))


def run_hydra(args: list[str]) -> None:
    from transformers.utils import logging as hf_logging

    from esft.commands.preflight import check_train_args
    from esft.distributed.torchrun import prepare_args
    from esft.storage.locks import refuse_busy_run_dir

    try:
        args = prepare_args(args)  # torchrun: join the process group, agree on one run dir
    except EsftError as exc:
        print(f"esft: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if not any(flag in args for flag in ("--hydra-help", "--help", "-h")):
        try:
            check_train_args(args, conf_dir())
            refuse_busy_run_dir(args)
        except EsftError as exc:
            print(f"esft: error: {exc}", file=sys.stderr)
            sys.exit(2)

    hf_logging.disable_progress_bar()  # save_pretrained's shard bar would clutter logs and the live display
    sys.argv = [sys.argv[0], *args]
    from esft.distributed.process_group import shutdown

    try:
        hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")(train_job)()
    except BaseException:
        shutdown()
        raise
    shutdown(sync=True)
    if _FAILED_JOBS:  # every other job ran; a scripted sweep must still notice the failures
        print(f"esft: {len(_FAILED_JOBS)} sweep job(s) failed (see their status.json): {', '.join(_FAILED_JOBS)}",
              file=sys.stderr)
        sys.exit(1)
