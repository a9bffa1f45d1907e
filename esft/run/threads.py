"""How many CPU threads torch may use, so that esft processes sharing a machine do not oversubscribe it.

torch starts one intra-op thread per *machine* core whatever the process is allowed to use. On a 2-core box
running two esft jobs (or a Hydra joblib sweep, or torchrun ranks) that is 2 x 16 spinning OpenMP threads on 2
cores, and the tiny model's warm-up went from ~1 minute to half an hour. So the budget of one process is

    cores it may run on (sched_getaffinity, capped by a cgroup cpu.max quota) // processes sharing them

where the processes sharing them are the Hydra launcher's parallel jobs (`hydra.launcher.n_jobs`) times the
torchrun ranks on this node (LOCAL_WORLD_SIZE), and never less than 1. An explicit OMP_NUM_THREADS (what
SLURM launchers and careful users set) wins: the user knows the machine's other load, esft does not.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

log = logging.getLogger("esft")

_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores(cgroup_cpu_max: Path = _CGROUP_CPU_MAX) -> int:
    """Cores this process may actually use: its CPU affinity, capped by a cgroup v2 quota if one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _positive_int(value: object) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def thread_budget(parallel_jobs: int = 1, environ: dict[str, str] | None = None,
                  cores: int | None = None) -> tuple[int, str]:
    """(threads, why) for one process; `why` is the log line's explanation."""
    environ = os.environ if environ is None else environ
    explicit = _positive_int(environ.get("OMP_NUM_THREADS"))
    if explicit is not None:
        return explicit, "OMP_NUM_THREADS"
    cores = available_cores() if cores is None else cores
    local_ranks = _positive_int(environ.get("LOCAL_WORLD_SIZE")) or 1
    sharing = max(1, parallel_jobs) * local_ranks
    threads = max(1, cores // sharing)
    return threads, f"{cores} available core(s) shared by {sharing} process(es)"


def launcher_parallelism(hydra_cfg: object | None) -> int:
    """Parallel jobs of the Hydra launcher running this job (joblib's `n_jobs`; 1 for the basic launcher and
    for launchers that give each job its own machine or allocation, e.g. SLURM)."""
    if hydra_cfg is None:
        return 1
    try:
        launcher = hydra_cfg.launcher  # type: ignore[attr-defined]
        n_jobs = launcher.get("n_jobs") if hasattr(launcher, "get") else None
    except Exception:  # noqa: BLE001 - an unexpected launcher config must not stop the run
        return 1
    number = _positive_int(n_jobs)
    if number is None and n_jobs is not None and str(n_jobs).strip() == "-1":
        return available_cores()  # joblib: one job per core
    return number or 1


def configure_threads(parallel_jobs: int = 1) -> int:
    """Set torch's intra-op (and, while still allowed, inter-op) threads for this process; returns the count."""
    threads, why = thread_budget(parallel_jobs)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable before the first parallel work; intra-op is what matters here
        pass
    log.info("torch uses %d thread(s) (%s)", threads, why)
    return threads
