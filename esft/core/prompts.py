"""What a policy continues: the type tasks produce and the Policy renders, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """What the policy continues: the user text, plus the paper's optional system message and the start of the
    assistant's reply (e.g. countdown's "Let me solve this step by step.\n<think>"). The policy renders it with
    the chat template when there is one, else as plain text + prefix."""

    text: str
    system: str | None = None
    response_prefix: str = ""
