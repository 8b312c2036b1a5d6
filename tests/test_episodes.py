"""Episode segmentation (tiling, R1 rule knobs, embedded styles) and token boundaries."""
from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrt_ray.config import SegmentConfig
from mrt_ray.episodes import Episode, answer_cuts, segment, thinking_region, token_boundaries
from mrt_ray.tasks.embedded import FORCE_TEXT, make_problem, make_trace

EMBEDDED = SegmentConfig(min_gap=0)
BLANK = SegmentConfig(min_gap=0, separator="blank_lines")

# paragraphs: 0 A1, 1 A2, 2 "Wait, B1", 3 B2, 4 B3, 5 "Alternatively, C1", 6 "But wait, D1", 7 D2
R1 = (
    "Q: 1+1?\n<think>\nA1\n\nA2\n\nWait, B1\n\nB2\n\n\nB3\n\nAlternatively, C1\n\nBut wait, D1\n\nD2\n</think>\n"
    "The answer is 2."
)


def assert_tiles(text: str, eps: list[Episode], start: int, end: int) -> None:
    assert eps[0].start == start and eps[-1].end == end
    for a, b in zip(eps[:-1], eps[1:]):
        assert a.end == b.start and a.start < a.end
    assert all(e.text == text[e.start:e.end] for e in eps)
    assert "".join(e.text for e in eps) == text[start:end]


def after(text: str, para: str) -> int:
    """Offset right after the first occurrence of `para`."""
    return text.index(para) + len(para)


def starts(eps: list[Episode]) -> list[int]:
    return [e.start for e in eps]


def test_region_bounds():
    assert thinking_region(R1) == (after(R1, "<think>"), R1.index("</think>"))
    assert thinking_region("no tags") == (0, 7)
    assert thinking_region("a</think>b") == (0, 1)
    assert thinking_region("x<think>yz") == (8, 10)
    # a closing tag before the opening one is not the end of the region
    assert thinking_region("</think><think>ab</think>") == (15, 17)


def test_r1_default_min_gap_2():
    eps = segment(R1)  # default SegmentConfig: min_gap 2
    # "Wait, B1" is paragraph 2: 2 - 0 <= 2, skipped; "Alternatively" (5) kept; "But wait" (6) within 1 of 5
    assert starts(eps) == [after(R1, "<think>"), after(R1, "B3")]
    assert eps[1].text == "\n\nAlternatively, C1\n\nBut wait, D1\n\nD2\n"
    assert_tiles(R1, eps, *thinking_region(R1))


@pytest.mark.parametrize(
    "min_gap, cut_after",
    [(0, ["A2", "B3", "C1"]), (1, ["A2", "B3"]), (2, ["B3"]), (5, ["C1"]), (6, [])],
)
def test_min_gap(min_gap, cut_after):
    # min_gap 5: "Alternatively" (5 - 0 <= 5) is skipped, "But wait" (6 - 0 > 5) opens the second episode
    eps = segment(R1, SegmentConfig(min_gap=min_gap))
    assert starts(eps) == [after(R1, "<think>")] + [after(R1, p) for p in cut_after]
    assert_tiles(R1, eps, *thinking_region(R1))


def test_max_steps_counts_boundaries_as_the_reference():
    """The reference's max_steps caps the boundaries: max_steps + 1 episodes (its 49 gives 50)."""
    eps = segment(R1, SegmentConfig(min_gap=0, max_steps=1))
    assert starts(eps) == [after(R1, "<think>"), after(R1, "A2")]
    assert eps[1].end == R1.index("</think>")
    assert len(segment(R1, SegmentConfig(min_gap=0, max_steps=2))) == 3
    assert len(segment(R1, SegmentConfig(min_gap=0, max_steps=0))) == 1


def test_double_newline_is_the_reference_split():
    """separator=double_newline splits on exactly "\\n\\n": an empty piece counts as a paragraph, and a piece that
    starts with whitespace never matches a marker (as the notebook's str.split + startswith)."""
    ref = SegmentConfig(min_gap=0)
    assert ref.separator == "double_newline"
    # "a\n\n\nWait" -> pieces "a", "\nWait": no boundary; blank_lines sees one
    assert len(segment("a\n\n\nWait, b", ref)) == 1
    assert len(segment("a\n\n\nWait, b", SegmentConfig(min_gap=0, separator="blank_lines"))) == 2
    # "a\n\n\n\nWait" -> "a", "", "Wait": the empty piece is paragraph 1, so min_gap=1 still cuts at paragraph 2
    text = "a\n\n\n\nWait, b"
    assert [e.text for e in segment(text, SegmentConfig(min_gap=1))] == ["a\n\n", "\n\nWait, b"]
    assert len(segment(text, SegmentConfig(min_gap=1, separator="blank_lines"))) == 1
    assert len(segment("a\n\n  Wait, b", ref)) == 1  # no strip before matching


