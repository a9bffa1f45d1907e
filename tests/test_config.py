"""Config composition: every group option composes, pinned keys exist, bad values are refused early."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from esft.errors import EsftError
from esft.resources import conf_dir
from esft.run.methods import validate_method_config

PINNED_KEYS = ["task", "prior", "method", "model", "seed", "steps", "eval.every", "es.population_size", "es.sigma",
               "es.alpha", "es.antithetic", "es.evaluator", "awd.kind", "awd.lambda", "awd.anchor", "data_dir",
               "eval.tasks"]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def test_default_config_has_every_pinned_key_and_awd_on():
    cfg = _compose()
    for key in PINNED_KEYS:
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None or key == "data_dir", key
    assert cfg.awd.kind == "l2" and cfg.awd["lambda"] > 0
    assert cfg.method.name == "es" and cfg.model.name == "tiny"
    validate_method_config("es", OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize("group", ["model", "task", "prior", "method", "eval", "logger"])
def test_every_group_option_composes(group):
    options = _options(group)
    assert options, f"conf/{group}/ is empty"
    for option in options:
        cfg = _compose(f"{group}={option}")
        assert cfg[group] is not None


def test_experiment_presets_compose():
    for option in _options("experiment"):
        cfg = _compose(f"experiment={option}")
        OmegaConf.to_container(cfg, resolve=True)


def test_user_facing_overrides_land_where_documented():
    cfg = _compose("task=add", "awd.lambda=0.5", "awd.kind=l1", "es.population_size=32", "seed=3", "prior=none")
    assert cfg.task.name == "add" and cfg.awd["lambda"] == 0.5 and cfg.awd.kind == "l1"
    assert cfg.es.population_size == 32 and cfg.seed == 3 and list(cfg.prior.tasks) == []


@pytest.mark.parametrize("overrides,message", [
    (["es.population_size=1"], ">= 2"), (["es.population_size=15"], "even"), (["es.sigma=0"], "sigma"),
    (["awd.lambda=200"], "alpha\\*lambda < 1"), (["awd.lambda=-1"], ">= 0"), (["awd.kind=l3"], "awd.kind"),
    (["es.evaluator=magic"], "es.evaluator"), (["awd.anchor=middle"], "awd.anchor"),
    (["es.sigma=abc"], "es.sigma must be a number"), (["es.cache_noise=sometimes"], "es.cache_noise"),
])
def test_bad_values_are_refused_with_a_clear_message(overrides, message):
    cfg = OmegaConf.to_container(_compose(*overrides), resolve=True)
    with pytest.raises(EsftError, match=message):
        validate_method_config("es", cfg)
