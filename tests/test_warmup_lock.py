"""Two first runs at once (a parallel sweep) warm up the tiny model once: the other waits, then loads the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from esft.models.warmup import cache_key
from esft.resources import conf_dir
from esft.storage.locks import FileLock

BUILD = """
import json, sys
from esft.models.warmup import load_or_build_tiny
model_cfg = json.loads(sys.argv[1])
load_or_build_tiny(model_cfg, log=lambda line: print(line, flush=True))
"""


def _model_cfg(cache: Path) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "model" / "tiny.yaml"))
    cfg["cache_dir"] = str(cache)
    cfg["tiny"].update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2)
    cfg["tiny"]["warmup"].update(steps=3, batch_size=8, warmup_steps=1)
    return cfg


@pytest.mark.slow  # two processes warm up a (very small) model
def test_concurrent_first_runs_build_the_warm_up_once(tmp_path):
    cfg = _model_cfg(tmp_path / "cache")
    final = tmp_path / "cache" / "tiny" / cache_key(cfg["tiny"])[:16]
    gate = FileLock(final.parent / f".{final.name}.lock")
    assert gate.try_acquire()  # hold the build lock so both processes are certain to meet it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", BUILD, json.dumps(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    try:
        deadline = time.time() + 120
        seen: list[list[str]] = [[], []]
        for index, run in enumerate(runs):
            while time.time() < deadline:
                line = run.stdout.readline()
                seen[index].append(line)
                if "waiting for" in line or not line:
                    break
        assert all("waiting for" in lines[-1] and str(os.getpid()) in lines[-1] for lines in seen), seen
    finally:
        gate.release()
    outputs = ["".join(lines) + run.communicate(timeout=300)[0] for lines, run in zip(seen, runs)]
    assert [run.returncode for run in runs] == [0, 0], outputs
    builds = [out.count("warming up the tiny model once") for out in outputs]
    assert sorted(builds) == [0, 1], outputs
    assert "loaded the warmed-up tiny model from cache" in outputs[builds.index(0)]
    assert [p.name for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.tmp")] == []
