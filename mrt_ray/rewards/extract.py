"""Final-answer extraction from a model completion (pure string work; equivalence is math-verify's job).

Priority, first hit wins: the text after the last `marker` (when one is given and present), the last complete
`\\boxed{...}` / `\\fbox{...}`, the text after the last `####` (GSM8K and the embedded task), the text after the last
"the answer is" / "the final answer is" (also "the final answer to <up to 60 characters> is"). The chosen span is
reduced to one answer: a `\\boxed{}` inside it wins, else its first non-empty line with math delimiters (`$...$`,
`\\(...\\)`, `\\[...\\]`) and a trailing period removed.
"""
from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)")
# "the (final) answer is", also "the final answer to this problem is" (small instruction models write it so)
_ANSWER_IS_RE = re.compile(r"the\s+(?:final\s+)?answer(?:\s+(?:to|for|of)\s+[^.\n:]{1,60}?)?\s+is\s*:?", re.IGNORECASE)
_GSM_MARK = "####"


def _boxed_content(text: str, start: int) -> str | None:
    """Content of the box command ending at `start`: `{...}` brace-matched, or `\\boxed 5` up to a space or `$`."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        if i == start:  # `\boxedx` is not a box
            return None
        return re.split(r"[\s$]", text[i:], maxsplit=1)[0] or None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None  # unbalanced: a truncated box


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{}` (or `\\fbox{}`) in `text`; None if there is none."""
    for m in reversed(list(_BOX_RE.finditer(text))):
        content = _boxed_content(text, m.end())
        if content is not None:
            return content
    return None


def _clean(span: str) -> str | None:
    """One answer from the text that follows an answer marker."""
    boxed = last_boxed(span)
    if boxed is not None:
        return boxed.strip() or None
    line = next((ln.strip() for ln in span.splitlines() if ln.strip()), "")
    for open_, close in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if line.startswith(open_):
            end = line.find(close, len(open_))
            line = line[len(open_):end] if end >= 0 else line[len(open_):]
            break
    line = line.strip().rstrip(".").strip()
    return line or None


def extract_answer(text: str, marker: str = "") -> str | None:
    """The final answer in `text` (see the module docstring for the priority); None when no answer is marked."""
    if marker and marker in text:
        return _clean(text[text.rfind(marker) + len(marker):])
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    if _GSM_MARK in text:
        return _clean(text[text.rfind(_GSM_MARK) + len(_GSM_MARK):])
    hits = list(_ANSWER_IS_RE.finditer(text))
    if hits:
        return _clean(text[hits[-1].end():])
    return None
