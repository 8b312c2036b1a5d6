"""MRT's backtracking-search form on the embedded task: the trace format (attempts, backtrack lines, answers), its
segmentation into one episode per attempt, the suffix-only SFT batch, the bootstrap cache key, the config rules, the
linearised-search vote, and two MRT steps on the real stack with the preset."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mrt_ray.bootstrap import build_tokenizer, cache_key, sft_batch
from mrt_ray.config import ConfigError, SegmentConfig, TaskConfig, load_config
from mrt_ray.episodes import answer_cuts, segment
from mrt_ray.eval.search import search_stats, vote_score
from mrt_ray.tasks.backtrack import (
    ATTEMPTS,
    _redo_from,
    attempt_answers,
    search_example,
    suffix_start,
)
from mrt_ray.tasks.embedded import FORCE_TEXT, grade, make_problem
from mrt_ray.validation import validate

PRESET = load_config(None, ["task=embedded_backtrack"])
SEARCH = (  # hand-written: a slip at Node 2, a backtrack to it, the fix
    "Node 1: 3+5-2=6\nNode 2: 6+4-1=8\nso 8\nBacktrack to Line 2\nNode 2: 6+4=10\nNode 3: 10-1=9\nso 9"
    + FORCE_TEXT + "9"
)
NODE = re.compile(r"^Node (\d+): (-?\d+(?:[+-]\d+)*)=(-?\d+)$")  # a wrong attempt can go below 0


def _examples(n: int = 400, tc: TaskConfig | None = None):
    return [search_example(tc or PRESET.task, seed, i) for seed in (0, 3) for i in range(n // 2)]


def _thinking(trace: str) -> str:
    return trace[: trace.index(FORCE_TEXT)]


def _kind(trace: str) -> str:
    lines = _thinking(trace).split("\n")
    backs = [ln for ln in lines if ln.startswith("Backtrack to")]
    answers = attempt_answers(trace)
    if not backs:
        return "direct"
    if len(backs) == 2:
        return "deep"
    if len(set(answers)) == 1:
        return "redundant"
    return "line" if backs[0].startswith("Backtrack to Line") else "beginning"


# --------------------------------------------------------------------------- the format


def test_examples_are_pure_functions_of_seed_and_index() -> None:
    assert search_example(PRESET.task, 0, 5) == search_example(PRESET.task, 0, 5)
    assert search_example(PRESET.task, 0, 5)[1] != search_example(PRESET.task, 1, 5)[1]
    # the same problems as the r1 traces' SFT stream
    p, _ = search_example(PRESET.task, 0, 5)
    assert p == make_problem(0, "sft", 5, PRESET.task.min_terms, PRESET.task.max_terms, PRESET.task.max_operand,
                             PRESET.task.max_value)


def test_golden_trace() -> None:
    """Changing the traces changes this string: bump backtrack.FORMAT too (the bootstrap cache key)."""
    _, trace = search_example(TaskConfig(), 0, 3)
    assert trace == ("Node 1: 2+3+1=6\nNode 2: 6+9+0=16\nso 16\nBacktrack to Line 2\nNode 2: 6+9=15\n"
                     "Node 3: 15+0=15\nso 15\n</think>\n#### 15")


def test_redo_from_keeps_the_steps_before_the_node() -> None:
    terms, ops = [3, 5, 2, 4, 1], ["+", "-", "+", "-"]
    assert _redo_from(terms, ops, 2, 2) == ["Node 2: 6+4=10", "Node 3: 10-1=9", "so 9"]
    assert _redo_from(terms, ops, 2, 1) == ["Node 1: 3+5=8", "Node 2: 8-2=6", "Node 3: 6+4=10", "Node 4: 10-1=9",
                                            "so 9"]


def test_every_search_is_well_formed_and_ends_right() -> None:
    """Each attempt is "Node k: ..." steps numbered on from where it starts and "so X"; an attempt's answer is right
    exactly when all its steps are; a backtrack to Line N redoes from Node N after right kept steps; the final
    answer is right."""
    kinds = Counter()
    for p, trace in _examples():
        assert grade(trace, p.answer) and trace.endswith(FORCE_TEXT + p.answer)
        attempts = [[]]
        for ln in _thinking(trace).split("\n"):
            attempts += [[ln]] if ln.startswith("Backtrack to") else []
            attempts[-1] += [] if ln.startswith("Backtrack to") else [ln]
        answers = attempt_answers(trace)
        assert len(answers) == len(attempts) and answers[-1] == p.answer
        kept: list[re.Match] = []
        for k, att in enumerate(attempts):
            body = att[1:] if k else att
            assert body[-1] == f"so {answers[k]}"
            nodes = [NODE.match(ln) for ln in body[:-1]]
            first = int(nodes[0].group(1))
            assert all(int(m.group(1)) == first + i for i, m in enumerate(nodes))
            right = all(eval(m.group(2)) == int(m.group(3)) for m in nodes)  # noqa: S307 digits and +- only
            if k:  # the redo starts at the node backtracked to, after right kept steps
                assert first == (1 if att[0] == "Backtrack to beginning" else int(att[0].split()[-1]))
                assert all(eval(m.group(2)) == int(m.group(3)) for m in kept[: first - 1])  # noqa: S307
                right = right and all(eval(m.group(2)) == int(m.group(3)) for m in kept[: first - 1])  # noqa: S307
            assert right == (answers[k] == p.answer)
            kept = kept[: first - 1] + nodes
        kinds[_kind(trace)] += 1
    assert set(kinds) == {"direct", "line", "beginning", "deep", "redundant"}, kinds


def test_harder_problems_backtrack_more() -> None:
    rows = _examples(1200)
    fixes = {frac: [len(set(attempt_answers(t))) > 1 for p, t in rows if p.meta["difficulty_frac"] == frac]
             for frac in (0, 1)}  # a search whose attempts disagree corrects a mistake
    easy, hard = fixes[0], fixes[1]
    assert sum(hard) / len(hard) > sum(easy) / len(easy) + 0.2


def test_searches_fit_the_presets_budget() -> None:
    assert max(len(t) for _, t in _examples(2000)) <= PRESET.rollout.max_new_tokens  # one token per character


def test_suffix_start() -> None:
    assert SEARCH[suffix_start(SEARCH):] == "Node 2: 6+4=10\nNode 3: 10-1=9\nso 9" + FORCE_TEXT + "9"
    _, direct = next(e for e in _examples() if "Backtrack" not in e[1])
    assert suffix_start(direct) == 0
    _, deep = next(e for e in _examples() if _kind(e[1]) == "deep")
    assert deep[suffix_start(deep):].startswith("Node ") and "Backtrack" not in deep[suffix_start(deep):]


def test_attempt_answers() -> None:
    assert attempt_answers(SEARCH) == ["8", "9"]
    assert attempt_answers("Node 1: 3+5=8\nso 8\nBacktrack to beginning\nNode 1: 3+") == ["8", None]  # cut short
    assert attempt_answers("prompt\n<think>\nNode 1: 1+1=2\nso 2\n</think>\n#### 2") == ["2"]
    assert attempt_answers("") == []


# --------------------------------------------------------------------------- segmentation


def test_the_preset_segments_one_episode_per_attempt() -> None:
    seg = PRESET.progress.segment
    eps = segment(SEARCH, seg)
    assert [e.text for e in eps] == [
        "Node 1: 3+5-2=6\nNode 2: 6+4-1=8\nso 8",
        "\nBacktrack to Line 2\nNode 2: 6+4=10\nNode 3: 10-1=9\nso 9\n",
    ]
    # the forced answer after attempt 0 follows its own answer line, as the close tag follows the final one
    assert answer_cuts(SEARCH, eps) == [SEARCH.index("so 8") + 4, SEARCH.index("so 9") + 4]
    for _, trace in _examples(200):
        assert len(segment(trace, seg)) == len(segment(trace, ATTEMPTS)) == len(attempt_answers(trace))


def test_lines_separator_matches_markers_at_line_starts_only() -> None:
    cfg = SegmentConfig(markers=["Backtrack to"], min_gap=0, separator="lines")
    text = "a\nsee Backtrack to x\nb\n Backtrack to y\nc\n\nBacktrack to z\nd"
    eps = segment(text, cfg)
    assert [e.text for e in eps] == ["a\nsee Backtrack to x\nb\n Backtrack to y\nc\n", "\nBacktrack to z\nd"]
    # with the r1 paragraph rule the backtrack line never starts a paragraph: one episode
    assert len(segment(SEARCH, SegmentConfig(markers=["Backtrack to"], min_gap=0))) == 1


# --------------------------------------------------------------------------- SFT and the bootstrap


def _batch(sft_loss: str):
    cfg = load_config(None, ["task=embedded_backtrack", f"bootstrap.sft_loss={sft_loss}"])
    tok = build_tokenizer()
    return tok, sft_batch(tok, cfg.task, cfg.bootstrap, cfg.seed, 0, 16)


def test_suffix_loss_trains_only_after_the_last_backtrack() -> None:
    tok, (ids, full_labels, mask) = _batch("full")
    _, (ids2, labels, mask2) = _batch("suffix")
    assert ids.equal(ids2) and mask.equal(mask2)  # the same sequences; only the loss mask moves
    for i in range(ids.shape[0]):
        text = tok.decode(ids[i][mask[i].bool()].tolist(), skip_special_tokens=True)
        trace = text[text.index("<think>\n") + len("<think>\n"):]
        learned = tok.decode([t for t in labels[i].tolist() if t != -100], skip_special_tokens=True)
        assert learned == trace[suffix_start(trace):]
        full = tok.decode([t for t in full_labels[i].tolist() if t != -100], skip_special_tokens=True)
        assert full == trace
        assert "Backtrack" not in learned


def test_cache_key_separates_the_families_and_keeps_r1_keys() -> None:
    r1, r1_suffix = load_config(None, []), load_config(None, ["bootstrap.sft_loss=suffix"])
    full, suffix = PRESET, load_config(None, ["task=embedded_backtrack", "bootstrap.sft_loss=suffix"])
    assert cache_key(r1) == cache_key(r1_suffix)  # sft_loss enters the key only for the backtrack family
    assert len({cache_key(r1), cache_key(full), cache_key(suffix)}) == 3


def test_config_rules() -> None:
    validate(PRESET)
    validate(load_config(None, ["task=embedded_backtrack", "bootstrap.sft_loss=suffix", "algo=mrt"]))
    with pytest.raises(ConfigError, match="progress.segment.separator=lines"):
        validate(load_config(None, ["task.traces=backtrack"]))
    with pytest.raises(ConfigError, match="progress.segment.separator=lines"):
        validate(load_config(None, ["task=embedded_backtrack", "progress.segment.markers=[Backtrack to Line]"]))
    with pytest.raises(ConfigError, match="bootstrap.sft_loss=suffix"):
        validate(load_config(None, ["bootstrap.sft_loss=suffix"]))
    with pytest.raises(ConfigError, match="trace family of the embedded task"):
        validate(load_config(None, ["task=embedded_backtrack", "task.name=file", "task.path=x.jsonl"]))


# --------------------------------------------------------------------------- the linearised-search vote


def _exact(a: str, gold: str) -> bool:
    return a == gold


@pytest.mark.parametrize(("votes", "score"), [
    (["8", "9"], 0.5),  # a two-way tie: the expected score of a uniform tie-break
    (["8", "9", "9"], 1.0),
    (["8", "8", "9"], 0.0),
    (["7", "8", "9"], 1 / 3),
    (["9", None, " 9 "], 1.0),  # an attempt without an answer casts no vote
    ([None], 0.0),
    ([], 0.0),
])
def test_vote_score(votes, score) -> None:
    assert vote_score(votes, "9", _exact) == pytest.approx(score)


def test_search_stats_hand_computed() -> None:
    attempts = [["8", "9"], ["9"], ["9", "8"], ["7", "8", "9"], ["8", "8", "9"]]
    finals = [True, True, False, True, True]
    stats = search_stats(attempts, finals, ["9"] * 5, _exact)
    assert stats["final_accuracy"] == pytest.approx(4 / 5)
    # maj over all attempts: 0.5, 1, 0.5, 1/3, 0
    assert stats["maj_accuracy"] == pytest.approx((0.5 + 1 + 0.5 + 1 / 3 + 0) / 5)
    # maj over the first k attempts: k=1 is the first attempt alone
    assert [r["accuracy"] for r in stats["maj_at_attempts"]] == pytest.approx(
        [2 / 5, (0.5 + 1 + 0.5 + 0 + 0) / 5, (0.5 + 1 + 0.5 + 1 / 3 + 0) / 5])
    assert [r["traces_with_k"] for r in stats["maj_at_attempts"]] == [5, 4, 2]
    assert stats["first_attempt_accuracy"] == pytest.approx(2 / 5)
    assert stats["attempts_mean"] == pytest.approx(11 / 5) and stats["backtrack_share"] == pytest.approx(4 / 5)
    assert stats["fixed_share"] == pytest.approx(3 / 5)  # traces 0, 3, 4: wrong first attempt, right final
    assert stats["broken_share"] == pytest.approx(1 / 5)  # trace 2
    with pytest.raises(ValueError, match="attempt lists"):
        search_stats(attempts, finals[:2], ["9"] * 5, _exact)


# --------------------------------------------------------------------------- the real stack


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_mrt_two_steps_on_the_backtrack_preset(small_cfg) -> None:
    """`task=embedded_backtrack algo=mrt` through the real stack (a tiny random policy: it writes no backtrack
    lines, so this checks the wiring; the segmentation of real searches is tested above)."""
    from mrt_ray.trainer import Trainer

    cfg = small_cfg("task=embedded_backtrack", "algo=mrt", "progress.samples=4", "progress.round_size=2",
                    "rollout.num_cpus=0.25", "progress.num_cpus=0.25")
    assert cfg.progress.segment.separator == "lines" and cfg.task.traces == "backtrack"
    Trainer(cfg).run()
    rows = [json.loads(ln) for ln in (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] in (0, 1)]
    assert len(steps) == 2
    for r in steps:
        assert r["estimate_prefixes"] >= 4 and 0.0 <= r["j_c-1"] <= 1.0 and r["episodes_mean"] >= 1
        assert r["push_probe_diff"] < 1e-3
