"""A small document model rendered to Markdown and to a self-contained HTML page.

The report is built once as a list of blocks (headings, paragraphs, lists, tables, images)
and written twice, so the Markdown and the HTML never disagree. Paragraph text may use
```code``` spans and ``**bold**``; nothing else is interpreted.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Document", "markdown_table"]

_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")
# A number with its unit, optionally after noise marks and before its spread: "~12.3 µs (14%)".
_NUMERIC = re.compile(
    "^[~!]*[-+\\d.,]+\\s*(?:%|\N{MULTIPLICATION SIGN}|ns|µs|ms|s|GB/s)?(?: \\(<?[\\d.]+%\\))?$"
)


def _is_numeric(cell: str) -> bool:
    return bool(_NUMERIC.match(cell))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub pipe table with padded columns; numeric columns are right-aligned."""
    columns = [[header, *(row[i] for row in rows)] for i, header in enumerate(headers)]
    widths = [max(3, *(len(cell) for cell in column)) for column in columns]
    right = [any(_is_numeric(cell) for cell in column[1:]) for column in columns]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if is_right else cell.ljust(width)
            for cell, width, is_right in zip(cells, widths, right, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    separator = [
        "-" * (width - 1) + ":" if is_right else "-" * width
        for width, is_right in zip(widths, right, strict=True)
    ]
    return "\n".join([line(headers), "| " + " | ".join(separator) + " |", *map(line, rows)])


def _inline_html(text: str) -> str:
    out, last = [], 0
    for match in _INLINE.finditer(text):
        out.append(html.escape(text[last : match.start()]))
        code, bold = match.groups()
        out.append(f"<code>{html.escape(code)}</code>" if code else f"<b>{html.escape(bold)}</b>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2

    def markdown(self, folder: Path) -> str:
        return f"{'#' * self.level} {self.text}"

    def html(self) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class Paragraph:
    text: str

    def markdown(self, folder: Path) -> str:
        return self.text

    def html(self) -> str:
        return f"<p>{_inline_html(self.text)}</p>"


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]

    def markdown(self, folder: Path) -> str:
        return "\n".join(f"- {item}" for item in self.items)

    def html(self) -> str:
        return "<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in self.items) + "</ul>"


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def markdown(self, folder: Path) -> str:
        return markdown_table(self.headers, self.rows)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        lines = []
        for row in self.rows:
            cells = "".join(
                f'<td class="num">{html.escape(c)}</td>'
                if _is_numeric(c)
                else f"<td>{_inline_html(c)}</td>"
                for c in row
            )
            lines.append(f"<tr>{cells}</tr>")
        return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str

    def markdown(self, folder: Path) -> str:
        return f"![{self.alt}]({self.path.relative_to(folder).as_posix()})"

    def html(self) -> str:
        data = base64.b64encode(self.path.read_bytes()).decode("ascii")
        return f'<p><img alt="{html.escape(self.alt)}" src="data:image/png;base64,{data}"></p>'


Block = Heading | Paragraph | Bullets | Table | Image

_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 75rem; margin: 2rem auto;
       padding: 0 1rem; color: #1b1b1b; }
table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.6rem; }
th { background: #f3f3f3; }
td.num { text-align: right; }
code { background: #f3f3f3; padding: 0 0.2rem; }
img { max-width: 100%; }
"""


@dataclass
class Document:
    """An ordered list of blocks, rendered by :meth:`to_markdown` and :meth:`to_html`."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Heading(text, level))

    def paragraph(self, text: str) -> None:
        self.blocks.append(Paragraph(text))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(Bullets(tuple(items)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(Table(tuple(headers), tuple(tuple(row) for row in rows)))

    def image(self, path: str | Path, alt: str) -> None:
        self.blocks.append(Image(Path(path), alt))

    def to_markdown(self, folder: str | Path) -> str:
        """Markdown whose image links are relative to ``folder`` (where the file goes)."""
        parts = [f"# {self.title}", *(block.markdown(Path(folder)) for block in self.blocks)]
        return "\n\n".join(parts) + "\n"

    def to_html(self) -> str:
        """One HTML page with the images embedded: it can be moved or mailed on its own."""
        body = "\n".join(block.html() for block in self.blocks)
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n"
            f"<body>\n<h1>{html.escape(self.title)}</h1>\n{body}\n</body>\n</html>\n"
        )
