"""Ways to evaluate a population, and the fitness they evaluate. All return one fitness per member, in order.

- `inplace` is the papers' loop made exact and cheap: members are evaluated one at a time by loading
  master + s * sigma * eps into the model (never by adding and subtracting noise in the model's precision),
  each antithetic pair shares one noise draw, and the draws are kept for the update instead of regenerated
  while they fit (es.cache_noise, resolve_cache_noise).
- `lowrank` is EGGROLL's batched evaluation (esft/es/lowrank.py): every member's copy of the prompts is stacked
  into one batch and each layer adds its member's rank-r correction, so the base weights are read once per
  forward for the whole population. Its noise is low-rank (LowRankNoise), and so are its update and replay.

The seam: `evaluate(seeds, fitness) -> (rewards, cache)`. `fitness` is a StepFitness: `fitness()` scores the
weights the model holds now (one member), `fitness.batched(n)` scores n members whose rows are stacked
member-major in one batch (the lowrank hooks know which member each row block belongs to). `cache` maps a
noise draw to what the update needs (inplace: the flat eps; lowrank: the factors), or is empty.

StepFitness prepares the step's prompts once (tokenised, padded) and reuses them for every member: the
exact-answer shortcut (one teacher-forced forward: Policy.encode_exact_match once per step, then
Policy.teacher_forced_match per member or stack of members -- the same code Policy.exact_match runs), or
generation through Policy.generate (greedy, KV cache, and Hugging Face's early stop once every sequence has
finished).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Union

import numpy as np
import torch

from esft.errors import EsftError
from esft.es.lowrank import LowRankNoise, perturb_members
from esft.es.noise import NOISE_SETTINGS, DrawRef, NoiseGenerator, resolve_noise_mode
from esft.es.params import FlatParams
from esft.es.strategy import ESSettings
from esft.policy import ExactMatchBatch, Policy
from esft.tasks.base import Example, Task

Noise = Union[NoiseGenerator, LowRankNoise]
log = logging.getLogger("esft")


class StepFitness:
    """The fitness of one ES step: mean reward on the step's prompts under the weights being evaluated."""

    def __init__(self, policy: Policy, task: Task, examples: Sequence[Example], batch_size: int = 256) -> None:
        self.policy, self.task, self.examples = policy, task, list(examples)
        self.batch_size = batch_size
        self._prompts = [task.prompt(e) for e in self.examples]
        # encoded once per step, scored once per member (or stack of members)
        self._exact: ExactMatchBatch | None = None
        if task.exact_answer and policy.exact_match_is_greedy:
            self._exact = policy.encode_exact_match(self._prompts, [e.answer for e in self.examples],
                                                    task.max_new_tokens)

    @property
    def members_per_call(self) -> int:
        """How many members `batched` may stack: whole members within `batch_size` rows (eval.batch_size)."""
        return max(1, self.batch_size // max(1, len(self.examples)))

    def __call__(self) -> float:
        return self.batched(1)[0]

    def batched(self, members: int) -> list[float]:
        """Mean reward of each of `members` stacked copies (all in one forward / one generate call)."""
        if self._exact is not None:
            matches = self.policy.teacher_forced_match(self._exact, members, rows_per_forward=self.batch_size)
            rewards = matches.numpy().astype(np.float64)
        else:
            completions = self.policy.generate(self._prompts * members, self.task.max_new_tokens, self.task.stop,
                                               batch_size=len(self._prompts) * members)
            rewards = np.array([self.task.reward(c, e) for c, e in zip(completions, self.examples * members)],
                               dtype=np.float64)
        return rewards.reshape(members, -1).mean(1).tolist()


class InplaceEvaluator:
    """One member at a time on the shared model, restored exactly from the fp32 master after the population.

    With `prefetch` (default: when the model is not on the CPU) the next draw's noise is generated on a
    background thread while the current member is evaluated: on a GPU host the CPU is idle during the forward
    passes, and drawing D normals on the CPU (serial per tensor; ~0.5-1 s for a 1.5B model even spread over
    threads) would otherwise stall the GPU once per draw. The values are the same either way.
    """

    name = "inplace"

    def __init__(self, params: FlatParams, noise: Noise, settings: ESSettings, cache_noise: bool = True,
                 prefetch: bool | None = None) -> None:
        self.params = params
        self.noise = noise
        self.settings = settings
        self.cache_noise = cache_noise
        self.portable = bool(getattr(noise, "portable", False))  # philox: drawn on the device, block by block
        on_device = params.device.type != "cpu"
        self.prefetch = (on_device and not self.portable) if prefetch is None else prefetch
        # reused host draws when not caching: one, or two alternating ones (the next is filled while one is in
        # use), pinned when they are copied to a GPU; portable noise needs none (DrawRef)
        needed = 0 if cache_noise or self.portable else 1 + self.prefetch
        self._buffers = [torch.empty(params.numel, pin_memory=on_device and torch.cuda.is_available())
                         for _ in range(needed)]

    def _draw(self, seed: int, slot: int) -> torch.Tensor | DrawRef:
        """portable noise: a DrawRef (blocks drawn on the weights' device as they are loaded), or the whole
        draw made there when cached. Host noise: a CPU draw; only cached draws (kept for the update, and small
        enough: es.cache_noise=auto) move to the weights' device whole; the others reach it one tensor at a
        time from a pinned buffer (load_perturbed, non_blocking copies)."""
        if self.portable:
            kept = self.noise.flat(seed, device=self.params.device) if self.cache_noise else None
            return DrawRef(self.noise, seed, self.params.device, kept)
        if self.cache_noise:
            return self.noise.flat(seed).to(self.params.device)
        return self.noise.flat(seed, out=self._buffers[slot % len(self._buffers)])

    def evaluate(self, seeds: Sequence[int], fitness: StepFitness, members: Sequence[int] | None = None,
                 ) -> tuple[list[float], dict[int, torch.Tensor]]:
        """Fitness of every member (or of `members` only: a torchrun rank's share, esft/distributed/sharding.py); also
        the noise draws kept for the update (empty if not caching)."""
        order = [self.settings.member(m) for m in (range(self.settings.population_size) if members is None
                                                   else members)]
        draws = list(dict.fromkeys(draw for draw, _ in order))  # in order of first use
        rewards: list[float] = []
        cache: dict[int, torch.Tensor] = {}
        with _DrawSource(self._draw, [seeds[d] for d in draws], self.prefetch) as source:
            current_draw = -1
            for draw, sign in order:
                if draw != current_draw:
                    eps = source.next()
                    if self.cache_noise:
                        cache[draw] = eps.cached if isinstance(eps, DrawRef) else eps
                    current_draw = draw
                self.params.load_perturbed(eps, sign * self.settings.sigma)
                rewards.append(float(fitness()))
        self.params.restore()
        return rewards, cache


class _DrawSource:
    """Hands out the step's draws in order; with `prefetch`, draw i+1 is being generated on a worker thread
    while draw i is in use (only one ahead, so two alternating buffers suffice when noise is not cached)."""

    def __init__(self, make: Any, seeds: list[int], prefetch: bool) -> None:
        self.make, self.seeds, self.index = make, seeds, 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esft-prefetch") if prefetch else None
        self.pending: Future | None = None

    def __enter__(self) -> "_DrawSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def next(self) -> torch.Tensor:
        index = self.index
        self.index += 1
        if self.pool is None:
            return self.make(self.seeds[index], index)
        eps = (self.pending or self.pool.submit(self.make, self.seeds[index], index)).result()
        self.pending = (self.pool.submit(self.make, self.seeds[index + 1], index + 1)
                        if index + 1 < len(self.seeds) else None)
        return eps


class LowRankEvaluator:
    """EGGROLL: members stacked in one batched forward / generate call, as many per call as fit in the
    fitness' batch_size rows (eval.batch_size; `member_chunk` overrides). On CPU a few hundred rows per forward
    is already compute-bound, so stacking more buys nothing (measured: scripts/bench_es.py); on a GPU, raise the
    batch size so the whole population shares one call."""

    name = "lowrank"

    def __init__(self, params: FlatParams, noise: Noise, settings: ESSettings, cache_noise: bool = True,
                 member_chunk: int | None = None) -> None:
        if not isinstance(noise, LowRankNoise):
            raise EsftError("es.evaluator=lowrank needs low-rank noise (build it with build_noise)")
        self.params, self.noise, self.settings = params, noise, settings
        self.cache_noise = cache_noise
        self.member_chunk = member_chunk
        self.parameters = [p for _, p in params.named]  # FlatParams(share_master=True) saves the working copy

    def evaluate(self, seeds: Sequence[int], fitness: StepFitness, members: Sequence[int] | None = None,
                 ) -> tuple[list[float], dict[int, Any]]:
        """Fitness of every member (or of `members` only: a torchrun rank's share), and the draws' factors."""
        draws = [self.noise.draw(seed) for seed in seeds]
        indices = range(self.settings.population_size) if members is None else members
        members = [self.settings.member(i) for i in indices]
        rewards: list[float] = []
        per_call = self.member_chunk or fitness.members_per_call
        for start in range(0, len(members), per_call):
            chunk = members[start:start + per_call]
            with perturb_members(self.params.model, self.parameters, self.noise, draws, chunk, self.settings.sigma):
                rewards.extend(float(r) for r in fitness.batched(len(chunk)))
        return rewards, (dict(enumerate(draws)) if self.cache_noise else {})


EVALUATORS = {"inplace": InplaceEvaluator, "lowrank": LowRankEvaluator}


def build_noise(evaluator: str, noise: str, params: FlatParams, rank: int | None = None,
                freeze_nonmatrix: bool | None = None) -> Noise:
    """The noise definition follows the evaluator: low-rank for `lowrank` (factors from torch's host sampler,
    or Philox on the weights' device with es.noise=philox; es.rank and es.freeze_nonmatrix, which conf/ always
    declares), else es.noise (iid | correlated | philox | auto, resolved for the weights' device by
    resolve_noise_mode)."""
    if noise not in NOISE_SETTINGS:
        raise EsftError(f"es.noise must be one of {', '.join(NOISE_SETTINGS)} (got {noise!r})")
    mode = resolve_noise_mode(noise, params.device)
    if evaluator == "lowrank":
        if mode not in ("iid", "philox"):
            raise EsftError("es.evaluator=lowrank draws its own low-rank noise; es.noise may be iid, philox or auto")
        if rank is None or freeze_nonmatrix is None:
            raise EsftError("es.evaluator=lowrank needs es.rank and es.freeze_nonmatrix (see conf/train.yaml)")
        return LowRankNoise(params.shapes, rank, freeze_nonmatrix, factors=mode, device=params.device)
    return NoiseGenerator(params.sizes, params.shapes, mode)


#: es.cache_noise=auto keeps the step's full-rank noise draws only while they take at most this many bytes
CACHE_NOISE_BUDGET = 1 << 30


def resolve_cache_noise(value: Any, evaluator: str, draws: int, numel: int) -> bool:
    """es.cache_noise: true | false | auto. Caching saves regenerating every draw for the update (about a
    third of the noise work) but holds N/2 D-sized draws: fine for the tiny model (18 MB), 48 GB for a 1.5B
    model at N=16. auto caches when that fits CACHE_NOISE_BUDGET; low-rank draws are factors and always fit."""
    if isinstance(value, bool):
        return value
    if str(value).lower() == "auto":
        fits = evaluator == "lowrank" or draws * numel * 4 <= CACHE_NOISE_BUDGET
        if not fits and numel:
            log.info("es.cache_noise=auto: regenerating the noise for the update (keeping %d draws of %.3g "
                     "numbers would take %.1f GB)", draws, numel, draws * numel * 4 / 1e9)
        return fits
    raise EsftError(f"es.cache_noise must be true, false or auto (got {value!r})")


def build_evaluator(name: str, params: FlatParams, noise: Noise, settings: ESSettings,
                    cache_noise: bool) -> InplaceEvaluator | LowRankEvaluator:
    if name not in EVALUATORS:
        raise EsftError(f"unknown es.evaluator '{name}'; use one of: {', '.join(EVALUATORS)}")
    return EVALUATORS[name](params, noise, settings, cache_noise)
