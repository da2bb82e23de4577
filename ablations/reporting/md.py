"""Markdown building blocks every section of a report draws with: one-line paragraphs and aligned tables."""

from __future__ import annotations


def paragraph(text: str) -> str:
    """`text` as one markdown line (a wrapped line starting with `|` or `-` would read as a table or a list)."""
    return " ".join(text.split())


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, the first column left-aligned, the others right-aligned."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    return [line(header), "| " + " | ".join(align) + " |", *map(line, rows)]
