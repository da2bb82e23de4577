"""The report as one HTML file that MLflow's artifact viewer shows whole: python-markdown's rendering of the README
with every figure embedded as a data URI and each wide table in its own horizontally scrolling box.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import xml.etree.ElementTree as ET
from pathlib import Path

import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 1.5em auto; padding: 0 1em; line-height: 1.45; }
.table-box { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; vertical-align: top; min-width: 3em; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


class _Embed(Treeprocessor):
    """Images by file name become data URIs of the files in `folder`; tables get a scrolling box."""

    def __init__(self, md: markdown.Markdown, folder: Path) -> None:
        super().__init__(md)
        self.folder = folder

    def run(self, root: ET.Element) -> None:
        for img in root.iter("img"):
            path = self.folder / img.get("src", "")
            if "/" not in img.get("src", "/") and path.is_file():
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                img.set("src", f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}")
        for parent in list(root.iter()):
            for i, child in enumerate(list(parent)):
                if child.tag == "table":
                    box = ET.Element("div", {"class": "table-box"})
                    box.append(child)
                    parent.remove(child)
                    parent.insert(i, box)


class _EmbedExtension(Extension):
    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 (python-markdown's name)
        md.treeprocessors.register(_Embed(md, self.folder), "senet_embed", 0)  # after inline parsing made the <img>s


def to_html(text: str, folder: Path, title: str) -> str:
    """A markdown report (its figures in `folder`) as a standalone HTML page."""
    body = markdown.markdown(text, extensions=["tables", "fenced_code", "sane_lists", _EmbedExtension(folder)])
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")  # fmt: skip
