"""The MRT trace viewer: sampled traces with each episode coloured by its measured progress (a diverging scale, red
for negative, white for none, blue for positive) and J after each episode.

`trace_records` turns trajectories into the JSON records the trainer appends to <run>/samples.jsonl every
`wandb.log_samples_every` steps; `trace_html` renders one record as a self-contained HTML fragment (inline styles
only), used both by the report page and by the W&B table's HTML cells.

A record: step, prompt, answer (gold), reward, correct, finished, length (completion tokens), segments
[[text, episode index or -1], ...] covering the completion in order, spans (episodes' [start, end) completion
token positions), progress [per episode] and j [J(c_-1), J(c_0),
..., J(c_k)] (J before any thinking, then J after each episode; both empty when the method estimates none).
"""
from __future__ import annotations

import html
from collections.abc import Callable, Sequence

from matplotlib import colormaps
from matplotlib.colors import to_hex

from mrt_ray.trajectory import Trajectory

CMAP = "RdBu"  # diverging: red = lost progress, blue = made progress
LIGHT = 0.35  # use the central 2*LIGHT of the colour map: dark text stays readable on every colour
MIN_SCALE = 0.05  # the colour scale spans at least +-0.05 of progress


def trace_records(trajs: Sequence[Trajectory], step: int, decode: Callable[[list[int]], str]) -> list[dict]:
    """JSON records of `trajs` (see the module doc); `decode` turns completion token ids into text."""
    out = []
    for t in trajs:
        ids, cuts, segments = t.completion.ids, [0], []
        for k, (a, b) in enumerate(t.episode_spans):
            if a > cuts[-1]:
                segments.append([decode(ids[cuts[-1]:a]), -1])
            segments.append([decode(ids[a:b]), k])
            cuts.append(b)
        if cuts[-1] < len(ids) or not segments:
            segments.append([decode(ids[cuts[-1]:]), -1])
        out.append({"step": step, "prompt": t.problem.prompt, "answer": t.problem.answer, "reward": t.reward,
                    "correct": bool(t.correct), "finished": bool(t.completion.finished), "length": t.length,
                    "segments": segments, "spans": [list(s) for s in t.episode_spans],
                    "progress": [round(p, 4) for p in t.progress],
                    "j": [round(j, 4) for j in t.j_values]})
    return out


def scale(records: Sequence[dict]) -> float:
    """The colour scale's half-width: the largest |progress| among `records` (at least MIN_SCALE)."""
    return max([MIN_SCALE, *(abs(p) for r in records for p in r.get("progress", []))])


def colour(progress: float, vmax: float) -> str:
    """Background colour of an episode with this progress on a scale of +-vmax."""
    x = max(-1.0, min(1.0, progress / vmax))
    return to_hex(colormaps[CMAP](0.5 + LIGHT * x))


def legend_html(vmax: float) -> str:
    """The colour scale as a gradient bar with its end and middle values."""
    stops = ", ".join(colour(vmax * x / 4, vmax) for x in range(-4, 5))
    return (f'<div style="display:flex;align-items:center;gap:8px;font:13px sans-serif;margin:6px 0">'
            f'<span>progress {-vmax:+.2f}</span><span style="display:inline-block;width:240px;height:14px;'
            f'border:1px solid #888;background:linear-gradient(to right, {stops})"></span>'
            f'<span>{vmax:+.2f}</span><span style="color:#555">(0 = white; J after each episode in the grey tags)'
            f'</span></div>')


def _tag(text: str, title: str) -> str:
    return (f'<span title="{html.escape(title)}" style="display:inline-block;font:11px sans-serif;background:#444;'
            f'color:#fff;border-radius:3px;padding:0 4px;margin:0 2px;vertical-align:1px">{html.escape(text)}</span>')


def trace_html(record: dict, vmax: float) -> str:
    """One trace: a header (step, reward, correctness, length), the prompt, and the completion with its episodes
    coloured by progress and a J tag after each."""
    prog, j = record.get("progress", []), record.get("j", [])
    ok = "correct" if record.get("correct") else "incorrect"
    head = (f'step {record["step"]} &middot; reward {record["reward"]:.3g} &middot; {ok} &middot; '
            f'{record["length"]} tokens{"" if record.get("finished", True) else " (truncated)"} &middot; '
            f'{len(prog)} episodes')
    body = [_tag(f"J={j[0]:.2f}", "J(c_-1): forced-answer accuracy from the prompt alone")] if j else []
    for text, k in record["segments"]:
        if k < 0 or k >= len(prog):
            body.append(html.escape(text))
            continue
        title = f"episode {k}: progress {prog[k]:+.3f}" + (f", J after it {j[k + 1]:.3f}" if k + 1 < len(j) else "")
        body.append(f'<span title="{html.escape(title)}" style="background:{colour(prog[k], vmax)};'
                    f'border-radius:2px">{html.escape(text)}</span>')
        if k + 1 < len(j):
            body.append(_tag(f"J={j[k + 1]:.2f}", title))
    border = "#2a7" if record.get("correct") else "#c44"
    return (f'<div class="trace" style="border-left:4px solid {border};margin:10px 0;padding:6px 10px;'
            f'background:#fafafa">'
            f'<div style="font:12px sans-serif;color:#444">{head}</div>'
            f'<div style="font:13px monospace;color:#333;white-space:pre-wrap;margin:4px 0">'
            f'{html.escape(record["prompt"])}</div>'
            f'<div style="font:13px/1.6 monospace;color:#111;white-space:pre-wrap">{"".join(body)}</div></div>')
