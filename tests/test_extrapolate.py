"""The extrapolation protocol's text rules, against the reference's definitions."""
import pytest

from mrt_ray.eval.extrapolate import checkpoints, cue, drop_last_paragraph, extend


def test_drop_last_paragraph_keeps_finished_ones():
    assert drop_last_paragraph(", so 5.\n\nHmm, 7 is\n\nand then th") == ", so 5.\n\nHmm, 7 is\n"
    assert drop_last_paragraph("no break at all") == "\n"  # nothing finished: only the newline is kept


def test_extend_appends_the_cue_on_a_new_line():
    assert extend("a=1", "Wait", ", a=1 again.", truncated=False) == "a=1\nWait, a=1 again."
    assert extend("a=1", "But wait", ", x\n\ny", truncated=True) == "a=1\nBut wait, x\n"


def test_cues_cycle_and_checkpoints():
    cues = ["Wait", "But wait", "Alternatively", "But hold on"]
    assert [cue(cues, w) for w in range(6)] == cues + ["Wait", "But wait"]
    assert checkpoints(8, 2) == [0, 2, 4, 6, 8] and checkpoints(3, 2) == [0, 2] and checkpoints(0, 2) == [0]
    with pytest.raises(ValueError):
        checkpoints(2, 0)
    with pytest.raises(ValueError, match="empty"):
        cue([], 0)