@pytest.mark.parametrize("group, cut_after", [(2, ["B3"]), (3, ["C1"]), (4, []), (1, ["A2", "B3", "C1"])])
def test_group_size(group, cut_after):
    eps = segment(R1, SegmentConfig(min_gap=0, group_size=group))
    assert starts(eps) == [after(R1, "<think>")] + [after(R1, p) for p in cut_after]
    assert_tiles(R1, eps, *thinking_region(R1))


def test_separator_goes_to_the_new_episode():
    text = "<think>a\nb\n\n\n\nWait, c\n \n\tWait, d</think>"
    eps = segment(text, BLANK)
    assert [e.text for e in eps] == ["a\nb", "\n\n\n\nWait, c", "\n \n\tWait, d"]


def test_marker_rules():
    cfg = BLANK
    assert len(segment("a\nWait, b", cfg)) == 1  # a single newline is not a paragraph break
    assert len(segment("a\n\nwait, b", cfg)) == 1  # case-sensitive
    assert len(segment("a\n\n  Wait, b", cfg)) == 2  # stripped text begins with the marker
    assert len(segment("a\n\nIs there another way to think about this? b", cfg)) == 2
    custom = SegmentConfig(markers=["Hmm"], min_gap=0)
    assert [e.text for e in segment("x\n\nWait y\n\nHmm z", custom)] == ["x\n\nWait y", "\n\nHmm z"]


def test_every_paragraph_opens_an_episode():
    """boundary=paragraph: a model that never writes "Wait" (SmolLM2) gets one episode per paragraph of its whole
    completion (no thinking tags), still under min_gap, max_steps and group_size."""
    text = "To add them:\n\n23 + 45 = 68\n\n68 - 12 = 56\n\nThe answer is 56."
    para = SegmentConfig(boundary="paragraph", min_gap=0, separator="blank_lines")
    eps = segment(text, para)
    assert [e.text for e in eps] == ["To add them:", "\n\n23 + 45 = 68", "\n\n68 - 12 = 56", "\n\nThe answer is 56."]
    assert_tiles(text, eps, 0, len(text))
    assert len(segment(text, SegmentConfig(min_gap=0, separator="blank_lines"))) == 1  # markers: no "Wait", one
    assert len(segment(text, SegmentConfig(boundary="paragraph", min_gap=1))) == 2
    assert len(segment(text, SegmentConfig(boundary="paragraph", min_gap=0, max_steps=2))) == 3


def test_no_tags_empty_and_blank():
    text = "A\n\nWait, B"
    assert segment(text, EMBEDDED) == [Episode(0, 1, "A"), Episode(1, 10, "\n\nWait, B")]
    assert segment("") == []
    assert segment("q<think></think>a") == []
    assert segment("<think>\n\n</think>") == [Episode(7, 9, "\n\n")]  # blank region: one episode, still tiles


def test_leading_separator_and_marker_first():
    # a marker in the first paragraph never opens an empty episode; a leading separator stays in episode 0
    text = "<think>\n\nWait, a\n\nWait, b\n\n</think>"
    eps = segment(text, EMBEDDED)
    assert [e.text for e in eps] == ["\n\nWait, a", "\n\nWait, b\n\n"]
    assert answer_cuts(text, eps) == [after(text, "Wait, a"), after(text, "Wait, b")]


def test_custom_tags():
    text = "<reason>A\n\nWait, B<end>tail"
    eps = segment(text, EMBEDDED, think_open="<reason>", think_close="<end>")
    assert [e.text for e in eps] == ["A", "\n\nWait, B"]


@pytest.mark.parametrize(
    "field, value",
    [("min_gap", -1), ("max_steps", -1), ("group_size", 0), ("markers", ["Wait", " "]), ("separator", "tab")],
)
def test_bad_config(field, value):
    with pytest.raises(ValueError, match=field):
        segment(R1, SegmentConfig(**{field: value}))


@pytest.mark.parametrize("style, counts", [("concise", {1}), ("stepwise", {1}), ("verbose", {2, 3}), ("repair", {2})])
def test_embedded_styles(style, counts):
    seen = set()
    for i in range(40):
        problem = make_problem(0, "train", i)
        completion = make_trace(problem, style, random.Random(i))
        full = problem.prompt + completion
        eps = segment(full, EMBEDDED)
        seen.add(len(eps))
        assert_tiles(full, eps, *thinking_region(full))
        assert len(segment(completion, EMBEDDED)) == len(eps)  # same without the prompt's <think>
        cuts = answer_cuts(full, eps)
        assert cuts[:-1] == [e.end for e in eps[:-1]]
        # forcing after the last episode reproduces the training trace exactly
        assert full[: cuts[-1]] + FORCE_TEXT + problem.answer == full
        for c in cuts[:-1]:  # each later episode opens with the blank line and "Wait"
            assert full[c:].startswith("\n\nWait")
    assert seen <= counts and (style != "verbose" or seen == counts)


