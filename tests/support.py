"""Test helpers shared by several test folders: data locations and a micro model.

A plain module, not conftest.py: with tests/report/conftest.py beside tests/conftest.py, `from support import`
resolves to whichever conftest was imported first, so shared names live here (`from support import ...`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from esft.models.tiny import build_model, build_tokenizer
from esft.policy import Policy

REPO = Path(__file__).resolve().parents[1]
#: the paper's full splits: ../shared/data beside the repository, or the folder ESFT_PAPER_DATA names
SHARED_DATA = Path(os.environ.get("ESFT_PAPER_DATA") or REPO / ".." / "shared" / "data").resolve()
#: a few dozen verbatim rows per benchmark, in the layout the loaders read (tests/data/README.md): ships with
#: the repository, so the loading and scoring tests of the paper's tasks also run on a bare clone
FIXTURE_DATA = REPO / "tests" / "data"
HAS_PAPER_DATA = (SHARED_DATA / "gsm8k").is_dir()
#: where a test that needs one data folder reads benchmark files: the paper's full splits if present, else the fixture
TASK_DATA = SHARED_DATA if HAS_PAPER_DATA else FIXTURE_DATA
#: every data folder present, for tests that hold on any rows: the fixture always, the full splits where they exist
DATA_DIRS = [pytest.param(FIXTURE_DATA, id="fixture"),
             *([pytest.param(SHARED_DATA, id="paper")] if HAS_PAPER_DATA else [])]
#: the paper's item counts and whole-split checks need the full splits (../shared/data beside the repository)
needs_paper_data = pytest.mark.skipif(not HAS_PAPER_DATA, reason=f"the paper's full splits are not at {SHARED_DATA} "
                                      "(the rows in tests/data cover the rest)")


def is_paper_data(data_dir: object) -> bool:
    """Whether a task or test reads the paper's full splits (their exact item counts then apply)."""
    return data_dir is not None and Path(str(data_dir)).resolve() == SHARED_DATA


MICRO = {"architecture": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64, "init_seed": 0}


def micro_policy(seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = build_model({**MICRO, "init_seed": seed}, len(tokenizer))
    return Policy(model, tokenizer, torch.device("cpu"), use_chat_template=False)
