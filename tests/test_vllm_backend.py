"""The vLLM backend's testable half, on CPU and without vLLM: the weight bridge and the Policy wiring.

The engine itself needs a GPU (scripts/gpu_check_vllm.py). Here a fake engine with the same surface
(`generate(token ids) -> completion ids`, `load_weights(named tensors)`, `dtype`), generating with an HF model
it only ever updates through `load_weights`, stands in for it: if ES with the fake engine matches the HF
backend exactly, the only untested piece left is vLLM's own `load_weights`.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from esft.backends import HFModelSink, WeightSink, iter_named_weights, named_weights_for
from esft.backends.weights import FollowsWeights
from esft.errors import EsftError
from esft.es.params import FlatParams
from esft.es.trainer import ESTrainer
from esft.models.loading import load_policy
from esft.policy import Policy
from esft.run.methods import validate_method_config
from tests.conftest import DigitTask, micro_policy

ES = {"population_size": 4, "sigma": 0.3, "alpha": 0.05, "antithetic": True, "shaping": "zscore",
      "evaluator": "inplace", "prompts_per_step": 8, "cache_noise": True, "noise": "iid"}
AWD = {"kind": "l2", "lambda": 1.0, "anchor": "start"}

#: the keys conf/model/*.yaml declares beside `name` (load_policy reads them, the defaults live in conf/)
MODEL_KEYS = {"dtype": "float32", "device": "cpu", "chat_template": "auto"}


class FakeEngine(FollowsWeights):
    """vLLM's surface over an HF model of its own; records every weight vector it is sent, flattened."""

    def __init__(self, model: torch.nn.Module, tokenizer, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.inner = Policy(copy.deepcopy(model).to(dtype), tokenizer, torch.device("cpu"), use_chat_template=False)
        self.sink = HFModelSink(self.inner.model)
        self.received: list[torch.Tensor] = []
        self.names: list[list[str]] = []

    def load_weights(self, weights) -> None:
        weights = list(weights)
        self.names.append([n for n, _ in weights])
        self.received.append(torch.cat([t.reshape(-1).float() for _, t in weights]))
        self.sink.load_weights(weights)

    def generate(self, prompts, max_new_tokens, stop=()):
        ids, mask = self.inner.left_pad(prompts)
        tok = self.inner.tokenizer
        out = self.inner.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                        do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                        stop_strings=list(stop) or None, tokenizer=tok if stop else None)
        return [row.tolist() for row in out[:, ids.shape[1]:]]


def _untied_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    return Qwen2ForCausalLM(config)


# -- naming and dtype ---------------------------------------------------------------------------------
def test_tied_model_emits_embeddings_once_in_engine_dtype():
    policy = micro_policy()
    params = FlatParams(policy.model)
    named = named_weights_for(params, params.master, torch.bfloat16)
    names = [n for n, _ in named]
    assert names == params.names and "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert all(t.dtype == torch.bfloat16 for _, t in named)
    state = policy.model.state_dict()
    for name, tensor in named:
        assert tensor.shape == state[name].shape
        assert torch.equal(tensor, state[name].to(torch.bfloat16))


def test_untied_model_emits_both_embedding_and_head_and_round_trips():
    model = _untied_model()
    params = FlatParams(model)
    named = named_weights_for(params, params.master, torch.float32)
    names = {n for n, _ in named}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= names
    assert names == {n for n, _ in model.named_parameters()}  # every checkpoint weight, nothing else
    flat = torch.cat([t.reshape(-1) for _, t in named])
    assert torch.equal(flat, params.master)


def test_perturbed_weights_equal_load_perturbed_bit_for_bit_in_bf16():
    """Non-aliased path (bf16 model): what the engine gets is exactly what FlatParams writes into the model."""
    policy = micro_policy()
    policy.model.to(torch.bfloat16)
    params = FlatParams(policy.model)
    noise = torch.randn(params.numel, generator=torch.Generator().manual_seed(1))
    params.load_perturbed(noise, -0.02)
    sent = dict(iter_named_weights(params, params.master, torch.bfloat16, noise, -0.02))
    for name, param in params.named:
        assert torch.equal(sent[name], param.detach())


# -- the HF sink reproduces the in-place path ----------------------------------------------------------
def test_hf_sink_reproduces_inplace_completions(digit_task):
    source, target = micro_policy(), micro_policy(seed=5)  # the sink's model starts with different weights
    params = FlatParams(source.model)
    sink = HFModelSink(target.model)
    assert isinstance(sink, WeightSink)
    prompts = [digit_task.prompt(e) for e in digit_task.train_examples()]
    for seed, scale in [(1, 0.3), (1, -0.3), (2, 0.3)]:
        noise = torch.randn(params.numel, generator=torch.Generator().manual_seed(seed))
        params.load_perturbed(noise, scale)
        sink.load_weights(iter_named_weights(params, params.master, torch.float32, noise, scale))
        assert source.generate(prompts, 4) == target.generate(prompts, 4)
    params.restore()
    sink.load_weights(iter_named_weights(params, params.master, torch.float32))
    assert source.generate(prompts, 4) == target.generate(prompts, 4)
    assert sink.loaded == params.names


