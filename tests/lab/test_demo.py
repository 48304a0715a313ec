"""`lab demo` as a newcomer runs it: plots, captures and an HTML report that a browser renders."""
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest



class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])

    def handle_data(self, data):
        self.text.append(data)


def read_report(folder: Path) -> Page:
    page = Page()
    page.feed((folder / "report.html").read_text())
    return page


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("newcomer") / "lab-demo"
    done = subprocess.run([sys.executable, "-m", "lab", "demo", "--out", str(folder), "--messages", "40"], capture_output=True, text=True,
                          timeout=300, cwd=folder.parent)
    assert done.returncode == 0, done.stderr
    return folder, done


def test_the_demo_leaves_plots_captures_and_a_report(demo):
    folder, done = demo
    page = read_report(folder)
    assert str(folder / "report.html") in done.stdout
    assert len(page.images) == 4
    for src in page.images + page.links:
        assert (folder / src).is_file(), src
        assert not Path(src).is_absolute()                 # the folder can be moved or mailed
    assert all(src.endswith(".png") for src in page.images)
    text = " ".join(page.text)
    assert "-565 us" in text and "negative latency" in text
    assert {p.name for p in folder.glob("run-*.pcapng")} == {"run-none.pcapng", "run-tcp-prefix.pcapng",
                                                            "run-tcp-prefix-ITCH-5.0-OUCH-4.2.pcapng"}
    assert (folder / "run-tcp-prefix.tel").is_file()
    assert re.search(r"krx-2008 real engine: tcp-prefix p50\s+-\d", done.stdout)
    assert re.search(r"krx-2008 real engine: tcp-prefix, ITCH 5.0 \+ OUCH 4.2 p50\s+-\d", done.stdout)


def test_the_summary_names_the_seeds_figure(demo):
    _folder, done = demo
    lines = done.stdout.splitlines()
    tcp_prefix = next(line for line in lines if line.startswith("krx-2008 simulated: tcp-prefix "))
    assert float(tcp_prefix.split()[-1].replace(",", "")) == pytest.approx(-569.8, abs=0.05)


def test_headless_chromium_renders_the_report_with_its_images(demo, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    folder, _done = demo
    shot = tmp_path / "report.png"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1200,2400", (folder / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr
    import matplotlib.image
    pixels = matplotlib.image.imread(shot)[..., :3]
    # The plots are drawn in colour (the strategies' bands and bars); the page itself is black on white.
    # Without its images the page has no coloured pixels at all.
    colour = np.ptp(pixels, axis=2) > 0.25
    assert colour.mean() > 0.01
