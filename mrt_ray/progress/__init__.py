"""MRT progress: pure arithmetic in `estimate`; the Monte Carlo estimator pool lives in its own module."""
