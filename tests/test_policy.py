"""Policy: prompt rendering (chat template, system message, reply prefix), stop strings, loading saved models."""

from __future__ import annotations

import pytest

from esft.core.prompts import Prompt
from esft.errors import EsftError
from esft.models.loading import load_policy
from esft.policy import cut_at_stop

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")

#: the keys conf/model/*.yaml declares beside `name` (load_policy reads them, the defaults live in conf/)
MODEL_KEYS = {"dtype": "float32", "device": "cpu", "chat_template": "auto"}


def test_plain_prompt_without_template_appends_reply_prefix(policy):
    assert policy.format_prompt("12+34=") == "12+34="
    assert policy.format_prompt(Prompt("Q?", system="S", response_prefix="<think>")) == "Q?<think>"


def test_chat_template_renders_system_user_and_prefix(policy):
    policy.tokenizer.chat_template = TEMPLATE
    policy.use_chat_template = True
    rendered = policy.format_prompt(Prompt("Q?", system="S", response_prefix="<think>"))
    assert rendered == "<system>S</system><user>Q?</user><assistant><think>"


def test_stop_strings_cut_after_the_marker():
    assert cut_at_stop("a</answer>tail", ["</answer>"]) == "a</answer>"
    assert cut_at_stop("no marker", ["</answer>"]) == "no marker"


def test_generate_returns_completion_only(policy):
    out = policy.generate(["12+34=", "99-01="], max_new_tokens=3)
    assert len(out) == 2 and all(len(o.encode()) <= 3 for o in out)
    assert policy.counts.generated > 0 and policy.counts.forward > policy.counts.generated


def test_saved_model_loads_through_model_name(policy, tmp_path):
    policy.model.save_pretrained(tmp_path / "m")
    policy.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_policy({"name": str(tmp_path / "m"), **MODEL_KEYS})
    assert loaded.generate(["12+34="], 3) == policy.generate(["12+34="], 3)
    assert not loaded.use_chat_template


def test_model_dir_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EsftError, match="holds no weights"):
        load_policy({"name": str(tmp_path / "empty"), **MODEL_KEYS})


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network retries in the test
    with pytest.raises(EsftError, match="cannot load model"):
        load_policy({"name": "no-such-org/no-such-model-xyz", **MODEL_KEYS})


def test_prompts_longer_than_the_context_are_cut_from_the_left(policy, caplog):
    context = policy.context_length  # 64 for the micro model
    long_prompt = "x" * (context + 40) + "12+34="
    ids = policy.encode_prompt(long_prompt, reserve=3)
    assert len(ids) == context - 3 and policy.tokenizer.decode(ids).endswith("12+34=")
    assert policy.counts.truncated == 1 and "truncated" in caplog.text
    assert len(policy.generate([long_prompt], max_new_tokens=3)) == 1
    with pytest.raises(EsftError, match="cannot hold a prompt"):
        policy.encode_prompt("12", reserve=context)


def test_tokenisation_is_memoised_without_changing_ids_or_truncation_counts(policy, monkeypatch):
    import esft.policy as policy_module

    prompt = Prompt("12+34=", system="be brief", response_prefix="A:")
    first = policy.encode_prompt(prompt)
    first.append(-1)  # callers may extend what they get: the memo hands out copies
    assert policy.encode_prompt(prompt) == first[:-1]
    policy.tokenizer.chat_template = TEMPLATE
    policy.use_chat_template = True  # a different rendering is a different entry
    templated = policy.encode_prompt(prompt)
    assert templated != first[:-1]
    assert templated == policy.tokenizer(policy.format_prompt(prompt), add_special_tokens=False)["input_ids"]
    long_prompt = "x" * (policy.context_length + 5)
    for _ in range(2):
        policy.encode_prompt(long_prompt)
    assert policy.counts.truncated == 2, "every truncation is counted, cached or not"
    monkeypatch.setattr(policy_module, "TOKEN_CACHE_SIZE", 3)
    calls: list[str] = []
    tokenizer = policy.tokenizer

    class Counting:  # the tokenizer, recording what it is asked to tokenise
        def __call__(self, text, **kwargs):
            calls.append(text)
            return tokenizer(text, **kwargs)

    monkeypatch.setattr(policy, "tokenizer", Counting())
    for n in range(10):
        policy.encode(str(n))
    calls.clear()
    assert [policy.encode(str(n)) for n in (7, 8, 9)] == [tokenizer(str(n))["input_ids"] for n in (7, 8, 9)]
    assert calls == [], "the 3 newest entries are kept"
    policy.encode("0")
    assert calls == ["0"], "older entries are evicted (LRU)"


def test_left_pad_pads_on_the_left_with_a_mask(policy):
    ids, mask = policy.left_pad([[5, 6, 7], [8], []])
    pad = policy.tokenizer.pad_token_id
    assert ids.tolist() == [[5, 6, 7], [pad, pad, 8], [pad, pad, pad]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
