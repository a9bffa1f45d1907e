"""The curriculum runner: stages, evaluation schedule, checkpoints, resume. Reads top to bottom.

    setup      build the policy, the stages and the trainer; resume from the newest checkpoint if any
    train      for each stage: score every task at its start, step, score every `eval.every` steps and at
               its end, checkpoint every `checkpoint.every` steps and at its end
    finish     save the final model (save_pretrained + tokenizer), mark the run done

Everything goes to the run dir (esft/storage/rundir.py); nothing exists only on screen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from esft.core.progress import RunDisplay
from esft.core.trainer import Trainer
from esft.errors import EsftError
from esft.evaluation.evaluator import Evaluator
from esft.evaluation.off_task_kl import build_off_task_kl
from esft.models.loading import load_policy
from esft.run.curriculum import Stage, build_eval_tasks, build_stages
from esft.run.methods import build_trainer
from esft.run.role import SINGLE, RunRole
from esft.run.settings import RunSettings, check_population_memory
from esft.storage.checkpoint import checkpoint_dirs, find_resumable, latest_checkpoint, save_checkpoint
from esft.storage.faults import fault_point, write_failure
from esft.storage.locks import FileLock
from esft.storage.rundir import (
    DIAGNOSTICS_FILE,
    EVALS_FILE,
    FINAL_MODEL_DIR,
    LOCK_FILE,
    METRICS_FILE,
    REPLAY_FILE,
    RUN_INFO_FILE,
    ReadOnlyRunDir,
    RunDir,
    read_json,
    repair_jsonl,
    write_json_atomic,
)
from esft.tracking import JsonlLogger, open_loggers
from esft.tracking.context import JobInfo

log = logging.getLogger("esft")

# Keys that may change between a run and its resumption without changing what it computes.
# distributed: same weights on any world size; logger: trackers may be added or dropped when resuming
_VOLATILE_KEYS = ("progress", "checkpoint", "hydra", "distributed", "logger")
_LOGS = (METRICS_FILE, EVALS_FILE, DIAGNOSTICS_FILE, REPLAY_FILE)


def _count(value: Any, key: str) -> int:
    """A log row's step or stage as an int; a row without a usable one cannot be placed, so it is refused."""
    if type(value) is int and value >= 0:
        return value
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    raise ValueError(f"{key} is {value!r}")


def _position(row: dict[str, Any]) -> tuple[int, int]:
    """(step, stage) of a log row; stage defaults to 0 as in single-stage rows of older runs."""
    return _count(row.get("step"), "step"), _count(row.get("stage", 0), "stage")


