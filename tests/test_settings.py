"""Every bad value is refused up front with one line naming the key, the value and the fix (esft/run/settings.py).

Two tables: values set on the composed default config and validated by `RunSettings.from_config` (what
Experiment.setup and the CLI pre-check both call), and whole `esft train` argument lists checked by
`check_train_args` (what the CLI runs before Hydra: composition, sweeps, new keys, tasks, run dir, hub).
"""

from __future__ import annotations

import copy
import math

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from esft.commands.preflight import check_train_args, sweep_points
from esft.core.config import number
from esft.errors import EsftError
from esft.es.settings import ESSection
from esft.resources import conf_dir
from esft.run.settings import RunSettings, check_population_memory


@pytest.fixture(scope="module")
def base() -> dict:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="train"), resolve=True)


def _with(cfg: dict, key: str, value) -> dict:
    cfg = copy.deepcopy(cfg)
    node, *path, last = [cfg, *key.split(".")]
    for part in path:
        node = node[part]
    node[last] = value
    return cfg


# (key, value, what the one line must say); the key itself must be named too
BAD_VALUES = [
    ("es.sigma", math.inf, "finite"), ("es.sigma", math.nan, "finite"), ("es.sigma", -1.0, "> 0"),
    ("es.sigma", 0, "> 0"), ("es.sigma", "abc", "must be a number"), ("es.sigma", True, "must be a number"),
    ("es.alpha", math.inf, "finite.*learning rate"), ("es.alpha", 1e30, "<= 1.*learning rate"),
    ("es.alpha", 0.0, "> 0"), ("es.alpha", -0.01, "> 0"), ("es.alpha", math.nan, "finite"),
    ("es.population_size", 1, ">= 2"), ("es.population_size", 15, "even"), ("es.population_size", 16.0, "integer"),
    ("es.population_size", "16", "integer"), ("es.population_size", 10**12, "GiB.*available"),
    ("es.population_size", -4, ">= 2"),
    ("es.antithetic", "yes", "true or false"), ("es.shaping", "softmax", "es.shaping"),
    ("es.evaluator", "magic", "es.evaluator"), ("es.rank", 0, ">= 1"), ("es.freeze_nonmatrix", 1, "true or false"),
    ("es.prompts_per_step", 0, ">= 1"), ("es.prompts_per_step", 2.5, "integer"),
    ("es.cache_noise", "sometimes", "true, false or auto"), ("es.noise", "pink", "es.noise"),
    ("awd.lambda", math.nan, "finite"), ("awd.lambda", math.inf, "finite"), ("awd.lambda", -1, ">= 0"),
    ("awd.lambda", 200, r"alpha\*lambda < 1"), ("awd.kind", "l3", "awd.kind"), ("awd.anchor", "middle", "awd.anchor"),
    ("eval.size", 0, ">= 1"), ("eval.size", -5, ">= 1"), ("eval.size", 1.5, "integer"),
    ("eval.every", -1, ">= 0.*no periodic"), ("eval.batch_size", 0, ">= 1"), ("eval.layer_distances", "no", "true"),
    ("eval.kl.samples", 0, ">= 1"), ("eval.kl.max_new_tokens", -1, ">= 1"), ("eval.kl.batch_size", 0, ">= 1"),
    ("eval.kl.enabled", "on", "true or false"), ("eval.tasks", 3, "list"),
    ("checkpoint.every", -1, ">= 0"), ("checkpoint.keep", -1, ">= 0"), ("checkpoint.every", 2.5, "integer"),
    ("progress.log_every", 0, ">= 1"), ("distributed.checksum_every", -1, ">= 0"),
    ("policy.backend", "sglang", "policy.backend"), ("policy.gpu_memory_utilization", 1.5, "<= 1"),
    ("policy.gpu_memory_utilization", 0, "> 0"), ("policy.enforce_eager", "maybe", "true or false"),
    ("seed", -1, ">= 0"), ("seed", 1.5, "integer"), ("seed", None, "integer"), ("steps", -3, ">= 0"),
    ("data_dir", 5, "data_dir"),
    ("model.tiny.hidden_size", 130, "split into"), ("model.tiny.hidden_size", 0, ">= 1"),
    ("model.tiny.hidden_size", 132, "split into"),  # 132 / 4 = 33: odd head size, rotary needs pairs
    ("model.tiny.num_attention_heads", 0, ">= 1"), ("model.tiny.num_key_value_heads", 3, "divide"),
    ("model.tiny.num_hidden_layers", 0, ">= 1"), ("model.tiny.max_position_embeddings", -1, ">= 1"),
    ("model.tiny.architecture", "gpt2", "architecture"), ("model.tiny.intermediate_size", 0, ">= 1"),
    ("model.tiny.warmup.lr", math.inf, "finite"), ("model.tiny.warmup.batch_size", 0, ">= 1"),
    ("model.tiny.warmup.betas", [0.9], "two numbers"), ("model.tiny.warmup.betas", [0.9, 1.0], "< 1"),
    ("model.tiny.warmup.mix", {"add": 0, "reverse": 0}, "positive weight"),
    ("model.tiny.warmup.mix", {"add": -1}, ">= 0"), ("model.tiny.warmup.grad_clip", 0, "> 0"),
    ("model.dtype", "float64", "model.dtype"), ("model.device", "tpu", "model.device"),
    ("model.chat_template", "sometimes", "chat_template"), ("model.name", "", "non-empty"),
    ("prior.steps", -1, ">= 0"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_every_bad_value_is_one_line_naming_key_and_fix(base, key, value, message):
    cfg = _with(base, key, value)
    if key == "policy.backend" or key.startswith("policy."):
        cfg["policy"]["backend"] = "vllm" if key != "policy.backend" else value
    with pytest.raises(EsftError, match=message) as caught:
        RunSettings.from_config(cfg)
    text = str(caught.value)
    assert "\n" not in text and key.rsplit(".", 1)[-1].split("[")[0] in text, text


def test_the_default_config_and_legitimate_zeros_pass(base):
    settings = RunSettings.from_config(base)
    assert settings.es.population_size == base["es"]["population_size"] and settings.awd.lam == base["awd"]["lambda"]
    zeros = base
    for key in ("eval.every", "checkpoint.every", "checkpoint.keep", "awd.lambda", "steps",
                "distributed.checksum_every"):
        zeros = _with(zeros, key, 0)
    settings = RunSettings.from_config(zeros)
    assert settings.eval.every == 0 and settings.checkpoint.keep == 0 and settings.awd.lam == 0.0


def test_rl_methods_check_their_own_section(base):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        ppo = OmegaConf.to_container(compose(config_name="train", overrides=["method=ppo"]), resolve=True)
    RunSettings.from_config(ppo)
    for key, value, message in [("method.learning_rate", math.inf, "finite"), ("method.epochs", 0, ">= 1"),
                                ("method.gamma", -1, ">= 0"), ("method.top_p", 0, "> 0"),
                                ("awd.lambda", 1e6, "method.learning_rate")]:
        with pytest.raises(EsftError, match=message):
            RunSettings.from_config(_with(ppo, key, value))


def test_population_memory_is_computed_from_the_parameter_count():
    es = ESSection(16, 0.01, 0.01, True, "zscore", "inplace", 1, False, None, True, "iid")
    check_population_memory(es, 1000, available=10**9)  # 8 draws x 4 kB: fits
    with pytest.raises(EsftError, match=r"8 cached noise draws of 10,000,000 parameters: 0.3 GiB.*cache_noise"):
        check_population_memory(es, 10_000_000, available=2**28)


def test_number_names_the_range():
    assert number(0.5, "x", low=0, high=1) == 0.5
    with pytest.raises(EsftError, match=r"x must be a finite number >= 0 \(got inf\)"):
        number(math.inf, "x", low=0)


# -- whole argument lists, as the CLI checks them ------------------------------------------------------------

BAD_ARGS = [
    (["+foo=1"], "unknown config key 'foo'"), (["++foo=1"], "unknown config key 'foo'"),
    (["+es.foo=1"], "unknown config key 'es.foo'"), (["es.foo=1"], "unknown config key 'es.foo'"),
    (["+eval.kl.bar=2"], "unknown config key 'eval.kl.bar'"), (["task=nope"], "unknown task 'nope'.*reverse"),
    (["method=magic"], "unknown method 'magic'"), (["model=gpt9"], "unknown model 'gpt9'"),
    (["eval.tasks=[nope]"], "unknown task 'nope'"), (["task=add", "task.max_new_tokens=4"], "unknown option"),
    (["+task.foo=1"], "unknown option"), (["task=gsm8k", "task.max_new_tokens=1024"], "no room for a prompt"),
    (["eval.kl.enabled=true", "eval.kl.max_new_tokens=64"], "no room for a prompt"),
    (["-m", "es.sigma=0.01,-1"], r"1 of 2 sweep points.*\[es.sigma=-1\]"),
    (["-m", "es.sigma=-1,0.01"], r"1 of 2 sweep points.*\[es.sigma=-1\]"),
    (["-m", "awd.lambda=0,1,nan", "seed=0,1"], r"2 of 6 sweep points.*awd.lambda=nan"),
    (["-m", "es.sigma=range(1,20)", "es.alpha=0.01,2"], r"19 of 38 sweep points.*es.alpha=2"),
    (["es.sigma=inf"], "es.sigma must be a finite"), (["hydra.run.dir=/proc/esft-run"], "cannot be written"),
    (["model.name=nobody/no-such-model-xyz"], "not in the local Hugging Face cache"),
    (["--config-dir", "/nonexistent/conf", "task=capitals"], "config dir /nonexistent/conf does not exist"),
    (["es.sigma=[1,2"], "cannot parse override"),
]


@pytest.mark.parametrize("args,message", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_are_one_line_before_anything_runs(args, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub case must not depend on this machine's network
    with pytest.raises(EsftError, match=message) as caught:
        check_train_args(args, conf_dir())
    assert "\n" not in str(caught.value)


def test_sweeps_expand_whole_and_large_ones_are_sampled():
    points, total = sweep_points(["es.sigma=0.1,0.2", "seed=0,1,2", "awd.kind=l2"])
    assert total == 6 and len(points) == 6 and ["es.sigma=0.2", "seed=2", "awd.kind=l2"] in points
    points, total = sweep_points(["seed=range(0,100)", "es.sigma=range(1,21)"], cap=50)
    assert total == 2000 and len(points) == 50 and points[0] == ["seed=0", "es.sigma=1"]
    assert points[-1] == ["seed=98", "es.sigma=" + str(1 + (49 * 40) % 20)]


# -- one task list, budgets that fit the model, help, resume of a user config dir ------------------------------


def test_esft_tasks_and_the_unknown_task_error_list_one_set(tmp_path):
    from esft.tasks.registry import available

    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "capitals.yaml").write_text("name: capitals\njsonl: data/capitals.jsonl\n")
    shipped = {p.stem for p in (conf_dir() / "task").glob("*.yaml")}
    assert shipped <= set(available()) and "capitals" not in available()
    assert set(available([tmp_path])) == set(available()) | {"capitals"}
    with pytest.raises(EsftError) as caught:
        check_train_args(["task=nonesuch", "--config-dir", str(tmp_path)], conf_dir())
    listed = str(caught.value).split("available: ", 1)[1].split(" (", 1)[0].split(", ")
    assert listed == available([tmp_path])


def test_a_task_left_at_its_default_budget_is_fitted_to_the_tiny_context(base, tmp_path, caplog):
    from esft.run.curriculum import build_stages

    data = tmp_path / "items.jsonl"
    data.write_text('{"prompt": "Capital of France?", "answer": "Paris"}\n')
    cfg = {**base, "task": {"name": "capitals", "jsonl": str(data), "max_new_tokens": None}}
    with caplog.at_level("INFO", logger="esft"):
        stage = build_stages(cfg)[-1]
    context = base["model"]["tiny"]["max_position_embeddings"]
    assert stage.task.max_new_tokens == context // 2 and "max_new_tokens 1024" in caplog.text
    cfg["task"]["max_new_tokens"] = 16
    assert build_stages(cfg)[-1].task.max_new_tokens == 16
    cfg["task"]["max_new_tokens"] = context
    with pytest.raises(EsftError, match="task.max_new_tokens=.*no room for a prompt"):
        build_stages(cfg)


def test_train_help_lists_groups_common_keys_and_cfg_job(tmp_path):
    from esft.commands.train_help import COMMON_KEYS, train_help

    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "capitals.yaml").write_text("name: capitals\n")
    text = train_help(conf_dir(), [tmp_path])
    assert "capitals" in text and "grpo" in text and "--cfg job" in text
    for key in COMMON_KEYS:
        assert f"  {key}=" in text, key
    assert "N: members per step" in text  # the description comes from conf/train.yaml's comment


def test_resume_finds_the_user_config_dir_again(tmp_path):
    from esft.cli import _expand_resume

    run = tmp_path / "run" / ".hydra"
    run.mkdir(parents=True)
    (run / "overrides.yaml").write_text("- task=capitals\n")
    (run / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    config_sources:\n"
        f"    - {{path: {conf_dir()}, schema: file, provider: main}}\n"
        f"    - {{path: {tmp_path / 'conf'}, schema: file, provider: command-line}}\n")
    args = _expand_resume(["--resume", str(tmp_path / "run")])
    assert f"hydra.searchpath=[file://{tmp_path / 'conf'}]" in args and "task=capitals" in args
    assert not any("searchpath" in a for a in _expand_resume(["--resume", str(tmp_path / "run"),
                                                              "--config-dir", "elsewhere"])[2:-1])


def test_a_model_whose_es_state_cannot_fit_is_refused_with_the_memory_it_needs():
    es = ESSection(16, 0.01, 0.01, True, "zscore", "inplace", 1, False, None, False, "iid")
    with pytest.raises(EsftError, match=r"10,000,000,000 parameters need about 111.8 GiB .* 1.0 GiB are available"):
        check_population_memory(es, 10**10, "cpu", available=2**30)
