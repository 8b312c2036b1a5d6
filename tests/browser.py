"""Open an HTML page in real headless Chromium (Debian's /usr/bin/chromium, installed by scripts/setup.sh with the
test extra) and read back what it rendered: every <img> with its natural size and its box on the page, the boxes of
the trace viewer's traces, and a full-page screenshot to check pixels in those boxes."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH = 1400
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--force-device-scale-factor=1", "--virtual-time-budget=10000"]
# appended to a copy of the page: after load, the images and traces as JSON in a <pre id="mrt-check">
PROBE = """<script>
window.addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect();
                     return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; };
  const out = {images: [...document.images].map(i => ({natural: [i.naturalWidth, i.naturalHeight],
                                                       complete: i.complete, box: box(i)})),
               traces: [...document.querySelectorAll(".trace")].map(box),
               height: document.documentElement.scrollHeight};
  const pre = document.createElement("pre");
  pre.id = "mrt-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Chromium is not installed: run scripts/setup.sh (it installs Debian's chromium with the test extra)"
    return path


def _run(args: list[str], profile: Path) -> str:
    out = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, f"chromium exited {out.returncode}: {out.stderr[-2000:]}"
    return out.stdout


@dataclass
class Rendered:
    images: list[dict]  # natural: [w, h], complete, box: {x, y, w, h}
    traces: list[dict]  # boxes
    shot: np.ndarray  # [height, width, 3] uint8, the whole page

    def region(self, box: dict) -> np.ndarray:
        x, y = int(box["x"]), int(box["y"])
        return self.shot[y:y + int(box["h"]), x:x + int(box["w"])]


def render(page: Path) -> Rendered:
    """Load `page` (a copy with the probe script) in Chromium twice: once for the DOM, once for the screenshot."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = tmp / "page.html"
        probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
        dom = _run(["--dump-dom", probe.as_uri()], tmp / "profile-dom")
        found = re.search(r'<pre id="mrt-check">(.*?)</pre>', dom, re.S)
        assert found, f"the probe script did not run; DOM tail: {dom[-500:]}"
        info = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
        height = min(int(info["height"]) + 20, 30000)
        _run([f"--window-size={WIDTH},{height}", f"--screenshot={tmp / 'shot.png'}", probe.as_uri()],
             tmp / "profile-shot")
        shot = np.asarray(Image.open(tmp / "shot.png").convert("RGB"))
    return Rendered(info["images"], info["traces"], shot)


def ink(pixels: np.ndarray) -> float:
    """Share of pixels that are not (near) white."""
    return float((pixels.min(axis=-1) < 235).mean()) if pixels.size else 0.0


def tinted(pixels: np.ndarray) -> tuple[float, float]:
    """Shares of clearly reddish and clearly bluish pixels (the progress colours)."""
    p = pixels.astype(int)
    r, g, b = p[..., 0], p[..., 1], p[..., 2]
    return float(((r - b > 40) & (r - g > 20)).mean()), float(((b - r > 40) & (b - g > 10)).mean())