# --------------------------------------------------------------------------- token boundaries


def char_decode(ids):
    return "".join(chr(i) for i in ids)


def test_token_boundaries_char_level():
    prompt, completion = "P<think>", "ab\n\nWait, c"
    ids = [ord(ch) for ch in completion]
    eps = segment(prompt + completion, EMBEDDED)
    ends = [e.end for e in eps]
    assert ends == [10, 19]
    assert token_boundaries(ids, ends, char_decode, char_offset=len(prompt)) == [2, 11]
    assert token_boundaries(ids, [0, 5], char_decode) == [0, 5]


VOCAB = {0: "ab", 1: "c", 2: "def", 3: "\n\n", 4: "Wait", 5: ", x"}


def vocab_decode(ids):
    return "".join(VOCAB[i] for i in ids)


def test_token_boundaries_multichar():
    ids = [0, 1, 2, 3, 0]  # "abcdef\n\nab": prefix lengths 0, 2, 3, 6, 8, 10
    got = token_boundaries(ids, [0, 1, 2, 3, 4, 6, 7, 8, 10], vocab_decode)
    assert got == [0, 1, 1, 2, 3, 3, 4, 4, 5]
    # episode ends from segment map to whole tokens: "abc" | "\n\nWait, x"
    text = vocab_decode([0, 1, 3, 4, 5])
    eps = segment(text, EMBEDDED)
    assert [e.text for e in eps] == ["abc", "\n\nWait, x"]
    assert token_boundaries([0, 1, 3, 4, 5], [e.end for e in eps], vocab_decode) == [2, 5]


def test_token_boundaries_log_decodes():
    ids = [ord("x")] * 1000
    calls = []

    def counting(prefix):
        calls.append(len(prefix))
        return char_decode(prefix)

    assert token_boundaries(ids, [0, 1, 337, 1000], counting) == [0, 1, 337, 1000]
    assert len(calls) <= 1 + 4 * (math.ceil(math.log2(1001)) + 1)


def test_token_boundaries_bad_offsets():
    with pytest.raises(ValueError, match=r"episode_ends\[1\]=12"):
        token_boundaries([0, 1], [2, 12], vocab_decode)
    with pytest.raises(ValueError, match="char_offset=5"):
        token_boundaries([0, 1], [3], vocab_decode, char_offset=5)


# --------------------------------------------------------------------------- property test

PARAS = ["Wait, x", "But wait y", "Alternatively z", "plain", "1+2=3", "  Wait indented", "a\nWait inside", "wait"]
SEPS = ["\n\n", "\n\n\n", "\n \n", "\n\t\n\n"]


@st.composite
def traces(draw):
    n = draw(st.integers(0, 12))
    body = ""
    for k in range(n):
        if k or draw(st.booleans()):
            body += draw(st.sampled_from(SEPS))
        body += draw(st.sampled_from(PARAS))
    if draw(st.booleans()):
        body += draw(st.sampled_from(SEPS + ["\n", ""]))
    head = draw(st.sampled_from(["", "Q?\n<think>", "Q?<think>\n"]))
    tail = draw(st.sampled_from(["", "</think>\nans", "\n</think>"]))
    cfg = SegmentConfig(
        min_gap=draw(st.integers(0, 3)), max_steps=draw(st.integers(0, 5)), group_size=draw(st.integers(1, 3)),
        separator=draw(st.sampled_from(["double_newline", "blank_lines"])),
    )
    return head + body + tail, cfg


@settings(max_examples=300, deadline=None)
@given(traces())
def test_property_tiling(case):
    text, cfg = case
    eps = segment(text, cfg)
    start, end = thinking_region(text)
    if start == end:
        assert eps == []
        return
    assert_tiles(text, eps, start, end)
    assert 1 <= len(eps) <= cfg.max_steps + 1
    markers = tuple(cfg.markers)
    if cfg.separator == "blank_lines":
        assert all(e.text.lstrip().startswith(markers) for e in eps[1:])
        assert all(not e.text[-1].isspace() for e in eps[:-1])  # cut right after the last paragraph character
    else:  # each later episode is "\n\n" + a piece that starts with a marker
        assert all(e.text.startswith("\n\n") and e.text[2:].startswith(markers) for e in eps[1:])
    ids = [ord(ch) for ch in text[start:]]
    assert token_boundaries(ids, [e.end for e in eps], char_decode, char_offset=start) == [e.end - start for e in eps]