def config_fingerprint(cfg: dict[str, Any]) -> str:
    stable = {k: v for k, v in cfg.items() if k not in _VOLATILE_KEYS}
    if isinstance(stable.get("model"), dict):  # where the warm-up is cached is not what the run computes
        stable["model"] = {k: v for k, v in stable["model"].items() if k != "cache_dir"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageSchedule:
    """The schedule of one stage, as the trainer sees it (esft.core.trainer.StageCallbacks): after each step (or
    optimizer step, for a trainer that runs its library's loop) the trainer calls `step_done`, and when
    `checkpoint_due` says so it saves its own state and then calls `checkpoint`. So steps, metrics rows,
    periodic evaluations and checkpoints line up whatever runs the loop; the stage's last step gets neither
    (the experiment's stage_end evaluation and checkpoint follow)."""

    def __init__(self, experiment: "Experiment", stage: Stage) -> None:
        self.experiment, self.stage = experiment, stage
        self.steps = range(max(stage.first_step, experiment.start_step + 1), stage.last_step + 1)
        self.checkpoint_dir = experiment.run.checkpoints

    def step_started(self, step: int) -> None:
        self.experiment.run.set_status("running", step=step - 1, stage=self.stage.index)

    def step_done(self, step: int, metrics: dict[str, Any]) -> None:
        """Write the step's metrics row, show it, and score every task when `eval.every` divides the step."""
        fault_point("step_done", step)
        exp = self.experiment
        metrics["wall_time"] = round(time.time() - exp.started, 3)
        exp.logger.log_metrics(metrics)  # metrics.jsonl + trackers (esft/tracking)
        exp.display.step(metrics)
        if step != self.stage.last_step and exp.every and step % exp.every == 0:
            exp.evaluate(step, self.stage.index, "periodic")

    def checkpoint_due(self, step: int) -> bool:
        every = self.experiment.checkpoint_every
        return step != self.stage.last_step and bool(every) and step % every == 0

    def checkpoint(self, step: int) -> None:
        self.experiment.run.set_status("running", step=step, stage=self.stage.index)
        self.experiment.checkpoint(step, self.stage.index)


class Experiment:
    """One run of a curriculum into one run dir."""

    def __init__(self, cfg: DictConfig | dict, run_dir: Path | str, role: RunRole = SINGLE,
                 job: JobInfo | None = None) -> None:
        """`role`: what this process does for the run (esft/run/role.py; torchrun ranks get theirs from
        esft/distributed/torchrun.py). A role that does not write reads the run dir but never changes it.
        `job`: the sweep group and run name the trackers use (None: a single run)."""
        self.cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        self.role, self.job = role, job
        self.run = RunDir(run_dir) if role.writes else ReadOnlyRunDir(run_dir)

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        self.settings = settings = RunSettings.from_config(self.cfg)  # every value checked once, here
        self.method = settings.method.name
        self.every, self.checkpoint_every = settings.eval.every, settings.checkpoint.every
        self.stages: list[Stage] = build_stages(self.cfg)
        self.tasks, self.roles = build_eval_tasks(self.cfg, self.stages)
        self.policy = load_policy(self.cfg["model"], policy_cfg=self.cfg.get("policy"))
        if self.settings.es is not None:  # a hub model's size is known only now: can its population fit?
            check_population_memory(self.settings.es, self.policy.model.num_parameters(), str(self.policy.device))
        ev = settings.eval
        self.evaluator = Evaluator(self.policy, self.tasks, self.roles, ev.batch_size, ev.size, ev.scoring,
                                   ev.loglik_metric, ev.loglik_batch_size)
        self.trainer: Trainer = build_trainer(self.settings, self.policy,
                                              lambda row: self.writers[REPLAY_FILE].write(row))
        self.role.prepare(self.trainer, self.method)
        self.off_task_kl = build_off_task_kl(self.policy, settings.eval.kl, self.tasks, self.roles)
        self.start_step = self._resume()  # repairs the logs before they are reopened for appending
        self.writers = {name: self.run.writer(name) for name in _LOGS}
        self.logger = open_loggers(self.cfg, self.run, JsonlLogger(self.writers), self.job,
                                   main_process=self.role.writes)
        if self.role.writes:
            self._write_run_info()

    def _write_run_info(self) -> None:
        write_json_atomic(self.run.path(RUN_INFO_FILE), {
            "stages": [s.describe(self.method) for s in self.stages],
            "curriculum_tasks": [s.task.name for s in self.stages],
            "eval_tasks": [n for n, role in self.roles.items() if role == "eval_only"],
            "num_parameters": self.trainer.num_parameters, "method": self.method,
            "seed": self.settings.seed, "config_fingerprint": config_fingerprint(self.cfg),
        })

    def _resume(self) -> int:
        """Continue after the newest complete checkpoint: reload weights, drop log rows written after it.

        `find_resumable` verifies the checkpoint it returns and falls back past corrupt ones by itself (moving
        them aside); only when no complete checkpoint exists does the run start over, with a warning if there
        were broken ones. Torchrun followers make the same choice read-only (rank 0 alone repairs).
        """
        info_path = self.run.path(RUN_INFO_FILE)
        if checkpoint_dirs(self.run.checkpoints) and info_path.exists():
            try:
                fingerprint = read_json(info_path).get("config_fingerprint")
            except (OSError, ValueError, AttributeError):
                fingerprint = None  # an unreadable run.json is rewritten by setup; the checkpoints decide
            if fingerprint is not None and fingerprint != config_fingerprint(self.cfg):
                raise EsftError(f"run dir {self.run.root} was made by a different config; "
                                "resume with the same overrides or choose a new hydra.run.dir")
        found = find_resumable(self.run.checkpoints, self.trainer.num_parameters,
                               repair=self.role.writes, warn=log.warning)
        if found is None:
            self.resumed_from = 0
            self._repair_logs(keep=lambda row: False)  # killed before its first checkpoint: start over cleanly
            return 0
        step, stage = found.step, found.stage
        self.trainer.load_state_dict(found.tensors, stage)
        del found  # the checkpoint's tensors are copied into the trainer: free them before training

        def done(row: dict[str, Any]) -> bool:
            row_step, row_stage = _position(row)
            return row_step < step or (row_step == step and row_stage <= stage)

        self.resumed_from = step
        self._repair_logs(keep=done)
        log.info("resuming %s from checkpoint at step %d", self.run.root, step)
        return step

    def _repair_logs(self, keep) -> None:
        """Drop log rows that `keep` rejects (rows after the resumed checkpoint) and unusable lines, nothing
        else; torchrun followers leave that to the leader."""
        if not self.role.writes:
            return
        for index, name in enumerate(_LOGS):
            repair_jsonl(self.run.path(name), keep=keep, warn=log.warning)
            if index == 0:
                fault_point("resume_repair", self.resumed_from)

    # -- train -----------------------------------------------------------------------------------------
    def train(self) -> None:
        total = self.stages[-1].last_step
        log_every = self.settings.progress.log_every
        with contextlib.ExitStack() as stack:
            if not self.role.writes:  # a torchrun follower shows no second progress bar
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            self.display = stack.enter_context(RunDisplay(total, len(self.stages), log_every))
            for stage in self.stages:
                if stage.last_step <= self.start_step and stage.steps > 0:
                    continue
                self._train_stage(stage)

    def _train_stage(self, stage: Stage) -> None:
        self.trainer.set_stage(stage.index, stage.task)
        self.display.stage(stage.index, stage.task.name, max(self.start_step, stage.first_step - 1))
        if self.start_step < stage.first_step:
            self.evaluate(stage.first_step - 1, stage.index, "stage_start")
        self.trainer.run_stage(stage, StageSchedule(self, stage))
        self.evaluate(stage.last_step, stage.index, "stage_end")
        self.checkpoint(stage.last_step, stage.index)

    def evaluate(self, step: int, stage: int, event: str) -> None:
        """Score every task and write evals.jsonl and diagnostics.jsonl rows (not on a torchrun follower:
        scoring does not change the weights, and the leader writes the scores)."""
        if not self.role.writes:
            return
        rows = self.evaluator.evaluate()
        self.logger.log_evals([{"step": step, "stage": stage, "stage_task": self.stages[stage].task.name,
                                "event": event, **row} for row in rows])
        diagnostics = self.trainer.diagnostics(self.settings.eval.layer_distances)
        if self.off_task_kl is not None:
            diagnostics["kl_to_base"] = self.off_task_kl.measure(self.trainer.reference_weights)
        self.logger.log_diagnostics({"step": step, "stage": stage, "event": event, **diagnostics})
        self.display.evals(step, event, rows)

    def checkpoint(self, step: int, stage: int) -> None:
        """Save the trainer's state as the checkpoint of `step` (the leader alone writes checkpoints)."""
        if not self.role.writes:
            return
        save_checkpoint(self.run.checkpoints, step, self.trainer.state_dict(),
                        {"stage": stage, "method": self.method}, keep=self.settings.checkpoint.keep)

    # -- finish ----------------------------------------------------------------------------------------
    def finish(self) -> None:
        self.role.verify(self.trainer)
        self.trainer.finalize()
        if not self.role.writes:
            return
        target = self.run.path(FINAL_MODEL_DIR)
        self.policy.model.save_pretrained(target, safe_serialization=True)
        self.policy.tokenizer.save_pretrained(target)
        self.run.set_status("done", step=self.stages[-1].last_step, stage=len(self.stages) - 1, message="")

    def close(self) -> None:
        if getattr(self, "logger", None) is not None:  # trackers get the final state status.json now holds
            self.logger.close(str((self.run.status() or {}).get("state", "failed")))
        for writer in getattr(self, "writers", {}).values():
            writer.close()

    def _mark_failed(self, message: str) -> bool:
        """Record the failure in status.json; False when even that cannot be written (full or read-only disk),
        in which case the caller's one-line error on stderr is the only record."""
        try:
            self.run.set_status("failed", message=message)
            return True
        except OSError as exc:
            log.error("could not record the failure in status.json (%s)", exc.strerror or exc)
            return False

    def _lock_run_dir(self) -> FileLock | None:
        """Hold `run.lock` for the whole run, so a second `esft train` on this dir refuses instead of
        interleaving its rows with ours. flock dies with its process, so a kill -9 never leaves it stale.
        Torchrun followers take no lock: rank 0 holds it for all of them."""
        if not self.role.writes:
            return None
        lock = FileLock(self.run.path(LOCK_FILE))
        try:
            acquired = lock.try_acquire()
        except OSError as exc:
            raise EsftError(self._write_failure_message(exc) or
                            f"cannot lock the run dir {self.run.root}: {exc.strerror or exc}") from None
        if not acquired:
            raise EsftError(f"run dir {self.run.root} is in use by {lock.holder()} (another `esft train` on the "
                            "same dir); wait for it to finish or choose another hydra.run.dir")
        return lock

    def _write_failure_message(self, exc: BaseException) -> str | None:
        """One line for a full disk or an unwritable run dir (whatever library raised it); None for anything
        else. Both keep the last complete checkpoint, so the fix is to repair the disk and resume."""
        failure = write_failure(exc)
        if failure is None:
            return None
        kind, filename = failure
        try:
            latest = latest_checkpoint(self.run.checkpoints)
        except OSError:
            latest = None
        resume = f"the last complete checkpoint is {latest.name if latest else 'none'}; "
        if kind == "disk_full":
            return (f"disk full while writing {filename or 'the run dir'}; {resume}"
                    f"free space, then `esft train --resume {self.run.root}`")
        reason = getattr(exc, "strerror", None) or "read-only or permission denied"
        inside = filename is None or Path(filename).resolve().is_relative_to(self.run.root.resolve())
        return (f"cannot write {filename or f'to the run dir {self.run.root}'} ({reason}); {resume}"
                f"make {'the run dir' if inside else 'it'} writable, then `esft train --resume {self.run.root}`")

    def run_all(self) -> Path:
        """setup -> train -> finish under the run dir's lock; a finished run dir is left untouched.

        Every ending leaves status.json saying what happened: done, or failed with the one-line message the
        user also sees (a full disk and an unwritable run dir included, though safetensors and torch report
        them as their own exception types), or, when status.json itself cannot be written, that line on stderr.
        """
        lock = self._lock_run_dir()
        try:
            return self._run_locked()
        finally:
            if lock is not None:
                lock.release()

    def _run_locked(self) -> Path:
        status = self.run.status() or {}
        if status.get("state") == "done" and self.run.path(FINAL_MODEL_DIR).exists():
            log.info("run %s is already done; nothing to do", self.run.root)
            return self.run.root
        self.started = time.time()
        try:
            self.run.set_status("running", step=0, stage=0, message="")
            self.setup()
            self.train()
            self.finish()
        except BaseException as exc:
            plain = isinstance(exc, (EsftError, KeyboardInterrupt, SystemExit))
            message = None if plain else self._write_failure_message(exc)
            if message is not None:
                if not self._mark_failed(message):
                    message += " (status.json could not be updated either)"
                raise EsftError(message) from None
            message = str(exc) if isinstance(exc, EsftError) else f"{type(exc).__name__}: {exc}"
            self._mark_failed("interrupted" if isinstance(exc, KeyboardInterrupt) else message)
            raise
        finally:
            try:
                self.close()
            except OSError:  # flushing a writer on a full disk: the error above already says so
                pass
        return self.run.root
