"""`python -m mrt_ray ...` (the entry that `ray job submit` runs)."""
import sys

from mrt_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
