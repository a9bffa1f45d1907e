"""The GRPO baseline: Hugging Face TRL's `GRPOTrainer` (trl==1.16.0, pinned) behind esft's trainer seam.

What runs is TRL's own GRPO, unchanged: per step, `prompts_per_step` prompts from the current task's training
examples (TRL's shuffled RepeatSampler), `num_generations` sampled completions each, esft's own task reward
(`esft.tasks.trl_rewards`, TRL's reward-function signature), group-normalised advantages, TRL's clipped loss
(`loss_type`, default "dapo" = token-mean over the batch, like verl's GRPO in the paper) and, with beta > 0, the
k3 KL estimator to a frozen reference (verl's `low_var_kl`). The reference is the run's initial model theta0.

How it lines up with the ES contract: TRL runs a whole stage in its own loop (`run_stage`), configured so that
one esft step = one TRL optimizer step = one generation batch (gradient_accumulation_steps=1,
steps_per_generation=1, num_iterations=1): the batch is prompts_per_step x num_generations completions and
`max_steps` is the stage's step count. TRL's step counter is stage-local; esft step = stage.first_step - 1 +
global_step. A callback does, after each optimizer step, AWD (decoupled pull toward the anchor, c = lr*lambda)
and, at each step's end, the metrics row (reward stats over the batch's completions, |theta - theta0|,
forward/backward/generated tokens, seconds, peak memory) and the periodic evaluation through the experiment's
hooks. Checkpoints are TRL's own (model, optimizer, scheduler, RNG, sampler position) under
checkpoints/grpo/stage_K/checkpoint-N, saved at the same steps as esft's, and resume goes through
`train(resume_from_checkpoint=...)`. Each stage gets a fresh GRPOTrainer (fresh Adam state) on the same model.

Departures from the paper's verl setup, on purpose: a constant learning rate (verl's default), TRL's sampling
and loss instead of verl's, and the tiny default's learning rate (the paper's 1e-6 is for a 3B model).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from esft.core.accounting import StepTokens, TokenMeter
from esft.core.anchor import Anchor
from esft.core.awd import AWDSection
from esft.errors import EsftError
from esft.policy import Policy, tokens_through_stop
from esft.rl.common import AnchoredTrainerMixin, rollout_metrics
from esft.tasks.base import Task

log = logging.getLogger("esft")

TRL_VERSION = "1.16.0"
_OUTPUT = "grpo"  # TRL's output_dir, inside the run dir's checkpoints/
_REFERENCE = "reference"


def require_trl() -> None:
    """One clear line when the optional dependency is missing (checked before any model is loaded)."""
    if importlib.util.find_spec("trl") is None:
        raise EsftError(f"method=grpo needs Hugging Face TRL: pip install 'esft[grpo]' (trl=={TRL_VERSION})")


class _RewardRecorder:
    """Wraps a TRL reward function to keep the step's rewards and generated-token count for the metrics row.

    With steps_per_generation = 1 TRL scores exactly one generation batch per optimizer step.
    """

    def __init__(self, reward_fn: Callable[..., list[float]], task: Task) -> None:
        self.reward_fn, self.stop = reward_fn, task.stop
        self.__name__ = getattr(reward_fn, "__name__", "reward")
        self.clear()

    def clear(self) -> None:
        self.rewards: list[float] = []
        self.generated = 0

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None = None,
                 **kwargs: Any) -> list[float]:
        if self.stop:  # the reward sees what Policy.generate would return: cut after the first stop string
            from esft.policy import cut_at_stop

            completions = [cut_at_stop(c, self.stop) if isinstance(c, str) else c for c in completions]
        rewards = self.reward_fn(prompts, completions, **kwargs)
        self.rewards.extend(rewards)
        self.generated += sum(len(ids) for ids in completion_ids or [])
        return rewards


def _stopping_trainer(base: type, stop: Sequence[str]) -> type:
    """TRL's trainer with completions ended at the task's stop strings.

    TRL's HF generation path ends a completion only at EOS (`generate(stop_strings=...)` would need the
    tokenizer, which TRL does not pass), so without this the tokens sampled after `</answer>` would be trained
    with the advantage of a reward that never saw them. Cutting the ids here, before TRL builds its masks and
    decodes the texts, makes loss, reward and KL see the same tokens, as a vLLM `stop` would.
    """

    class StoppingGRPOTrainer(base):  # type: ignore[misc, valid-type]
        def _generate_single_turn(self, *args: Any, **kwargs: Any):
            completion_ids, logprobs = super()._generate_single_turn(*args, **kwargs)
            keep = [tokens_through_stop(self.processing_class, ids, stop) for ids in completion_ids]
            completion_ids = [list(ids[:k]) for ids, k in zip(completion_ids, keep)]
            if logprobs is not None:
                logprobs = [list(lp[:k]) for lp, k in zip(logprobs, keep)]
            return completion_ids, logprobs

    return StoppingGRPOTrainer


class GRPOTrainer(AnchoredTrainerMixin):
    """TRL's GRPO over the curriculum, with esft's schedule, accounting and AWD."""

    name = "grpo"

    def __init__(self, policy: Policy, method_cfg: Mapping[str, Any], awd_cfg: AWDSection | Mapping[str, Any],
                 seed: int, keep: int = 2) -> None:
        require_trl()
        self.policy, self.cfg, self.seed, self.keep = policy, dict(method_cfg), int(seed), int(keep)
        awd = awd_cfg if isinstance(awd_cfg, AWDSection) else \
            AWDSection.from_config(awd_cfg, float(method_cfg["learning_rate"]), "method.learning_rate")
        self.awd_kind, self.awd_lambda, self.awd_anchor = awd.kind, awd.lam, awd.anchor
        self.anchor = Anchor(policy.model)
        self.meter = TokenMeter(policy.model)
        self.stage, self.task = -1, None
        self.output_root: Path | None = None

    def set_stage(self, stage: int, task: Task) -> None:
        super().set_stage(stage, task)
        self._prune_finished_stages()

    # -- one stage through TRL -------------------------------------------------------------------------
    def run_stage(self, stage: Any, hooks: Any) -> None:
        """Train `stage` (a curriculum Stage) from `hooks.steps.start` to its last step with TRL."""
        assert self.task is not None and stage.index == self.stage, "set_stage() must be called first"
        self.output_root = Path(hooks.checkpoint_dir) / _OUTPUT
        stage_dir = self.output_root / f"stage_{stage.index}"
        done = hooks.steps.start - stage.first_step  # steps of this stage finished before a resume
        resume = stage_dir / f"checkpoint-{done}" if done > 0 else None
        offset = stage.first_step - 1
        if resume is not None and not resume.is_dir():
            log.warning("no TRL checkpoint %s: continuing stage %d at step %d with a fresh optimizer",
                        resume, stage.index, hooks.steps.start)
            resume, offset = None, hooks.steps.start - 1
        trainer = self._build(stage_dir, len(hooks.steps) + (done if resume else 0), hooks, offset)
        self.policy.model.train()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)
                warnings.filterwarnings("ignore", message=".*pin_memory.*")
                trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:
            self.policy.model.eval()
            self.policy.tokenizer.padding_side = "left"

    def _build(self, stage_dir: Path, max_steps: int, hooks: Any, offset: int):
        from datasets import Dataset
        from transformers import PrinterCallback
        from trl import GRPOTrainer as TRLGRPOTrainer

        from esft.tasks.trl_rewards import trl_reward_fn, trl_rows

        task, model = self.task, self.policy.model
        rows = trl_rows(task, task.train_examples(), conversational=self.policy.use_chat_template)
        self.recorder = _RewardRecorder(trl_reward_fn(task), task)
        args = self._config(stage_dir, max_steps)
        callback = _StageCallback(self, hooks, offset)
        with warnings.catch_warnings(), self._reference_path(model):
            warnings.filterwarnings("ignore", category=FutureWarning)
            trainer_class = _stopping_trainer(TRLGRPOTrainer, task.stop) if task.stop else TRLGRPOTrainer
            trainer = trainer_class(model=model, reward_funcs=self.recorder, args=args,
                                     train_dataset=Dataset.from_list(rows), processing_class=self.policy.tokenizer,
                                     callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # TRL's per-step dicts on stdout; the run dir has the metrics
        if trainer.ref_model is not None:
            self.meter.close()
            self.meter = TokenMeter(model, trainer.ref_model)
        return trainer

    def _config(self, output_dir: Path, max_steps: int):
        from trl import GRPOConfig

        c = self.cfg
        generations, prompts = int(c["num_generations"]), int(c["prompts_per_step"])
        length = c.get("max_completion_length") or self.task.max_new_tokens
        cpu = self.policy.device.type == "cpu"
        return GRPOConfig(
            output_dir=str(output_dir), use_cpu=cpu, bf16=False, fp16=False, activation_checkpointing=False,
            report_to=[], disable_tqdm=True, logging_steps=1, save_strategy="no",
            save_total_limit=self.keep or None, dataloader_num_workers=0, dataloader_pin_memory=not cpu,
            seed=self.seed, max_steps=max_steps,
            per_device_train_batch_size=generations * prompts, gradient_accumulation_steps=1,
            steps_per_generation=1, num_iterations=1, num_generations=generations,
            max_completion_length=int(length), temperature=float(c["temperature"]), top_p=float(c["top_p"]),
            learning_rate=float(c["learning_rate"]), lr_scheduler_type=str(c["lr_scheduler"]),
            warmup_steps=0, weight_decay=0.0, max_grad_norm=float(c["max_grad_norm"]),
            beta=float(c["beta"]), epsilon=float(c["epsilon"]), loss_type=str(c["loss_type"]),
            scale_rewards=str(c["scale_rewards"]), disable_dropout=True, log_completions=False,
        )

    @contextmanager
    def _reference_path(self, model: Any) -> Iterator[None]:
        """TRL builds its reference model from `model.config._name_or_path`. A model loaded from a directory or
        the hub is theta0 there already; an in-memory model (tests) gets theta0 saved under checkpoints/grpo."""
        saved = getattr(model.config, "_name_or_path", "")
        if float(self.cfg["beta"]) > 0 and not saved:
            model.config._name_or_path = str(self._save_reference(model))
        try:
            yield
        finally:
            model.config._name_or_path = saved

    def _save_reference(self, model: Any) -> Path:
        import copy

        path = self.output_root / _REFERENCE
        if not (path / "config.json").exists():
            reference = copy.deepcopy(model)
            for (_, param), value in zip(Anchor(reference).named, self.anchor.theta0):
                param.data.copy_(value.to(param.device, param.dtype))
            reference.save_pretrained(path, safe_serialization=True)
            del reference
        return path

    def _prune_finished_stages(self) -> None:
        """TRL checkpoints of earlier stages are no longer needed once the next stage starts: the experiment's
        stage-end checkpoint holds their final weights, and a new stage starts a fresh GRPOTrainer."""
        if self.output_root is None:
            return
        for old in self.output_root.glob("stage_*"):
            if old.name != f"stage_{self.stage}":
                for checkpoint in old.glob("checkpoint-*"):
                    shutil.rmtree(checkpoint, ignore_errors=True)

    # -- the rest of the seam --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"master": self.anchor.flat()}
        if self.awd_anchor == "stage":
            state["anchor"] = self.anchor.flat(self.anchor.anchor)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor], stage: int) -> None:
        """Weights from esft's checkpoint; optimizer, scheduler and sampler come from TRL's in run_stage."""
        self.anchor.load_flat(state["master"])
        if self.awd_anchor == "stage" and "anchor" in state:
            self.anchor.anchor = self.anchor.unflat(state["anchor"])
        self.stage = stage

    def finalize(self) -> None:
        self.stage = -2  # every stage is finished: drop all TRL checkpoints
        self._prune_finished_stages()
        self.meter.close()
        self.policy.model.eval()


class _StageCallback(TrainerCallback):
    """Runs inside TRL's loop: AWD after each optimizer step, esft's metrics row, evals and checkpoints."""

    def __init__(self, owner: GRPOTrainer, hooks: Any, offset: int) -> None:
        self.owner, self.hooks, self.offset = owner, hooks, offset
        self.pending: int | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.before = self.owner.anchor.snapshot()
        self.owner.recorder.clear()
        self.owner.meter.start()

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        owner = self.owner
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else float(owner.cfg["learning_rate"])
        owner.anchor.pull(owner.awd_kind, lr * owner.awd_lambda)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        owner = self.owner
        forward, backward = owner.meter.stop()
        step = self.offset + state.global_step
        row = rollout_metrics(step, owner.stage, owner.task.name, owner.recorder.rewards, owner.anchor,
                              owner.anchor.moved_since(self.before), time.perf_counter() - self.started,
                              StepTokens(forward, backward, owner.recorder.generated), owner.policy.device,
                              learning_rate=float(args.learning_rate))
        self.before = None
        owner.policy.model.eval()  # the experiment's evaluator expects eval mode
        try:
            self.hooks.step_done(step, row)
        finally:
            owner.policy.model.train()
        if self.hooks.checkpoint_due(step):
            control.should_save = True  # TRL saves its checkpoint first, then on_save writes esft's
            self.pending = step
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.pending is not None:
            self.hooks.checkpoint(self.pending)
            self.pending = None
        return control
