"""Looking at runs: `mrt-ray report` (html.py: the page; plots.py: its figures; runs.py: reading runs and the
statistics over seeds; traces.py: the MRT trace viewer, also used for the W&B sample table)."""
from mrt_ray.report.html import write_report

__all__ = ["write_report"]
