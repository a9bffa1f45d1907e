"""The Policy seam: one model + tokenizer, and the only ways anything in esft runs it without training it.

- `generate(prompts)`: batched greedy decoding with left padding and the KV cache (`model.generate`),
  completion-only decoding (the prompt is never part of what a reward sees; the reference HF path scored
  prompt + completion), cut at the task's stop strings.
- `exact_match(prompts, answers)`: for exact-answer tasks, one teacher-forced forward decides what greedy
  decoding would produce: the greedy completion equals the target iff the argmax at every answer position is
  the target token (and, when the budget allows more tokens, the next argmax is EOS). Used only where that is
  provably greedy decoding (`exact_match_is_greedy`: unique tokenization, one EOS id); elsewhere scorers generate.
  It is `encode_exact_match` (tokenise and pad once) + `teacher_forced_match` (score, also n stacked members),
  the split the ES step uses to encode its prompts once and score every member on them: one implementation.
- `option_logprobs(prompts, options)`: log-likelihood scoring of multiple-choice options (lm-evaluation-harness's
  acc / acc_norm), one teacher-forced forward per batch of options.
- `sample(prompts, ...)`: seeded ancestral sampling with the KV cache, the RL baselines' rollouts (`Rollout`).
- `next_token_log_probs(rows)`: full next-token distributions over given token rows (the off-task KL).

The token-level helpers other modules need to build their rows are public too: `encode` (a plain text),
`encode_prompt` (a rendered, context-fitted prompt) and `left_pad`. Gradient training (PPO, GRPO) runs
`policy.model` itself: that trains the weights, it does not score them.

End of sequence is every id in the generation config plus the tokenizer's (`eos_ids`), and padding is on the left.

Backends (`policy.backend`): `hf` runs everything on the HF model; `vllm` (esft/backends/vllm_backend.py) keeps
the HF model for teacher-forced scoring and ES bookkeeping but routes `generate` through one vLLM engine that
`watch(params)` keeps in step with every vector FlatParams writes into the HF model.

Models come from the built-in tiny default (`model.name=tiny`), a Hugging Face hub id or a local directory.
The chat template is applied when the tokenizer has one (switch: `model.chat_template`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from esft.core.prompts import Prompt
from esft.errors import EsftError

log = logging.getLogger("esft")


@dataclass
class TokenCounts:
    forward: int = 0
    generated: int = 0
    truncated: int = 0  # prompts cut to fit the context


@dataclass
class ExactMatchBatch:
    """Teacher-forced exact-match checks, tokenised and left-padded once (`Policy.encode_exact_match`).

    Kept apart from the forward so that a caller scoring the same prompts under many weights (every member of
    an ES population) encodes them once; `Policy.teacher_forced_match` scores it under the weights loaded now.
    Row i is prompt_i + target_i; its last `lengths[i]` tokens are the target (0: cannot be produced in the
    budget, scored wrong)."""

    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor
    keep: int  # logits kept per row: the longest target + 1

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class Rollout:
    """Sampled completions of a batch (`Policy.sample`): prompt ids (left-padded), completion ids (right-padded
    after EOS or the stop string). The RL baselines train on these ids, so they are what the texts decode from."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor  # 1 for sampled tokens up to and including EOS
    texts: list[str]

    @property
    def generated(self) -> int:
        return int(self.completion_mask.sum())


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a sequence: the generation config's (an int or a list: Llama 3's Instruct models end
    turns with <|eot_id|> *and* <|end_of_text|>) plus the tokenizer's own, in that order, without repeats.
    Decoding on the tokenizer's id alone would run past the end of turn the model was trained to emit."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in [*(configured if isinstance(configured, (list, tuple)) else [configured]), tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def has_unique_tokenization(tokenizer: Any) -> bool:
    """True when every text has exactly one token sequence: each non-special vocabulary entry is one symbol
    (esft's byte-level tiny tokenizer: one token per byte, no merges). Then the ids of prompt + answer are
    the prompt's ids followed by the answer's, and a greedy completion decodes to the answer iff it IS the
    answer's ids -- the two facts the teacher-forced exact-match shortcut needs. A BPE with merges (SmolLM2,
    Qwen, Llama) can spell one text several ways, so greedy decoding may reach the answer by a token path the
    forward never checks."""
    special = set(getattr(tokenizer, "all_special_tokens", ())) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    return all(len(token) == 1 for token in tokenizer.get_vocab() if token not in special)


