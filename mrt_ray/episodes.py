"""Split a reasoning trace into MRT episodes and map episode ends to token counts.

Tiling contract of `segment`: the *thinking region* of `text` is `text[region_start:region_end]`, where
`region_start` is just after the first `think_open` (0 if absent) and `region_end` is the first `think_close` after
it (`len(text)` if absent). The returned episodes tile that region exactly:

    episodes[0].start == region_start, episodes[-1].end == region_end,
    episodes[j].end == episodes[j + 1].start, episodes[j].text == text[start:end],
    "".join(e.text for e in episodes) == text[region_start:region_end]

and an empty region gives []. A blank-line separator before a boundary belongs to the START of the new episode, so
every episode but the last ends right after the last character of its last paragraph (where a forced answer is
appended). The last episode runs to `region_end` and so keeps any whitespace before `think_close` (in the embedded
task that is the "\\n" of FORCE_TEXT); `answer_cuts` strips it.
"""
from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mrt_ray.config import SegmentConfig

# separator=blank_lines: a newline, then one or more blank (empty or spaces/tabs only) lines. "\n\n", "\n\n\n" and
# "\n  \n" are each one separator. separator=double_newline (the reference's rule): exactly "\n\n". separator=lines:
# exactly "\n", so every line is a paragraph and a marker matches at a line start (the backtracking-search traces,
# whose "Backtrack to ..." line opens the next attempt with no blank line before it).
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")
_EXACT = {"double_newline": "\n\n", "lines": "\n"}
SEPARATORS = ("double_newline", "blank_lines", "lines")


@dataclass(frozen=True)
class Episode:
    start: int  # character offset into the segmented text (inclusive)
    end: int  # character offset (exclusive)
    text: str  # == segmented_text[start:end]


def thinking_region(text: str, think_open: str = "<think>", think_close: str = "</think>") -> tuple[int, int]:
    """(region_start, region_end) of the thinking region, as defined in the module docstring."""
    open_at = text.find(think_open) if think_open else -1
    start = open_at + len(think_open) if open_at >= 0 else 0
    close_at = text.find(think_close, start) if think_close else -1
    return start, (close_at if close_at >= 0 else len(text))


def _paragraphs(text: str, start: int, end: int, separator: str) -> list[tuple[int, int]]:
    """(start, end) of each paragraph of text[start:end].

    double_newline / lines: the pieces of a split on exactly "\n\n" / "\n", empty ones included (they count as
    paragraphs, as in the reference code); blank_lines: the non-blank pieces between runs of blank lines."""
    spans, pos = [], start
    if separator in _EXACT:
        sep = _EXACT[separator]
        while (k := text.find(sep, pos, end)) >= 0:
            spans.append((pos, k))
            pos = k + len(sep)
        return spans + [(pos, end)]
    for m in _BLANK_LINES.finditer(text, start, end):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, end))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _check(cfg: SegmentConfig) -> None:
    if cfg.min_gap < 0:
        raise ValueError(f"segment.min_gap={cfg.min_gap} must be >= 0")
    if cfg.max_steps < 0:
        raise ValueError(f"segment.max_steps={cfg.max_steps} must be >= 0")
    if cfg.group_size < 1:
        raise ValueError(f"segment.group_size={cfg.group_size} must be >= 1")
    if any(not m.strip() for m in cfg.markers):
        raise ValueError(f"segment.markers={cfg.markers!r} contains an empty marker")
    if cfg.separator not in SEPARATORS:
        raise ValueError(f"segment.separator={cfg.separator!r} is not one of {list(SEPARATORS)}")


def segment(
    text: str, cfg: SegmentConfig | None = None, think_open: str = "<think>", think_close: str = "</think>"
) -> list[Episode]:
    """Episodes of the thinking region of `text` (R1 rule; tiling contract in the module docstring).

    Paragraphs follow `cfg.separator` (see `_paragraphs`). Paragraph p (p >= 1) whose text starts with one of
    `cfg.markers` (case-sensitive prefix match; with blank_lines after leading whitespace; boundary=paragraph: every
    paragraph p >= 1) opens a new episode unless
    p - b <= min_gap, b being the paragraph index of the previous kept boundary (0 for the region start): every
    episode but the last has more than min_gap paragraphs. At most `max_steps` boundaries are kept (later ones are
    dropped), so a trace has at most max_steps + 1 episodes, as the reference's `max_steps`; then consecutive episodes
    are merged in groups of group_size (the last group may be smaller). cfg None: SegmentConfig() defaults.
    """
    cfg = cfg if cfg is not None else SegmentConfig()
    _check(cfg)
    start, end = thinking_region(text, think_open, think_close)
    if start == end:
        return []
    paras = _paragraphs(text, start, end, cfg.separator)
    markers = tuple(cfg.markers)
    strip = cfg.separator == "blank_lines"
    cuts = [start]  # offsets where episodes begin
    prev = 0
    for p in range(1, len(paras)):
        if len(cuts) - 1 >= cfg.max_steps:
            break
        para = text[paras[p][0]:paras[p][1]]
        # a cut that would leave an empty episode (a trace that starts with "\n\n") is skipped
        opens = cfg.boundary == "paragraph" or (para.lstrip() if strip else para).startswith(markers)
        if p - prev > cfg.min_gap and opens and paras[p - 1][1] > cuts[-1]:
            cuts.append(paras[p - 1][1])  # right after the previous paragraph: the separator opens the new episode
            prev = p
    cuts = cuts[:: cfg.group_size] + [end]
    return [Episode(s, e, text[s:e]) for s, e in zip(cuts[:-1], cuts[1:])]


def answer_cuts(text: str, episodes: Sequence[Episode]) -> list[int]:
    """Per episode, the offset after which to append the forced-answer text: its end with trailing whitespace
    removed (never before its start). For all but the last episode this equals `end`."""
    return [max(e.start, len(text[: e.end].rstrip())) for e in episodes]


def token_boundaries(
    token_ids: Sequence[int],
    episode_ends: Sequence[int],
    decode: Callable[[Sequence[int]], str],
    char_offset: int = 0,
) -> list[int]:
    """Per character end offset, the number of leading tokens whose decoded text covers it.

    `episode_ends` are offsets into a text whose first `char_offset` characters precede the completion (e.g. the
    prompt), so offset o maps to o - char_offset in `decode(token_ids)`. The result for o is the smallest i with
    len(decode(token_ids[:i])) >= o - char_offset, found by binary search (O(log n) decodes per boundary; prefix
    lengths are cached across boundaries). Assumes the decoded prefix length never decreases as tokens are added.
    Raises ValueError for an offset before `char_offset` or past the decoded completion.
    """
    ids = list(token_ids)
    cache: dict[int, int] = {}

    def length(i: int) -> int:
        if i not in cache:
            cache[i] = len(decode(ids[:i]))
        return cache[i]

    total = length(len(ids))
    out = []
    for k, offset in enumerate(episode_ends):
        rel = offset - char_offset
        if rel < 0 or rel > total:
            raise ValueError(
                f"episode_ends[{k}]={offset} maps to {rel} in the decoded completion, outside [0, {total}] "
                f"(char_offset={char_offset})"
            )
        out.append(bisect_left(range(len(ids) + 1), rel, key=length))
    return out
