"""GPU check for policy.backend=vllm (needs CUDA and `pip install 'esft[vllm]'`; not run in CI).

Builds a random-init ~0.5B Qwen2 (Qwen2.5-0.5B shapes) with the tiny model's byte-level tokenizer, saves both
with save_pretrained to a temp dir, then runs N ES steps on a generated-completion task with backend hf and
with backend vllm from identical start weights. Prints steps/s for each and asserts the first step's member
rewards are equal (greedy decoding, same weights: bf16 kernels may differ between engines, so later steps
are reported, not asserted). Usage: python scripts/gpu_check_vllm.py [--steps 3] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from esft.es.trainer import ESTrainer
from esft.models.loading import load_policy
from esft.models.tiny import build_tokenizer
from esft.tasks.base import Example, Task


class DigitShare(Task):
    """Generated task: reward = share of digits among the first 4 characters (random models vary on it)."""

    name = "digit_share"
    exact_answer = False
    max_new_tokens = 8

    def __init__(self, n: int = 64) -> None:
        self._examples = [Example(prompt=f"{i:02d}+{(7 * i) % 100:02d}=", answer="0") for i in range(n)]

    def train_examples(self):
        return self._examples

    def eval_examples(self):
        return self._examples

    def score(self, completion: str, example: Example) -> float:
        return sum(ch.isdigit() for ch in completion[:4]) / 4


def save_random_qwen(path: str) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def run(backend: str, path: str, dtype: str, steps: int) -> tuple[list[list[float]], float]:
    policy = load_policy({"name": path, "dtype": dtype, "device": "cuda", "chat_template": False},
                                policy_cfg={"backend": backend, "gpu_memory_utilization": 0.4})
    rewards: list[list[float]] = []
    es = {"population_size": 8, "sigma": 1e-3, "alpha": 5e-4, "antithetic": True, "shaping": "zscore",
          "evaluator": "inplace", "prompts_per_step": 64, "cache_noise": True, "noise": "iid"}
    trainer = ESTrainer(policy, es, {"kind": "l2", "lambda": 1.0, "anchor": "start"}, seed=0,
                        replay_log=lambda row: None, batch_size=512)
    evaluate = trainer.population.evaluate

    def recording(seeds, fitness, members=None):  # keep each step's per-member rewards
        result = evaluate(seeds, fitness, members)
        rewards.append(result[0])
        return result

    trainer.population.evaluate = recording
    trainer.set_stage(0, DigitShare())
    trainer.step(0)  # warm-up (CUDA graphs, allocator), not timed
    torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(1, steps + 1):
        trainer.step(step)
    torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - started)
    del trainer, policy
    torch.cuda.empty_cache()
    return rewards, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as path:
        save_random_qwen(path)
        hf_rewards, hf_rate = run("hf", path, args.dtype, args.steps)
        vllm_rewards, vllm_rate = run("vllm", path, args.dtype, args.steps)
    print(f"hf:   {hf_rate:.3f} steps/s  first-step rewards {hf_rewards[0]}")
    print(f"vllm: {vllm_rate:.3f} steps/s  first-step rewards {vllm_rewards[0]}")
    for step, (a, b) in enumerate(zip(hf_rewards, vllm_rewards)):
        print(f"step {step}: max |reward diff| = {max(abs(x - y) for x, y in zip(a, b)):.4f}")
    assert hf_rewards[0] == vllm_rewards[0], "first-step member rewards differ between hf and vllm"
    print("OK")


if __name__ == "__main__":
    main()