class Policy:
    """Owns the model and tokenizer; every rollout and every score goes through here."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, use_chat_template: bool,
                 engine: Any = None) -> None:
        self.model = model.to(device).eval()
        self.engine = engine  # None: HF generate; else an object with generate(ids, ...) and load_weights, dtype
        self.tokenizer = tokenizer
        self.device = device
        self.use_chat_template = use_chat_template
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.counts = TokenCounts()
        self.context_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.eos_ids = eos_ids(model, tokenizer)
        self._token_cache: OrderedDict[tuple[Any, ...], tuple[int, ...]] = OrderedDict()

    # -- a second engine ---------------------------------------------------------------------------------
    def watch(self, params: Any) -> None:
        """Mirror every vector `params` (a FlatParams over this model) writes into the model into the engine.

        No-op on the HF backend. Eager: each member's weights reach the engine as they reach the HF model, so
        whatever scores a member (engine generate or HF teacher forcing) sees the same weights."""
        if self.engine is not None:
            self.engine.follow(params)

    # -- prompts ---------------------------------------------------------------------------------------
    def format_prompt(self, prompt: str | Prompt) -> str:
        """Render a prompt: chat template (system + user, generation prompt) when enabled, then the reply prefix."""
        if isinstance(prompt, str):
            prompt = Prompt(prompt)
        if not self.use_chat_template:
            return prompt.text + prompt.response_prefix
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        messages.append({"role": "user", "content": prompt.text})
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return rendered + prompt.response_prefix

    def _tokens(self, key: tuple[Any, ...], encode: Callable[[], list[int]]) -> list[int]:
        """Memoised tokenisation (LRU): every ES step re-scores prompts drawn from the same training set, and
        every checkpoint re-scores the same eval items, so each text is tokenised (and templated) once."""
        cached = self._token_cache.get(key)
        if cached is None:
            cached = self._token_cache[key] = tuple(encode())
            if len(self._token_cache) > TOKEN_CACHE_SIZE:
                self._token_cache.popitem(last=False)
        else:
            self._token_cache.move_to_end(key)
        return list(cached)

    def encode(self, text: str) -> list[int]:
        """Token ids of a plain text (an answer, a completion, an option): no specials, no template; memoised."""
        return self._tokens(("text", text), lambda: self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, text: str | Prompt, reserve: int = 0) -> list[int]:
        """Token ids of a rendered prompt, cut from the left to fit the context with `reserve` tokens to spare.

        A chat template already carries BOS; raw prompts get the tokenizer's own specials (e.g. Llama's BOS).
        Left truncation keeps the end of the prompt (the question and the generation prompt); every truncation
        is counted and the first one is logged, since it changes what the model sees.
        """
        template = self.use_chat_template
        ids = self._tokens(("prompt", text, template), lambda: self.tokenizer(
            self.format_prompt(text), add_special_tokens=not template)["input_ids"])
        limit = self.context_length - reserve if self.context_length else None
        if limit is not None and len(ids) > limit:
            if limit <= 0:
                raise EsftError(f"the model's context ({self.context_length} tokens) cannot hold a prompt plus "
                                f"{reserve} new tokens; lower max_new_tokens")
            if not self.counts.truncated:
                log.warning("prompt of %d tokens truncated to the model's context (%d tokens with %d reserved for "
                            "the completion); counted in later warnings", len(ids), self.context_length, reserve)
            self.counts.truncated += 1
            ids = ids[-limit:]
        return ids

    def left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask) of token rows padded on the left to one width, on the model's device: every
        forward here is left-padded, so the last column is each row's newest token."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
                mask[i, width - len(row):] = 1
        return ids.to(self.device), mask.to(self.device)

    # -- scoring ---------------------------------------------------------------------------------------
    @property
    def exact_match_is_greedy(self) -> bool:
        """May `exact_match` stand in for greedy decoding on this model? Only when it provably agrees: a
        tokenizer with unique tokenization (see has_unique_tokenization) and a single end-of-sequence id (the
        check appends exactly that id). Otherwise scorers generate."""
        if getattr(self, "_exact_is_greedy", None) is None:
            self._exact_is_greedy = len(self.eos_ids) <= 1 and has_unique_tokenization(self.tokenizer)
        return self._exact_is_greedy

    @torch.no_grad()
    def option_logprobs(self, prompts: Sequence[str | Prompt], options: Sequence[Sequence[str]],
                        batch_size: int = 64) -> list[list[float]]:
        """Summed log-probability of each option as the continuation of its prompt (lm-evaluation-harness's
        loglikelihood request): log p(option | prompt) = sum_t log softmax(logits_t)[option_t] over the
        option's tokens, teacher-forced -- no generation.

        Each prompt is run once and its KV cache shared by its options: a batch of prompts (left-padded) is
        one forward, then all their options (right-padded, positions continuing each prompt) are one forward
        over the cache rows selected per option. A real chat prompt (~100 tokens, mostly template and question)
        dwarfs its short options, so this is far cheaper than re-running prompt + option per option: 2.7x less
        wall time on 20 ARC-Challenge items with SmolLM2 (same scores), more with MMLU-Pro's 10 options.
        Items are batched so that at most `batch_size` options share a forward.

        The prompt is rendered like a rollout's (chat template with the model's default system message when
        enabled); without a template the option follows after one space, the harness's target delimiter,
        while a chat template's assistant turn starts on a fresh line and takes the option as is. Prompt and
        option are encoded separately; the harness encodes them jointly and splits, which gives the same ids
        wherever the pre-tokenizer splits at the boundary (a newline or the space before a word, as here).
        A prompt too long for the context is cut from the left, keeping room for its longest option."""
        delimiter = "" if self.use_chat_template else " "
        continuations = [[self.encode(delimiter + option) for option in choices] for choices in options]
        contexts = []
        for prompt, choices in zip(prompts, continuations):
            if not choices or not all(choices):
                raise EsftError(f"an item needs non-empty options to be scored by log-likelihood "
                                f"(prompt {str(prompt)[:60]!r})")
            contexts.append(self.encode_prompt(prompt, reserve=max(len(c) for c in choices)))
        results: list[list[float]] = []
        start = 0
        while start < len(contexts):
            stop, rows = start, 0
            while stop < len(contexts) and (stop == start or rows + len(continuations[stop]) <= batch_size):
                rows += len(continuations[stop])
                stop += 1
            results.extend(self._shared_prefix_logprobs(contexts[start:stop], continuations[start:stop]))
            start = stop
        return results

    def _cache_argument(self) -> str:
        """The forward's KV-cache keyword: `cache` from transformers 5.x (which deprecates the old name),
        `past_key_values` before."""
        import inspect

        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _shared_prefix_logprobs(self, contexts: list[list[int]], continuations: list[list[list[int]]]
                                ) -> list[list[float]]:
        """Two forwards: the contexts (keeping the KV cache and the last position's logits, which predict each
        option's first token), then every option over its context's cache rows."""
        ids, mask = self.left_pad(contexts)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        owner = torch.tensor([i for i, choices in enumerate(continuations) for _ in choices], device=self.device)
        cache = out.cache if "cache" in out else out.past_key_values  # transformers 5.x renamed the field
        cache.batch_select_indices(owner)
        rows = [c for choices in continuations for c in choices]
        width = max(len(r) for r in rows)
        option_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        option_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            option_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            option_mask[i, :len(row)] = 1
        option_ids, option_mask = option_ids.to(self.device), option_mask.to(self.device)
        lengths = mask.sum(-1)[owner]
        option_positions = lengths.unsqueeze(1) + torch.arange(width, device=self.device)
        logits = self.model(input_ids=option_ids, attention_mask=torch.cat([mask[owner], option_mask], 1),
                            position_ids=option_positions, **{self._cache_argument(): cache}).logits
        self.counts.forward += int(mask.sum()) + int(option_mask.sum())
        first = torch.log_softmax(out.logits[:, -1].float(), -1)[owner].gather(1, option_ids[:, :1]).squeeze(1)
        step = LOG_SOFTMAX_ROWS
        rest = torch.cat([
            torch.log_softmax(logits[i:i + step, :-1].float(), -1).gather(-1, option_ids[i:i + step, 1:].unsqueeze(-1))
            .squeeze(-1) for i in range(0, len(rows), step)])
        totals = (first + torch.where(option_mask[:, 1:].bool(), rest, 0.0).sum(-1)).tolist()  # padding adds 0
        grouped, offset = [], 0
        for choices in continuations:
            grouped.append(totals[offset:offset + len(choices)])
            offset += len(choices)
        return grouped

    @torch.no_grad()
    def exact_match(self, prompts: Sequence[str | Prompt], answers: Sequence[str], max_new_tokens: int,
                    batch_size: int = 256) -> torch.Tensor:
        """Bool per prompt: would greedy decoding (max_new_tokens) produce exactly `answer`? One forward per
        `batch_size` prompts, each batch padded to its own longest row."""
        results = []
        for start in range(0, len(prompts), batch_size):
            batch = self.encode_exact_match(prompts[start:start + batch_size], answers[start:start + batch_size],
                                            max_new_tokens)
            results.append(self.teacher_forced_match(batch))
        return torch.cat(results) if results else torch.zeros(0, dtype=torch.bool)

    def exact_match_row(self, prompt: str | Prompt, answer: str, max_new_tokens: int) -> tuple[list[int], list[int]]:
        """(prompt + target ids, target ids) of one teacher-forced exact-match check. The target is the
        answer, plus EOS when the budget allows more tokens (greedy must stop right there); empty when the
        answer cannot be produced within the budget (scored wrong)."""
        target = self.encode(answer)
        eos = self.tokenizer.eos_token_id
        if len(target) > max_new_tokens:
            target = []
        elif len(target) < max_new_tokens and eos is not None:
            target = target + [eos]
        return self.encode_prompt(prompt, reserve=len(target)) + target, target

    def encode_exact_match(self, prompts: Sequence[str | Prompt], answers: Sequence[str],
                           max_new_tokens: int) -> ExactMatchBatch:
        """The exact-match checks of `prompts` (rows of `exact_match_row`), left-padded into one batch, ready for
        `teacher_forced_match` under whatever weights the model holds then (it needs at least one prompt)."""
        rows, lengths = [], []
        for prompt, answer in zip(prompts, answers):
            row, target = self.exact_match_row(prompt, answer, max_new_tokens)
            rows.append(row)
            lengths.append(len(target))
        ids, mask = self.left_pad(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ExactMatchBatch(ids, mask, positions, torch.tensor(lengths, device=ids.device),
                               max(lengths, default=0) + 1)

    @torch.no_grad()
    def teacher_forced_match(self, batch: ExactMatchBatch, members: int = 1,
                             rows_per_forward: int | None = None) -> torch.Tensor:
        """Bool per (member, row), member-major, on the CPU: does greedy decoding produce each row's target?

        `members` > 1 stacks that many copies of the batch into ONE forward: the lowrank ES evaluator's hooks
        add each member's correction to its own block of rows, so a forward must hold whole members. A single
        member's rows may be split into forwards of `rows_per_forward` (default: all in one); the slices keep
        the batch's padding, so a row's logits do not depend on how the rows are split."""
        if members == 1:
            step = rows_per_forward or batch.rows
            parts = [self._match_rows(batch, slice(s, s + step), 1) for s in range(0, batch.rows, step)]
            return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
        return self._match_rows(batch, slice(None), members)

    def _match_rows(self, batch: ExactMatchBatch, rows: slice, members: int) -> torch.Tensor:
        """One forward over `rows` of the batch, repeated for `members`: the argmax at each of a row's last
        `lengths` positions must be the token there (vectorised: a stacked batch has members x rows rows)."""
        ids, mask, positions = (t[rows].repeat(members, 1) for t in (batch.ids, batch.mask, batch.positions))
        lengths = batch.lengths[rows].repeat(members)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            logits_to_keep=batch.keep).logits
        self.counts.forward += int(mask.sum())
        width = batch.keep - 1
        predicted = logits[:, :-1].argmax(-1)  # predictions for the last keep-1 tokens
        actual = ids[:, ids.shape[1] - width:]
        scored = torch.arange(width, device=ids.device) >= (width - lengths).unsqueeze(1)
        return (((predicted == actual) | ~scored).all(-1) & (lengths > 0)).cpu()

    @torch.no_grad()
    def next_token_log_probs(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Log-softmax (float32) over the vocabulary at every position of `rows` left-padded (`left_pad`): entry
        [i, t] is the distribution of the token after column t of the padded batch. For comparisons of whole
        distributions (the off-task KL); padded columns hold values too, so callers weight the positions they
        mean. Not added to `counts`: a diagnostic's forwards are not the run's compute."""
        ids, mask = self.left_pad(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
        return torch.log_softmax(logits, dim=-1)

    # -- sampling --------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompts: Sequence[str | Prompt], max_new_tokens: int, temperature: float,
               generator: torch.Generator, stop: Sequence[str] = ()) -> Rollout:
        """Ancestral sampling at `temperature` (0: greedy) with the KV cache, drawing from `generator` (seeded
        per step, so a resumed run samples what an uninterrupted one would; HF `generate` only uses the global
        RNG). A row ends at EOS or at the token that completes one of `stop` (as vLLM's `stop` ends it): later
        positions are padding and outside `completion_mask`, so a loss trains exactly the tokens whose text
        (cut like `generate`'s) the reward scored. Prompts are not truncated to leave room for the completion."""
        model, pad, eos = self.model, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        ids, mask = self.left_pad([self.encode_prompt(p) for p in prompts])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=ids.device)
        tokens: list[torch.Tensor] = []
        full_mask, next_position = mask, positions[:, -1:] + 1
        cache_name = self._cache_argument()
        for t in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(ids.device)
            else:
                token = logits.argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            tokens.append(token)
            done = done | (token == eos)
            if stop:
                done = done | _ends_in_stop(self.tokenizer, tokens, done, stop)
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            full_mask = torch.cat([full_mask, (~done).long()[:, None]], dim=1)
            cache = out.cache if cache_name == "cache" else out.past_key_values
            out = model(input_ids=token[:, None], attention_mask=full_mask, position_ids=next_position,
                        use_cache=True, **{cache_name: cache})
            next_position = next_position + 1
        completion = torch.stack(tokens, dim=1)
        completion_mask = _completion_mask(completion, eos)
        if stop:
            completion, completion_mask = _cut_rows_at_stop(self.tokenizer, completion, completion_mask, stop, pad)
        self.counts.generated += int(completion_mask.sum())
        self.counts.forward += int(mask.sum()) + int(completion_mask[:, :-1].sum())
        texts = [cut_at_stop(t, stop) for t in self.tokenizer.batch_decode(completion, skip_special_tokens=True)]
        return Rollout(ids, mask, completion, completion_mask, texts)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str | Prompt], max_new_tokens: int, stop: Sequence[str] = (),
                 batch_size: int = 64) -> list[str]:
        """Greedy completions (completion text only), truncated just after the first stop string."""
        if self.engine is not None:
            return self._generate_engine(prompts, max_new_tokens, stop)
        completions: list[str] = []
        pad, eos = self.tokenizer.pad_token_id, self.eos_ids or None
        for start in range(0, len(prompts), batch_size):
            rows = [self.encode_prompt(p, reserve=max_new_tokens) for p in prompts[start:start + batch_size]]
            ids, mask = self.left_pad(rows)
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=pad, eos_token_id=eos,
                                      stop_strings=list(stop) or None, tokenizer=self.tokenizer if stop else None)
            new = out[:, ids.shape[1]:]
            generated = int((new != pad).sum()) if pad is not None else new.numel()
            self.counts.generated += generated
            self.counts.forward += int(mask.sum()) + generated
            for text in self.tokenizer.batch_decode(new, skip_special_tokens=True):
                completions.append(cut_at_stop(text, stop))
        return completions

    def _generate_engine(self, prompts: Sequence[str | Prompt], max_new_tokens: int,
                         stop: Sequence[str]) -> list[str]:
        """The engine decodes; the Policy encodes and decodes, so both backends see identical token ids
        (template, truncation) and cut completions identically. The engine batches internally."""
        rows = [self.encode_prompt(p, reserve=max_new_tokens) for p in prompts]
        outputs = self.engine.generate(rows, max_new_tokens, stop)
        generated = sum(len(ids) for ids in outputs)
        self.counts.generated += generated
        self.counts.forward += sum(len(r) for r in rows) + generated
        texts = self.tokenizer.batch_decode(outputs, skip_special_tokens=True)
        return [cut_at_stop(text, stop) for text in texts]


