"""`mrt-ray report` (issue 17): reading runs, grouping seeds, the t-based confidence intervals, the trace records
and their HTML, and the page itself opened in real headless Chromium: every plot present and drawn, no broken image,
the traces coloured by progress. Built from small synthetic run directories (tests/synthetic_runs.py)."""
from __future__ import annotations

import json
import math

import pytest
from browser import ink, render, tinted
from synthetic_runs import make_eval, make_run

from mrt_ray import cli
from mrt_ray.report.runs import group_runs, load, mean_ci, t_quantile
from mrt_ray.report.traces import colour, trace_html, trace_records


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_mean_ci():
    assert mean_ci([0.5]) == (0.5, 0.0)
    m, half = mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3: 4.3027 / sqrt(3)
    assert m == 2.0 and half == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert math.isnan(mean_ci([None])[0])


def test_runs_group_by_config_without_seed(tmp_path):
    for seed in (1, 2):
        make_run(tmp_path, f"grpo-{seed}", seed, "grpo", 0.1, steps=12)
        make_run(tmp_path, f"mrt-{seed}", seed, "mrt", 0.2, steps=12)
    runs, evals = load([tmp_path])  # a directory of runs (a sweep) expands to its runs
    groups = group_runs(runs)
    assert not evals and len(runs) == 4
    assert sorted((g.label, sorted(g.seeds)) for g in groups) == [("algo.name=grpo", [1, 2]), ("algo.name=mrt", [1, 2])]


def test_not_a_run_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrt-ray: ") and err.count("\n") == 1 and "metrics.jsonl" in err


def _trajectory(text_ids: list[int], spans, progress, j):
    from mrt_ray.rollout.types import Completion
    from mrt_ray.tasks import Problem
    from mrt_ray.trajectory import Trajectory

    c = Completion(ids=text_ids, text="", logprobs=[0.0] * len(text_ids), finished=True)
    return Trajectory(problem=Problem(id="p", prompt="1+1 <b>?", answer="2"), prompt_ids=[1], completion=c, group=0,
                      correct=True, reward=1.0, episode_spans=spans, progress=progress, j_values=j)


def test_trace_records_cover_the_completion_and_render_escaped():
    text = "<think>ab Wait cd</think> #### 2"
    ids = [ord(ch) for ch in text]
    decode = lambda xs: "".join(map(chr, xs))  # noqa: E731
    t = _trajectory(ids, [(7, 9), (9, 17)], [0.25, -0.1], [0.1, 0.35, 0.25])
    (rec,) = trace_records([t], 3, decode)
    assert "".join(s for s, _ in rec["segments"]) == text
    assert [k for _, k in rec["segments"]] == [-1, 0, 1, -1]
    assert rec["spans"] == [[7, 9], [9, 17]] and rec["j"] == [0.1, 0.35, 0.25] and rec["step"] == 3
    json.dumps(rec)  # a samples.jsonl line
    page = trace_html(rec, 0.25)
    assert "&lt;think&gt;" in page and "1+1 &lt;b&gt;?" in page and "<b>" not in page
    assert colour(0.25, 0.25) in page and colour(-0.1, 0.25) in page and "J=0.35" in page and "J=0.10" in page
    red, blue = colour(-1, 1), colour(1, 1)  # diverging: negative progress red, positive blue, 0 white
    assert int(red[1:3], 16) > int(red[5:7], 16) and int(blue[5:7], 16) > int(blue[1:3], 16)
    white = [int(colour(0, 1)[i:i + 2], 16) for i in (1, 3, 5)]
    assert min(white) > 240


def test_tracker_writes_and_truncates_samples(tmp_path):
    from mrt_ray.config import load_config
    from mrt_ray.tracking import Tracker

    cfg = load_config(None, ["wandb.mode=disabled"])
    rec = {"step": 0, "prompt": "p", "segments": [["x", -1]], "spans": [], "progress": [], "j": []}
    tracker = Tracker(cfg, tmp_path, 3)
    for step in range(3):
        tracker.samples(step, [{**rec, "step": step}] * 2)
    tracker.close()
    rows = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in rows] == [0, 0, 1, 1, 2, 2]
    Tracker(cfg, tmp_path, 3, start_step=1).truncate(0)  # resumed after step 0's checkpoint
    assert [json.loads(ln)["step"] for ln in (tmp_path / "samples.jsonl").read_text().splitlines()] == [0, 0]


@pytest.mark.stack
def test_report_page_in_chromium(tmp_path):
    """Two configs x two seeds, one MRT config with traces, and an eval: five plots, all drawn, none broken, and the
    traces coloured both ways."""
    runs = [make_run(tmp_path, f"{algo}-{seed}", seed, algo, gain) for algo, gain in (("grpo", .1), ("mrt", .2))
            for seed in (1, 2)]
    ev = make_eval(tmp_path)
    out = tmp_path / "page.html"
    assert cli.main(["report", *map(str, runs), str(ev), "-o", str(out)]) == 0
    html = out.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained
    page = render(out)
    assert len(page.images) == 5  # learning curves, step times, push checks, progress by episode, budget forcing
    for img in page.images:
        assert img["complete"] and img["natural"][0] > 300 and img["natural"][1] > 200, img
        assert img["box"]["w"] > 300, img  # laid out on the page
        assert ink(page.region(img["box"])) > 0.04, img  # a drawn plot, not a blank box
    assert len(page.traces) == 8  # the last logged step of each MRT run: 4 traces each
    red = blue = 0.0
    for box in page.traces:
        r, b = tinted(page.region(box))
        red, blue = red + r, blue + b
    assert red > 0.01 and blue > 0.01, (red, blue)


def test_single_run_report_default_path(tmp_path):
    run = make_run(tmp_path, "one", 0, "grpo", 0.1, steps=8)
    assert cli.main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert html.count("<img ") == 3 and "No samples.jsonl" in html  # curves, step times, push checks; no MRT, no eval
