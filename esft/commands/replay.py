"""`esft replay RUN_DIR --step K --out DIR`: the weights at any step, rebuilt from theta0 and the replay log.

ES checkpoints are expensive for large models and drift is studied at steps nobody checkpointed; the replay
log (es_updates.jsonl) holds every step's seeds, coefficients and AWD settings, so theta0 plus the log
determine every intermediate model. The rebuilt weights are checked against a saved checkpoint of the same
step when one exists (they must be equal bit for bit).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers.utils import logging as hf_logging

from esft.errors import EsftError
from esft.es.params import FlatParams
from esft.es.update import replay
from esft.models.loading import load_policy
from esft.storage.checkpoint import checkpoint_name, load_checkpoint
from esft.storage.rundir import CHECKPOINTS_DIR, HYDRA_CONFIG, REPLAY_FILE, RUN_INFO_FILE, read_json, read_jsonl


def _load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    config_path, log_path = run_dir / HYDRA_CONFIG, run_dir / REPLAY_FILE
    if not config_path.exists():
        raise EsftError(f"{run_dir} is not an esft run dir (no {HYDRA_CONFIG})")
    if not log_path.exists():
        raise EsftError(f"{run_dir} has no replay log ({REPLAY_FILE}); only ES runs can be replayed")
    try:
        rows = read_jsonl(log_path)
    except ValueError as exc:
        raise EsftError(f"{exc}; repair or truncate the file to replay") from None
    return OmegaConf.to_container(OmegaConf.load(config_path), resolve=True), rows


def replay_run(run_dir: Path, step: int, out: Path) -> str:
    cfg, rows = _load_run(run_dir)
    logged = {int(r["step"]) for r in rows}
    if step < 0 or (step > 0 and step not in logged):
        last = max(logged) if logged else 0
        raise EsftError(f"step {step} is not in the replay log of {run_dir} (steps 1..{last})")
    policy = load_policy(cfg["model"])
    params = FlatParams(policy.model)
    info_path = run_dir / RUN_INFO_FILE
    if info_path.exists() and read_json(info_path).get("num_parameters") not in (None, params.numel):
        raise EsftError(f"the model built from {run_dir}'s config has {params.numel} parameters, the run had "
                        f"{read_json(info_path)['num_parameters']}; is model.cache_dir or the model id different?")
    theta = replay(params.theta0, rows, until_step=step, shapes=params.shapes)
    params.master.copy_(theta)
    params.restore()
    params.release_model()
    hf_logging.disable_progress_bar()  # the command prints one line; a shard bar for one file is noise
    policy.model.save_pretrained(out, safe_serialization=True)
    policy.tokenizer.save_pretrained(out)
    return f"wrote the weights after step {step} to {out}" + _compare_with_checkpoint(run_dir, step, theta)


def _compare_with_checkpoint(run_dir: Path, step: int, theta: torch.Tensor) -> str:
    path = run_dir / CHECKPOINTS_DIR / checkpoint_name(step)
    if not path.is_dir():
        return " (no checkpoint at this step to compare with)"
    tensors, _ = load_checkpoint(path)
    if torch.equal(tensors["master"], theta.cpu()):
        return f" (bit-identical to {path.name})"
    raise EsftError(f"replayed weights differ from checkpoint {path} (max |diff| "
                    f"{float((tensors['master'] - theta.cpu()).abs().max()):.3g}); the replay log may be from "
                    "another code version or device")
