"""The GPU profile resolves as pinned: `pip install --dry-run --ignore-installed --report` of `.[gpu,test]` (nothing is
installed) picks the torch that the pinned vLLM requires, and the versions pyproject.toml pins. Needs PyPI; about
1.5-2 minutes (pip builds DeepSpeed's sdist metadata), so it is marked slow as well."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from wheel_source import REPO, pinned

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _requirement(requires: list[str], name: str) -> str:
    """The `==` version that `requires` (a wheel's Requires-Dist, markers excluded) pins for `name`."""
    for req in requires:
        m = re.fullmatch(rf"{re.escape(name)}(\[[\w,-]*\])?\s*==\s*([\w.+-]+)", req.split(";")[0].strip())
        if m:
            return m.group(2)
    raise AssertionError(f"no `{name}==` in {requires}")


def test_gpu_profile_resolves_to_the_torch_vllm_pins(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report), ".[gpu,test]"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"`.[gpu,test]` does not resolve:\n{proc.stderr[-3000:]}"
    resolved = {i["metadata"]["name"].lower(): i for i in json.loads(report.read_text())["install"]}
    vllm = resolved["vllm"]["metadata"]
    assert vllm["version"] == pinned("vllm")
    torch = resolved["torch"]
    assert torch["metadata"]["version"] == _requirement(vllm["requires_dist"], "torch"), \
        f"torch {torch['metadata']['version']} resolved, but vllm=={vllm['version']} pins " \
        f"{_requirement(vllm['requires_dist'], 'torch')}"
    assert "+cpu" not in torch["download_info"]["url"]  # the CUDA build that PyPI serves, not a CPU wheel
    project = resolved["mrt-ray"]["metadata"]["requires_dist"]
    for name in ("ray", "deepspeed"):
        assert resolved[name]["metadata"]["version"] == _requirement(project, name), name
