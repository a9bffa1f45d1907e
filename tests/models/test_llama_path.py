"""The real-model path on a SmolLM2-shaped random Llama (grouped-query attention, RMSNorm, tied embeddings):
the lowrank evaluator's batched members equal their materialised weights, and a saved model reloads with
from_pretrained to the same logits. Seconds, no download: the real SmolLM2 runs in test_packaged_model.py."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from esft.es.lowrank import LowRankNoise, perturb_members
from esft.es.noise import member_seed
from esft.es.params import FlatParams
from esft.models.tiny import build_model, build_tokenizer
from esft.policy import Policy
from tests.es.test_lowrank import SIGMA, _dense_member, _members

SMOL_SHAPED = {"architecture": "llama", "hidden_size": 48, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 64, "init_seed": 3}


def llama_policy() -> Policy:
    tokenizer = build_tokenizer()
    model = build_model(SMOL_SHAPED, len(tokenizer))
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    return Policy(model, tokenizer, torch.device("cpu"), use_chat_template=False)


@pytest.mark.parametrize("rank,freeze", [(1, False), (2, True)])
def test_lowrank_members_on_llama_modules_equal_their_dense_weights(rank, freeze):
    policy = llama_policy()
    params = FlatParams(policy.model)
    noise = LowRankNoise(params.shapes, rank, freeze)
    seeds = [member_seed(4, 1, k) for k in range(2)]
    draws = [noise.draw(s) for s in seeds]
    members = _members(4)
    ids = torch.randint(0, 256, (3, 9))
    with torch.no_grad():
        with perturb_members(policy.model, [p for _, p in params.named], noise, draws, members, SIGMA):
            stacked = policy.model(input_ids=ids.repeat(len(members), 1)).logits.view(len(members), 3, 9, -1)
        for i, (draw, sign) in enumerate(members):
            dense = _dense_member(policy.model, params, noise, seeds[draw], sign)(input_ids=ids).logits
            assert torch.allclose(stacked[i], dense, atol=2e-5, rtol=1e-4)


def test_saved_llama_reloads_with_from_pretrained(tmp_path):
    policy = llama_policy()
    policy.model.save_pretrained(tmp_path, safe_serialization=True)
    policy.tokenizer.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = torch.tensor([tokenizer("12+34=", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, policy.model(input_ids=ids).logits)


def test_loglik_on_llama_equals_unbatched_sums():
    policy = llama_policy()
    scores = policy.option_logprobs(["Q: 2+2?", "Colour of the sky?"], [["4", "five"], ["blue", "red", "x"]])
    for prompt, options, row in zip(["Q: 2+2?", "Colour of the sky?"], [["4", "five"], ["blue", "red", "x"]], scores):
        for option, score in zip(options, row):
            single = policy.option_logprobs([prompt], [[option]], batch_size=1)[0][0]
            assert score == pytest.approx(single, abs=1e-4)
