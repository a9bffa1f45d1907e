"""Supervised warm-up of the built-in tiny model, cached on disk by a hash of its config.

Why a warm-up at all: ES fine-tunes *pretrained* models, and on a from-scratch model it only selects between
behaviours that already exist (full-parameter ES on a 0.56M model barely learns new computation). The warm-up
plays the role of pretraining: it trains the `model.tiny.warmup.mix` of arithmetic tasks with conflicting labels (add vs
add_reversed, reverse vs copy), so each ES task starts competent-but-ambiguous, and subtraction cleanly.

Training is plain teacher-forced SFT with the loss on the 3 answer tokens only (the prompt is given, never
predicted), its softmax taken over the tokens the tasks use rather than all 258 (why: `_alphabet`). Every
prompt is 6 tokens and every answer 3, so a batch is one (B, 9) id tensor: no padding, no
masks. Each batch row draws its task from the mix and then a random TRAIN pair, from a generator seeded by
`warmup.seed`; initialisation uses `model.tiny.init_seed`. AdamW with linear warm-up then cosine decay to 0
and gradient clipping, the recipe the research probes measured (800 steps, batch 256: about 45 s on 2 cores).

The warmed-up weights are cached under `cache_dir/tiny/<sha256(config)[:16]>` so every later run (and every
job of a sweep) starts from the identical checkpoint in about a second. Bump `WARMUP_VERSION` whenever this
file changes what a given config trains, so stale caches are never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_cosine_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging

from esft.core.progress import progress_bar
from esft.errors import EsftError
from esft.models.tiny import build_model, build_tokenizer
from esft.storage.rundir import remove_stale_temporaries
from esft.tasks.base import Example
from esft.tasks.registry import build_task

#: bump when the warm-up (data, loss, schedule, tokenizer, init) changes for an unchanged config
WARMUP_VERSION = 2
#: the tasks whose held-out accuracy the warm-up reports (the default curriculum's A, B and eval-only task)
REPORTED_TASKS = ("add", "reverse", "subtract")
PROMPT_LEN, ANSWER_LEN = 6, 3
MARKER = "warmup.json"
WEIGHTS = "model.safetensors"
Log = Callable[[str], None]


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Ids without special tokens; straight from the Rust backend when there is one (7x faster for 45k texts)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def encode_examples(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]) -> torch.Tensor:
    """(n, 9) ids of prompt + answer; asserts the 6 + 3 token shape the whole module relies on."""
    prompts = _encode(tokenizer, [e.prompt for e in examples])
    answers = _encode(tokenizer, [e.answer for e in examples])
    bad = [e for e, p, a in zip(examples, prompts, answers) if (len(p), len(a)) != (PROMPT_LEN, ANSWER_LEN)]
    assert not bad, f"expected {PROMPT_LEN}-token prompts and {ANSWER_LEN}-token answers, got {bad[0]}"
    return torch.tensor([p + a for p, a in zip(prompts, answers)], dtype=torch.long)


def answer_logits(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    """Logits that predict the answer tokens of (n, 9) prompt+answer ids, one teacher-forced forward: (n, 3, V)."""
    logits = model(input_ids=ids[:, :-1], use_cache=False).logits
    return logits[:, PROMPT_LEN - 1 :]


@torch.no_grad()
def exact_match(model: PreTrainedModel, ids: torch.Tensor, batch_size: int = 1000) -> float:
    """Greedy exact-match rate without generating: the greedy answer equals the target iff the argmax at every
    answer position (given the true prefix) is the target token."""
    was_training = model.training
    model.eval()
    hits = 0
    for chunk in ids.split(batch_size):
        hits += int((answer_logits(model, chunk).argmax(-1) == chunk[:, PROMPT_LEN:]).all(-1).sum())
    model.train(was_training)
    return hits / len(ids)


def _mix(warmup_cfg: Mapping[str, Any]) -> tuple[list[str], torch.Tensor]:
    names = [str(n) for n in warmup_cfg["mix"]]
    probs = torch.tensor([float(warmup_cfg["mix"][n]) for n in names], dtype=torch.float64)
    if not names or (probs < 0).any() or probs.sum() <= 0:
        got = dict(warmup_cfg["mix"])
        raise EsftError(f"model.tiny.warmup.mix must map task names to non-negative weights, got {got}")
    return names, probs / probs.sum()


def _alphabet(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The token ids the warm-up data uses, and each vocabulary id's position among them (-1 if unused).

    Why the loss is a softmax over this alphabet only (the 15 tokens of `0-9+-=|>`, of 258), a departure from
    the research recipe: with the full softmax, the 243 never-seen rows of the *tied* embedding get small but
    perfectly consistent gradients, which Adam turns into full-size steps. After 800 steps they had grown from
    norm 0.23 to 1.05 (as large as the used rows), all along one direction (mean cosine 0.98), and the body
    learned much worse. Measured (800 steps, seed 0): full softmax ends at loss 0.66 with add / reverse /
    subtract 16.6 / 43.3 / 15.1 %; the research's 18-token vocabulary at 0.19 with 53 / 45 / 98 %; this
    restricted softmax at 0.18 with 54 / 48 / 99 %. Unused rows keep their initial values; all these accuracies
    (and every exact-match number esft reports) use the argmax over the FULL vocabulary.
    """
    alphabet = data.unique()
    position = torch.full((int(alphabet.max()) + 1,), -1, dtype=torch.long)
    position[alphabet] = torch.arange(len(alphabet))
    return alphabet, position