def test_hf_sink_rejects_unknown_names_and_shapes():
    sink = HFModelSink(micro_policy().model)
    with pytest.raises(KeyError):
        sink.load_weights([("model.nope.weight", torch.zeros(1))])
    with pytest.raises(ValueError):
        sink.load_weights([("model.embed_tokens.weight", torch.zeros(2, 2))])


# -- configuration and errors --------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_is_one_line_error():
    with pytest.raises(EsftError) as info:  # refused before the model is built or loaded
        load_policy({"name": "no-such-model", **MODEL_KEYS}, policy_cfg={"backend": "vllm"})
    message = str(info.value)
    assert "\n" not in message and "pip install 'esft[vllm]' on a CUDA machine" in message


def test_vllm_backend_without_cuda_is_one_line_error(monkeypatch):
    from esft.backends import vllm_backend

    monkeypatch.setattr(vllm_backend.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EsftError, match="needs a CUDA device"):
        vllm_backend.require_vllm()


def test_unknown_backend_and_unsupported_combinations_are_refused():
    with pytest.raises(EsftError, match="unknown policy.backend"):
        load_policy({"name": "tiny", **MODEL_KEYS}, policy_cfg={"backend": "sglang"})
    cfg = {"es": dict(ES), "awd": dict(AWD), "policy": {"backend": "vllm"}}
    validate_method_config("es", cfg)
    with pytest.raises(EsftError, match="es.evaluator=inplace"):
        validate_method_config("es", {**cfg, "es": {**ES, "evaluator": "lowrank"}})


def test_weight_loader_adapter_prefers_v0_then_collective_rpc():
    from types import SimpleNamespace

    from esft.backends.vllm_backend import weight_loader

    calls = []
    model = SimpleNamespace(load_weights=lambda weights: calls.append(("v0", list(weights))))
    v0 = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(
        driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=model)))))
    weight_loader(v0)(iter([("w", torch.ones(1))]))
    v1 = SimpleNamespace(llm_engine=SimpleNamespace(),
                         collective_rpc=lambda method, args: calls.append((method, list(args[0]))))
    weight_loader(v1)([("w", torch.ones(1))])
    assert [c[0] for c in calls] == ["v0", "esft_load_weights"]
    with pytest.raises(EsftError, match="collective_rpc"):
        weight_loader(SimpleNamespace(llm_engine=SimpleNamespace()))


# -- the Policy routed through an engine ---------------------------------------------------------------
def _step(policy, task, step=1):
    rows = []
    trainer = ESTrainer(policy, ES, AWD, seed=3, replay_log=rows.append, batch_size=64)
    trainer.set_stage(0, task)
    start = trainer.params.master.clone()
    metrics = trainer.step(step)
    return trainer, rows, metrics, start


def test_engine_receives_every_member_then_restores_and_rewards_match():
    task = DigitTask()
    hf = micro_policy()
    base = micro_policy()
    engine = FakeEngine(base.model, base.tokenizer)
    routed = Policy(base.model, base.tokenizer, torch.device("cpu"), use_chat_template=False, engine=engine)

    hf_trainer, hf_rows, hf_metrics, _ = _step(hf, task)
    trainer, rows, metrics, start = _step(routed, task)

    assert metrics["reward_mean"] == hf_metrics["reward_mean"] and metrics["reward_std"] == hf_metrics["reward_std"]
    assert rows[0]["coefficients"] == hf_rows[0]["coefficients"]
    assert torch.equal(trainer.params.master, hf_trainer.params.master)

    settings, seeds = trainer.settings, rows[0]["seeds"]
    expected = []
    for member in range(settings.population_size):
        draw, sign = settings.member(member)
        eps = trainer.noise.flat(seeds[draw])
        expected.append(torch.add(start, eps, alpha=sign * settings.sigma))
    expected += [start, trainer.params.master]  # the population's restore, then the updated master
    assert len(engine.received) == len(expected)
    for got, want in zip(engine.received, expected):
        assert torch.equal(got, want)
    assert all(names == trainer.params.names for names in engine.names)
    prompts = [task.prompt(e) for e in task.eval_examples()]
    assert routed.generate(prompts, 2) == hf.generate(prompts, 2)  # evaluation after the step agrees too
    assert routed.counts.generated > 0


def test_hf_backend_registers_no_callbacks(policy, digit_task):
    trainer, _, _, _ = _step(policy, digit_task)
    assert trainer.params.on_load == [] and policy.engine is None
