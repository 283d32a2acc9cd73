"""report.html in a real headless browser (Debian's chromium, installed by .ci/run): it renders and
every image loads. A missing browser is a failure, never a skip."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from coarserank.ranking_eval.report import build_report
from coarserank.ranking_eval.report_html import render_html

from .test_report import make_scores, spec

# Appended to a copy of the page: after load, count <img> elements that finished with real pixels.
_PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  document.body.dataset.images = String(imgs.length);
  document.body.dataset.loaded = String(imgs.filter(i => i.complete && i.naturalWidth > 0).length);
  document.body.dataset.tables = String(document.querySelectorAll("table").length);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if path:
            return path
    raise AssertionError("chromium is not installed: the report.html browser test needs it "
                         "(apt-get install -y chromium; .ci/run installs it)")


def test_report_html_renders_in_headless_chromium_with_every_image_loaded(tmp_path: Path) -> None:
    browser = _chromium()
    scores = make_scores(np.random.default_rng(11), groups=12)
    page = render_html(build_report(scores, spec()), scores)
    probe = tmp_path / "report.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, f"chromium printed no page: {result.stdout[:500]!r} {result.stderr[-1000:]!r}"
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', body.group(1)))
    assert int(attrs["images"]) >= 4
    assert attrs["loaded"] == attrs["images"], f"only {attrs['loaded']} of {attrs['images']} images loaded"
    assert int(attrs["tables"]) >= 5