def _sample_batch(data: torch.Tensor, probs: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Rows of (tasks, pairs, 9) `data`: a task per row by the mix, then a uniform train pair of that task."""
    task_idx = torch.multinomial(probs, batch_size, replacement=True, generator=gen)
    pair_idx = torch.randint(data.shape[1], (batch_size,), generator=gen)
    return data[task_idx, pair_idx]


def _optimizer(model: PreTrainedModel, warmup_cfg: Mapping[str, Any]) -> tuple[torch.optim.AdamW, Any]:
    """AdamW plus linear warm-up then cosine decay to 0 over `steps` (the research recipe)."""
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=float(warmup_cfg["lr"]),
        betas=tuple(float(b) for b in warmup_cfg["betas"]),
        weight_decay=float(warmup_cfg["weight_decay"]),
    )
    return opt, get_cosine_schedule_with_warmup(opt, int(warmup_cfg["warmup_steps"]), int(warmup_cfg["steps"]))


def _answer_loss(model: PreTrainedModel, batch: torch.Tensor, alphabet: torch.Tensor, position: torch.Tensor):
    """Teacher-forced cross-entropy on the 3 answer tokens, softmax over the task alphabet (see `_alphabet`)."""
    logits = answer_logits(model, batch)[..., alphabet]
    return F.cross_entropy(logits.reshape(-1, len(alphabet)), position[batch[:, PROMPT_LEN:]].reshape(-1))


def warmup_tiny(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, warmup_cfg: Mapping[str, Any], log: Log = print
) -> dict[str, Any]:
    """Train `model` in place on the warm-up mix; returns seconds, losses and held-out exact-match accuracies.

    Deterministic given `warmup_cfg.seed` and the model's initial weights (on a fixed thread count).
    """
    names, probs = _mix(warmup_cfg)
    tasks = {n: build_task(n) for n in sorted({*names, *REPORTED_TASKS})}
    data = torch.stack([encode_examples(tokenizer, tasks[n].train_examples()) for n in names])
    alphabet, position = _alphabet(data)
    steps, batch_size = int(warmup_cfg["steps"]), int(warmup_cfg["batch_size"])
    clip = float(warmup_cfg["grad_clip"])
    gen = torch.Generator().manual_seed(int(warmup_cfg["seed"]))
    opt, sched = _optimizer(model, warmup_cfg)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    with progress_bar("warming up the tiny model", steps, short="warm-up", log=log) as bar:
        for step in range(1, steps + 1):
            loss = _answer_loss(model, _sample_batch(data, probs, batch_size, gen), alphabet, position)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(step, f"loss {losses[-1]:.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    tail = losses[-10:]
    held_out = {n: encode_examples(tokenizer, t.eval_examples()) for n, t in tasks.items()}
    return {
        "seconds": round(seconds, 2),
        "steps": steps,
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(tail) / len(tail) if tail else None,  # mean of the last 10 steps: less batch noise
        "accuracy": {n: exact_match(model, ids) for n, ids in held_out.items()},
    }


def _plain(value: Any) -> Any:
    """Config node (dict or OmegaConf) -> plain JSON data: the cache key must not depend on the container type."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def cache_key(tiny_cfg: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the `model.tiny` node plus WARMUP_VERSION."""
    payload = {"tiny": _plain(tiny_cfg), "warmup_version": WARMUP_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' per-file progress bars for a 2 MB checkpoint; restore the caller's setting after."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _load_cached(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load a cached model; raises on anything incomplete or altered (the weights' checksum is in the marker,
    because transformers would silently re-initialise missing tensors of a garbled-but-parsable file)."""
    marker = json.loads((path / MARKER).read_text())
    if _sha256_file(path / WEIGHTS) != marker["weights_sha256"]:
        raise ValueError(f"{WEIGHTS} does not match its checksum")
    with _quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.to("cpu").eval(), tokenizer, marker["metrics"]


def _save(path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, marker: dict[str, Any]) -> None:
    with _quiet_progress():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    marker = {**marker, "weights_sha256": _sha256_file(path / WEIGHTS)}
    (path / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))  # last: it marks the dir complete


STALE_TEMPORARY_S = 3600.0


def _build_and_publish(tiny_cfg: Mapping[str, Any], final: Path, key: str, log: Log):
    """Build, warm up and save into a temp dir beside `final`, then rename it into place atomically.

    If another process published first, its (identical-config) checkpoint wins and is returned, so concurrent
    sweep jobs all start from the same bytes.
    """
    tokenizer = build_tokenizer()
    model = build_model(tiny_cfg, len(tokenizer))
    metrics = warmup_tiny(model, tokenizer, tiny_cfg["warmup"], log)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final, STALE_TEMPORARY_S)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        marker = {"key": key, "warmup_version": WARMUP_VERSION, "tiny": _plain(tiny_cfg), "metrics": metrics}
        _save(tmp, model, tokenizer, marker)
        try:
            os.rename(tmp, final)
        except OSError:
            log(f"another process cached the tiny model at {final} first; using its copy")
            return _load_cached(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model.eval(), tokenizer, metrics


def load_or_build_tiny(
    model_cfg: Mapping[str, Any], log: Log = print
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """The warmed-up tiny model, tokenizer and warm-up metrics for the `model` config node (eval mode, fp32, CPU).

    Loads `cache_dir/tiny/<key[:16]>` when it holds a complete checkpoint; a corrupt or incomplete one is
    removed and rebuilt. Otherwise warms up once and caches.
    """
    tiny_cfg = model_cfg["tiny"]
    key = cache_key(tiny_cfg)
    final = Path(str(model_cfg["cache_dir"])).expanduser() / "tiny" / key[:16]
    cached = _load_if_cached(final, log, repair=False)  # the common case needs no lock: entries appear by rename
    if cached is not None:
        return cached
    with _build_lock(final, log):  # two first runs at once (a parallel sweep) warm up once, not twice
        cached = _load_if_cached(final, log, repair=True)  # built by the process we waited for?
        if cached is not None:
            return cached
        return _warm_up_and_cache(tiny_cfg, final, key, log)


@contextmanager
def _build_lock(final: Path, log: Log) -> Iterator[None]:
    """Hold `.<key>.lock` beside the cache entry while building it; say so when another process holds it."""
    from esft.storage.locks import FileLock

    lock = FileLock(final.parent / f".{final.name}.lock")
    lock.acquire(on_wait=lambda holder: log(
        f"waiting for {holder} to finish warming up the tiny model (lock {lock.path}); it is loaded from the "
        "cache afterwards"))
    try:
        yield
    finally:
        lock.release()


def _load_if_cached(final: Path, log: Log, repair: bool
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]] | None:
    """The cached entry, or None; with `repair` (only under the build lock) a corrupt entry is removed."""
    if final.exists():
        try:
            result = _load_cached(final)
        except Exception as err:  # any failure to read the cache means "rebuild it", never "crash the run"
            if not repair:
                return None
            why = f"{type(err).__name__}: {err}"
            log(f"the tiny-model cache at {final} is corrupt or incomplete ({why}); rebuilding it")
            shutil.rmtree(final, ignore_errors=True)
        else:
            log(f"loaded the warmed-up tiny model from cache: {final}")
            return result
    return None


def _warm_up_and_cache(tiny_cfg: Mapping[str, Any], final: Path, key: str, log: Log):
    # no fixed time estimate: it was 45 s on idle cores and 30 min under load; the progress bar's ETA is measured
    log(f"warming up the tiny model once ({int(tiny_cfg['warmup']['steps'])} steps); cached at {final}")
    model, tokenizer, metrics = _build_and_publish(tiny_cfg, final, key, log)
    acc = ", ".join(f"{n} {100 * a:.1f}%" for n, a in metrics["accuracy"].items())
    log(f"tiny model warmed up in {metrics['seconds']:.0f} s; held-out exact match: {acc}")
    return model, tokenizer, metrics
