"""The README's "Adding a task without editing esft" recipe, run as written from a directory outside the repo,
resumed, and the CLI's one-line refusals as a user sees them (real `esft` subprocesses)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ESFT = str(Path(sys.executable).with_name("esft"))
#: appended to the README's train command so the test trains seconds, not minutes (the recipe is unchanged)
FAST = ["steps=2", "eval.size=8", "es.population_size=4", "es.prompts_per_step=3", "eval.every=0",
        "hydra.run.dir=run"]


def _recipe() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Adding a task without editing esft"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(ESFT).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _esft(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ESFT, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_readme_custom_task_recipe_runs_as_written_outside_the_repo_and_resumes(tmp_path):
    script = _recipe()
    train_lines = [line for line in script.splitlines() if line.startswith("esft train")]
    assert len(train_lines) == 1 and "--config-dir" in train_lines[0]
    setup = script.replace(train_lines[0], "")
    listed = subprocess.run(["bash", "-e", "-c", setup], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "capitals" in listed.stdout.split()  # `esft tasks --config-dir my_conf` lists the user's task
    train = train_lines[0].split("#")[0].split()[1:]
    done = _esft(tmp_path, *train, *FAST)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "run"
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    assert {row["task"] for row in evals} >= {"capitals"}
    # a resume from another directory state: mark the run unfinished, resume; the task is found again
    (run / "status.json").write_text(json.dumps({"state": "running"}))
    resumed = _esft(tmp_path, "train", "--resume", "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "unknown task" not in resumed.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "done"


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["es.alpha=inf"], "es.alpha must be a finite number"),
    (["+foo=1"], "unknown config key 'foo'"),
    (["-m", "es.sigma=0.01,-1"], r"\[es.sigma=-1\]"),
    (["task=capitals"], "unknown task 'capitals'.*--config-dir"),
])
def test_cli_refuses_with_one_line_and_exit_2(tmp_path, args, message):
    result = _esft(tmp_path, "train", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
    assert not (tmp_path / "outputs").exists()  # nothing was written


@pytest.mark.slow
def test_train_help_lists_groups_keys_and_where_to_see_all(tmp_path):
    result = _esft(tmp_path, "train", "--help")
    assert result.returncode == 0
    for needle in ("task ", "reverse", "method ", "grpo", "es.population_size=16", "awd.lambda=", "--cfg job"):
        assert needle in result.stdout, needle
