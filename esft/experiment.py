"""The curriculum runner: stages, evaluation schedule, checkpoints, resume. Reads top to bottom.

    setup      build the policy, the stages and the trainer; resume from the newest checkpoint if any
    train      for each stage: score every task at its start, step, score every `eval.every` steps and at
               its end, checkpoint every `checkpoint.every` steps and at its end
    finish     save the final model (save_pretrained + tokenizer), mark the run done

Everything goes to the run dir (esft/rundir.py); nothing exists only on screen.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from esft.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from esft.curriculum import Stage, build_eval_tasks, build_stages
from esft.diagnostics import build_off_task_kl
from esft.errors import EsftError
from esft.evaluation import Evaluator
from esft.faults import fault_point
from esft.policy import Policy
from esft.progress import RunDisplay
from esft.rundir import (
    DIAGNOSTICS_FILE,
    EVALS_FILE,
    FINAL_MODEL_DIR,
    METRICS_FILE,
    REPLAY_FILE,
    RUN_INFO_FILE,
    RunDir,
    read_json,
    repair_jsonl,
    write_json_atomic,
)
from esft.trainers import build_trainer, validate_method_config

log = logging.getLogger("esft")

# Keys that may change between a run and its resumption without changing what it computes.
_VOLATILE_KEYS = ("progress", "checkpoint", "hydra", "distributed")  # distributed: same weights on any world size
_LOGS = (METRICS_FILE, EVALS_FILE, DIAGNOSTICS_FILE, REPLAY_FILE)


def config_fingerprint(cfg: dict[str, Any]) -> str:
    stable = {k: v for k, v in cfg.items() if k not in _VOLATILE_KEYS}
    stable.get("model", {}).pop("cache_dir", None)
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageHooks:
    """The schedule of one stage, for the ES loop and for trainers that run a stage in their own loop
    (`run_stage(stage, hooks)`, e.g. TRL's GRPOTrainer): after each optimizer step they call `step_done`, and
    when `checkpoint_due` says so they save their own state and then call `checkpoint`. So steps, metrics
    rows, periodic evaluations and checkpoints line up whatever runs the loop; the stage's last step gets
    neither (the experiment's stage_end evaluation and checkpoint follow)."""

    def __init__(self, experiment: "Experiment", stage: Stage) -> None:
        self.experiment, self.stage = experiment, stage
        self.steps = range(max(stage.first_step, experiment.start_step + 1), stage.last_step + 1)
        self.checkpoint_dir = experiment.run.checkpoints

    def step_done(self, step: int, metrics: dict[str, Any]) -> None:
        """Write the step's metrics row, show it, and score every task when `eval.every` divides the step."""
        exp = self.experiment
        metrics["wall_time"] = round(time.time() - exp.started, 3)
        exp.writers[METRICS_FILE].write(metrics)
        exp.display.step(metrics)
        if step != self.stage.last_step and exp.every and step % exp.every == 0:
            exp._evaluate(step, self.stage.index, "periodic")

    def checkpoint_due(self, step: int) -> bool:
        every = self.experiment.checkpoint_every
        return step != self.stage.last_step and bool(every) and step % every == 0

    def checkpoint(self, step: int) -> None:
        self.experiment.run.set_status("running", step=step, stage=self.stage.index)
        self.experiment._checkpoint(step, self.stage.index)


class Experiment:
    """One run of a curriculum into one run dir."""

    def __init__(self, cfg: DictConfig | dict, run_dir: Path | str) -> None:
        self.cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        self.run = RunDir(run_dir)
        self.method = str((self.cfg.get("method") or {}).get("name", "es"))
        self.every = int(self.cfg.get("eval", {}).get("every", 25) or 0)
        self.checkpoint_every = int(self.cfg.get("checkpoint", {}).get("every", 50) or 0)
        self.keep = int(self.cfg.get("checkpoint", {}).get("keep", 2) or 0)

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        validate_method_config(self.method, self.cfg)
        self.stages: list[Stage] = build_stages(self.cfg)
        self.tasks, self.roles = build_eval_tasks(self.cfg, self.stages)
        self.policy = Policy.from_config(self.cfg["model"], policy_cfg=self.cfg.get("policy"))
        eval_cfg = self.cfg.get("eval", {})
        self.evaluator = Evaluator(self.policy, self.tasks, self.roles, int(eval_cfg.get("batch_size", 256)),
                                   eval_cfg.get("size"))
        self.trainer = build_trainer(self.method, self.policy, self.cfg,
                                     lambda row: self.writers[REPLAY_FILE].write(row))
        self.off_task_kl = build_off_task_kl(self.policy, self.cfg, self.tasks, self.roles, self.trainer)
        self.start_step = self._resume()  # repairs the logs before they are reopened for appending
        self.writers = {name: self.run.writer(name) for name in _LOGS}
        self._write_run_info()

    def _write_run_info(self) -> None:
        write_json_atomic(self.run.path(RUN_INFO_FILE), {
            "stages": [s.describe(self.method) for s in self.stages],
            "curriculum_tasks": [s.task.name for s in self.stages],
            "eval_tasks": [n for n, role in self.roles.items() if role == "eval_only"],
            "num_parameters": self.trainer.num_parameters, "method": self.method,
            "seed": self.cfg.get("seed"), "config_fingerprint": config_fingerprint(self.cfg),
        })

    def _resume(self) -> int:
        """Continue after the newest checkpoint: reload weights, drop log rows written after it."""
        info_path = self.run.path(RUN_INFO_FILE)
        checkpoint = latest_checkpoint(self.run.checkpoints)
        if checkpoint is None:
            self._repair_logs(keep=lambda row: False)  # killed before its first checkpoint: start over cleanly
            return 0
        if info_path.exists() and read_json(info_path).get("config_fingerprint") != config_fingerprint(self.cfg):
            raise EsftError(f"run dir {self.run.root} was made by a different config; "
                            "resume with the same overrides or choose a new hydra.run.dir")
        tensors, state = load_checkpoint(checkpoint)
        step, stage = int(state["step"]), int(state["stage"])
        self.trainer.load_state_dict(tensors, stage)
        done = lambda row: row.get("step", 0) < step or (row.get("step") == step and row.get("stage", 0) <= stage)
        self._repair_logs(keep=done)
        log.info("resuming %s from checkpoint at step %d", self.run.root, step)
        return step

    def _repair_logs(self, keep) -> None:
        """Drop log rows that `keep` rejects (rows after the resumed checkpoint); torchrun followers skip it."""
        for name in _LOGS:
            repair_jsonl(self.run.path(name), keep=keep)

    # -- train -----------------------------------------------------------------------------------------
    def train(self) -> None:
        total = self.stages[-1].last_step
        log_every = int(self.cfg.get("progress", {}).get("log_every", 10))
        with RunDisplay(total, len(self.stages), log_every) as display:
            self.display = display
            for stage in self.stages:
                if stage.last_step <= self.start_step and stage.steps > 0:
                    continue
                self._train_stage(stage)

    def _train_stage(self, stage: Stage) -> None:
        self.trainer.set_stage(stage.index, stage.task)
        self.display.stage(stage.index, stage.task.name, max(self.start_step, stage.first_step - 1))
        if self.start_step < stage.first_step:
            self._evaluate(stage.first_step - 1, stage.index, "stage_start")
        hooks = StageHooks(self, stage)
        if hasattr(self.trainer, "run_stage"):  # a trainer with its own loop (TRL's GRPO) calls back into the schedule
            self.trainer.run_stage(stage, hooks)
        else:
            for step in hooks.steps:
                self.run.set_status("running", step=step - 1, stage=stage.index)
                metrics = self.trainer.step(step)
                fault_point("step_done", step)
                hooks.step_done(step, metrics)
                if hooks.checkpoint_due(step):
                    hooks.checkpoint(step)
        self._evaluate(stage.last_step, stage.index, "stage_end")
        self._checkpoint(stage.last_step, stage.index)

    def _evaluate(self, step: int, stage: int, event: str) -> None:
        rows = self.evaluator.evaluate()
        for row in rows:
            self.writers[EVALS_FILE].write({"step": step, "stage": stage, "stage_task": self.stages[stage].task.name,
                                            "event": event, **row})
        eval_cfg = self.cfg.get("eval", {})
        diagnostics = self.trainer.diagnostics(bool(eval_cfg.get("layer_distances", True)))
        if self.off_task_kl is not None:
            diagnostics["kl_to_base"] = self.off_task_kl.measure(self.trainer.reference_weights)
        self.writers[DIAGNOSTICS_FILE].write({"step": step, "stage": stage, "event": event, **diagnostics})
        self.display.evals(step, event, rows)

    def _checkpoint(self, step: int, stage: int) -> None:
        save_checkpoint(self.run.checkpoints, step, self.trainer.state_dict(),
                        {"stage": stage, "method": self.method}, keep=self.keep)

    # -- finish ----------------------------------------------------------------------------------------
    def finish(self) -> None:
        self.trainer.finalize()
        target = self.run.path(FINAL_MODEL_DIR)
        self.policy.model.save_pretrained(target, safe_serialization=True)
        self.policy.tokenizer.save_pretrained(target)
        self.run.set_status("done", step=self.stages[-1].last_step, stage=len(self.stages) - 1, message="")

    def close(self) -> None:
        for writer in getattr(self, "writers", {}).values():
            writer.close()

    def _mark_failed(self, message: str) -> None:
        try:
            self.run.set_status("failed", message=message)
        except OSError:  # e.g. the disk is still full: the error itself reaches the user anyway
            log.error("could not record the failure in status.json")

    def run_all(self) -> Path:
        """setup -> train -> finish; a finished run dir is left untouched."""
        status = self.run.status() or {}
        if status.get("state") == "done" and self.run.path(FINAL_MODEL_DIR).exists():
            log.info("run %s is already done; nothing to do", self.run.root)
            return self.run.root
        self.started = time.time()
        self.run.set_status("running", step=0, stage=0, message="")
        try:
            self.setup()
            self.train()
            self.finish()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                self._mark_failed(f"{type(exc).__name__}: {exc}")
                raise
            latest = latest_checkpoint(self.run.checkpoints) if self.run.checkpoints.exists() else None
            message = (f"disk full while writing {exc.filename or 'the run dir'}; the last complete checkpoint is "
                       f"{latest.name if latest else 'none'}; free space, then `esft train --resume {self.run.root}`")
            self._mark_failed(message)
            raise EsftError(message) from None
        except BaseException as exc:
            message = str(exc) if isinstance(exc, EsftError) else f"{type(exc).__name__}: {exc}"
            self._mark_failed("interrupted" if isinstance(exc, KeyboardInterrupt) else message)
            raise
        finally:
            self.close()
        return self.run.root
