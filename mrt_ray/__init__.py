"""mrt-ray."""
