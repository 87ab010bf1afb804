"""Headless Chromium for the browser tests: run it with networking cut off, and read its DOM dump.

Shared by ``test_browser.py`` (synthetic page) and ``test_report.py`` (the real report). Debian's
``chromium`` is installed by ``make browser``; without it, tests marked ``requires_chromium`` skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)

requires_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (run 'make browser' or 'apt-get install chromium')"
)

# The background colour circuitsvis gives a token's <span> (as the DOM dump serialises it).
_BACKGROUND = re.compile(r"background-color:\s*(rgb\([^)]*\))")

# Void elements never get an end tag: the DOM walker must not push them.
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def run_chromium(url: str, tmp: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` with the network cut off (DNS fails, proxy is a dead port)."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
        f"--user-data-dir={tmp}", "--virtual-time-budget=10000", *extra, url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


def screenshot(url: str, tmp: Path, out: Path, width: int = 1280, height: int = 2000, timeout: float = 120) -> bytes:
    """Screenshot of the top ``width`` x ``height`` pixels of ``url`` (offline), written to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    run_chromium(
        url, tmp, f"--screenshot={out}", f"--window-size={width},{height}", "--hide-scrollbars", timeout=timeout
    )
    return out.read_bytes()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG from its header."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def blueness(colour: str) -> float:
    """How far a token colour ``rgb(r, g, b)`` is from white towards pure blue: 0 white, 1 blue."""
    r, g, b = (int(x) for x in colour[colour.index("(") + 1 : -1].split(","))
    return (255 - r + 255 - g) / 510 if b > 200 else 0.0


def mount_ids_of(html: str, title: str) -> list[str]:
    """The mount elements (``sd-view-N``) of the view or group whose title is ``title`` (escaped)."""
    start = html.index(f'<div class="sd-view-title">{title}</div>')
    return re.findall(r'<div id="(sd-view-\d+)"', html[start : html.index("</figure>", start)])


class DomSummary(HTMLParser):
    """Per ``sd-view-*`` element: the tags rendered inside it and the colour of each coloured token;
    plus page-wide facts: every tag's count, the images, the body's attributes, the text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str | None] = []
        self.inside: dict[str, dict[str, int]] = {}
        self.classes: dict[str, str] = {}
        self.colours: dict[str, list[str]] = {}
        self.tags: dict[str, int] = {}
        self.imgs: list[dict[str, str | None]] = []
        self.body_attrs: dict[str, str | None] = {}
        self.texts: list[str] = []
        self._skip = 0  # inside <script>/<style>

    @property
    def text(self) -> str:
        """The page's visible text (outside scripts and styles), whitespace-joined."""
        return " ".join(t.strip() for t in self.texts if t.strip())

    def _count(self, tag: str) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for vid in {v for v in self.stack if v}:
            self.inside[vid][tag] = self.inside[vid].get(tag, 0) + 1

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        colour = _BACKGROUND.search(a.get("style") or "")
        if tag == "span" and colour:
            for vid in {v for v in self.stack if v}:
                self.colours[vid].append(colour.group(1))
        if tag == "body":
            self.body_attrs = a
        if tag == "img":
            self.imgs.append(a)
        if tag in ("script", "style"):
            self._skip += 1
        self._count(tag)
        if tag in _VOID:
            return
        vid = a.get("id") if (a.get("id") or "").startswith("sd-view-") else None
        if vid:
            self.inside[vid] = {}
            self.classes[vid] = a.get("class") or ""
            self.colours[vid] = []
        self.stack.append(vid)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.stack.pop()
            if tag in ("script", "style"):
                self._skip -= 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        if tag not in _VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not self._skip:
            self.texts.append(data)