#: prompts and answers whose token ids a Policy keeps (a few MB for short prompts)
TOKEN_CACHE_SIZE = 1 << 15
#: options whose log-softmax over the vocabulary is taken at once under loglik scoring (bounds the extra memory
#: to this many rows of logits instead of a second copy of all of them)
LOG_SOFTMAX_ROWS = 8


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Truncate after the first stop string; the stop string is kept (format rewards check closing tags)."""
    cut = len(text)
    for marker in stop:
        index = text.find(marker)
        if index != -1:
            cut = min(cut, index + len(marker))
    return text[:cut]


def _ends_in_stop(tokenizer: Any, tokens: list[torch.Tensor], done: torch.Tensor,
                  stop: Sequence[str]) -> torch.Tensor:
    """Rows still running whose newest token completes a stop string: a cheap check on the last few tokens
    (a stop string of L characters ends within the last L + 2 tokens); `_cut_rows_at_stop` makes it exact."""
    window = max(len(marker) for marker in stop) + 2
    recent = torch.stack(tokens[-window:], dim=1).cpu()
    ended = torch.zeros_like(done)
    for row in (~done).nonzero().flatten().tolist():
        text = tokenizer.decode(recent[row].tolist(), skip_special_tokens=True)
        ended[row] = any(marker in text for marker in stop)
    return ended


def _cut_rows_at_stop(tokenizer: Any, completion: torch.Tensor, mask: torch.Tensor, stop: Sequence[str],
                      pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad and unmask every token after the one that completes a row's first stop string."""
    completion, mask = completion.clone(), mask.clone()
    for row in range(completion.shape[0]):
        length = int(mask[row].sum())
        keep = tokens_through_stop(tokenizer, completion[row, :length].tolist(), stop)
        completion[row, keep:] = pad
        mask[row, keep:] = 0
    return completion, mask


def _completion_mask(completion: torch.Tensor, eos: int | None) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it."""
    if eos is None:
        return torch.ones_like(completion)
    is_eos = (completion == eos).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_eos).long()


def tokens_through_stop(tokenizer: Any, ids: Sequence[int], stop: Sequence[str]) -> int:
    """How many of the completion tokens `ids` to keep: all of them, or through the token that completes the
    first stop string. The RL baselines train on exactly these tokens, so that what the policy is rewarded
    for (the text cut at the stop string, see cut_at_stop) is what its gradient sees -- as when vLLM or
    `generate(stop_strings=...)` ends the sequence there.

    Binary search on the decoded prefix: "some stop string occurs in decode(ids[:k])" is monotone in k.
    """
    if not stop or not ids:
        return len(ids)

    def has_stop(k: int) -> bool:
        text = tokenizer.decode(list(ids[:k]), skip_special_tokens=True)
        return any(marker in text for marker in stop)

    if not has_stop(len(ids)):
        return len(ids)
    low, high = 1, len(ids)  # has_stop(high) holds; find the smallest such k
    while low < high:
        middle = (low + high) // 2
        if has_stop(middle):
            high = middle
        else:
            low = middle + 1
    return low

