"""Write esft/tasks/bundled/smollm2_sums_{train,eval}.jsonl: two-digit sums as a `reward_kind: numeric` jsonl task.

The target task of the `experiment=smollm2_cpu` preset (README "A real model on CPU: SmolLM2").

Why this task: a 135M instruct model knows small sums but answers them unreliably and wordily; the prompt asks
for the bare number, prompts are ~50 tokens with the chat template and answers a few tokens, so one ES step of
N members fits a CPU budget (the paper's countdown / gsm8k / proofwriter need hundreds of generated tokens).
Operand pairs are drawn without replacement from [10, 99]^2 by a fixed seed; the first 200 lines train (the
papers' train size), the rest are the held-out pool `eval_size` draws from (jsonl: {train:, eval:} split).
Re-running writes identical files.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PROMPT = "What is {a} + {b}? Reply with only the number."


def items(count: int, seed: int) -> list[dict[str, str]]:
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    chosen = random.Random(seed).sample(pairs, count)
    return [{"prompt": PROMPT.format(a=a, b=b), "answer": str(a + b)} for a, b in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "esft" / "tasks" / "bundled")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--eval", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    rows = items(args.train + args.eval, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:args.train]), ("eval", rows[args.train:])):
        path = args.out / f"smollm2_sums_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"wrote {len(part)} items to {path}")


if __name__ == "__main__":
    main()
