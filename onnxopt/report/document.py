"""A tiny document model -- headings, paragraphs, bullet lists, tables, figures -- written as Markdown or HTML.

Reports are built once as a list of blocks and then written in either
format, so the Markdown and the HTML never say different things. HTML is one
self-contained file: inline CSS, figures as inline SVG.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    align_right: set[int] = field(default_factory=set)  # column indexes holding numbers


@dataclass(frozen=True)
class Figure:
    svg: str  # an <svg> element
    caption: str


Block = Heading | Paragraph | Bullets | Table | Figure


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            align = ["---:" if i in block.align_right else "---" for i in range(len(block.header))]
            out += ["| " + " | ".join(block.header) + " |", "|" + "|".join(align) + "|"]
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows] + [""]
        elif isinstance(block, Figure):
            out += [f"*Figure: {block.caption} (in the HTML report)*", ""]
    return "\n".join(out).rstrip() + "\n"


def to_html(blocks: list[Block], title: str) -> str:
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>"
                + "".join(
                    f"<td{' class=num' if i in block.align_right else ''}>{_inline(c)}</td>" for i, c in enumerate(row)
                )
                + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Figure):
            body.append(f"<figure>{block.svg}<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _inline(text: str) -> str:
    """Escape, then render Markdown's `code` and **bold** spans; a code span may break after ``,`` ``;`` ``/``
    (a recipe's passes and parameters, a path's folders) when it wraps."""
    parts = text.split("`")
    text = "".join(f"<code>{_break_points(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _break_points(code: str) -> str:
    """``code`` escaped, with a <wbr> after each ``,``, ``;`` and ``/``: where a browser may wrap it, nothing
    added to what a reader copies."""
    return "<wbr>".join(html.escape(piece) for piece in re.split(r"(?<=[,;/])", code))


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}"
    "th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}td.num{text-align:right;white-space:nowrap}"
    "td code{overflow-wrap:anywhere}"  # a long recipe or tensor name wraps inside its cell, never widens the page
    "th{background:#f3f3f3}code{background:#f3f3f3;padding:0 .2rem}figure{margin:1rem 0}"
    "figcaption{font-size:.85rem;color:#555}svg{max-width:100%;height:auto}"
)
