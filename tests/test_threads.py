"""Thread budget: cores actually available, split between the processes that share them; OMP_NUM_THREADS wins."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from esft.run.threads import available_cores, configure_threads, launcher_parallelism, thread_budget


def test_omp_num_threads_is_honoured():
    assert thread_budget(4, {"OMP_NUM_THREADS": "3"}, cores=64) == (3, "OMP_NUM_THREADS")


@pytest.mark.parametrize("bad", ["0", "-2", "many", ""])
def test_an_unusable_omp_num_threads_falls_back_to_the_core_split(bad):
    assert thread_budget(2, {"OMP_NUM_THREADS": bad}, cores=8)[0] == 4


@pytest.mark.parametrize(("cores", "jobs", "local_ranks", "want"),
                         [(16, 1, None, 16), (16, 4, None, 4), (2, 2, None, 1), (2, 8, None, 1), (16, 2, "4", 2)])
def test_cores_are_split_between_parallel_jobs_and_local_ranks(cores, jobs, local_ranks, want):
    env = {} if local_ranks is None else {"LOCAL_WORLD_SIZE": local_ranks}
    assert thread_budget(jobs, env, cores=cores)[0] == want


def test_available_cores_follows_affinity_and_a_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert available_cores(quota) == affinity
    quota.write_text("50000 100000\n")  # half a core: still one thread
    assert available_cores(quota) == 1
    quota.write_text(f"{200000 * affinity} 100000\n")  # a quota above the affinity does not add cores
    assert available_cores(quota) == affinity
    assert available_cores(tmp_path / "absent") == affinity


def test_launcher_parallelism_reads_joblib_n_jobs():
    assert launcher_parallelism(None) == 1
    assert launcher_parallelism(SimpleNamespace(launcher={"_target_": "basic"})) == 1
    assert launcher_parallelism(SimpleNamespace(launcher={"n_jobs": 3})) == 3
    assert launcher_parallelism(SimpleNamespace(launcher={"n_jobs": -1})) == available_cores()


def test_configure_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert configure_threads(4) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
