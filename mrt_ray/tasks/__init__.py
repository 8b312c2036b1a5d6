"""Prompt sources: the embedded chain-arithmetic task and real math data, behind one `PromptSource`."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # the text the policy continues (template applied)
    answer: str  # gold final answer
    meta: dict = field(default_factory=dict, compare=False, hash=False)
