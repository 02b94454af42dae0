"""One report structure, rendered two ways: Markdown (``report.md``) and self-contained HTML
(``report.html``, figures embedded as base64 PNGs).

A report is a list of blocks (tuples), built once by the caller:

* ``("title", text)`` / ``("heading", text)``: ``#`` / ``##`` headings, ``<h1>`` / ``<h2>``;
* ``("para", text)``: a paragraph; ``("note", text)``: a highlighted note (``>`` quote in Markdown);
* ``("table", header, rows)``: a table (``rows``: lists of cells; no rows gives "(none)");
* ``("bullets", items)``: a bullet list;
* ``("image", path, alt)``: a PNG (Markdown links it relative to the report folder);
* ``("empty", text)``: a placeholder such as "(no per-step metrics)";
* ``("box", css_class)`` ... ``("end_box",)``: a highlighted box in HTML (nothing in Markdown).

Texts use the inline Markdown the reports need (``**bold**``, ```code```), converted to
escaped HTML by :func:`inline_html`. Cells starting with a signed number are coloured in HTML
(green positive, red negative); cells starting with PASS / FAIL likewise.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

#: the report style sheet (HTML)
CSS = ("body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse;margin:8px 0 18px}"
       "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#f0f0f0}"
       "td:first-child{text-align:left}.pos{color:#0a7a2a}.neg{color:#b00020}"
       ".verdict{background:#eef4ff;border-left:5px solid #2a5bd7;padding:8px 14px;margin:10px 0 18px}"
       ".verdict p{margin:6px 0}"
       ".note{background:#fff8e0;padding:6px 10px;border-left:4px solid #e0b000}img{max-width:100%}")


# ----------------------------------------------------------------------------- value formatting

def num(v) -> str:
    """A metric value: 4 decimals; "n/a" when missing or undefined (COCO's -1)."""
    if v is None or float(v) < 0:
        return "n/a"
    return f"{float(v):.4f}"


def delta(v) -> str:
    """A signed difference with 4 decimals; "n/a" when missing."""
    if v is None:
        return "n/a"
    return f"{float(v):+.4f}"


def short(v, n: int = 12) -> str:
    """Hashes shortened to ``n`` characters + "…"; other values as they are; None -> "n/a"."""
    if v is None or v == "":
        return "n/a"
    v = str(v)
    return v[:n] + "…" if re.fullmatch(r"[0-9a-f]{20,}", v) else v


# ----------------------------------------------------------------------------- Markdown

def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (``|`` in cells escaped); ``_(none)_`` without rows."""
    if not rows:
        return "_(none)_\n"
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines) + "\n"


def _md_block(block: tuple, out_dir: Path) -> str | None:
    kind = block[0]
    if kind == "title":
        return f"# {block[1]}\n"
    if kind == "heading":
        return f"## {block[1]}\n"
    if kind == "para":
        return f"{block[1]}\n"
    if kind == "note":
        return f"> {block[1]}\n"
    if kind == "table":
        return md_table(block[1], block[2])
    if kind == "bullets":
        return "".join(f"- {item}\n" for item in block[1])
    if kind == "image":
        return f"![{block[2]}]({Path(block[1]).relative_to(out_dir)})\n"
    if kind == "empty":
        return f"_({block[1]})_\n"
    if kind in ("box", "end_box"):
        return None
    raise ValueError(f"unknown report block {kind!r}")


def to_markdown(blocks: list[tuple], out_dir: Path) -> str:
    """The report as Markdown; image paths are written relative to ``out_dir`` (the report's folder)."""
    return "\n".join(part for part in (_md_block(b, Path(out_dir)) for b in blocks) if part is not None)


# ----------------------------------------------------------------------------- HTML

def inline_html(text: str) -> str:
    """The inline Markdown these reports use (``**bold**``, ```code```) as escaped HTML."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table, signed numbers and PASS / FAIL coloured; "(none)" without rows."""
    if not rows:
        return "<p><em>(none)</em></p>"

    def cell(c: str) -> str:
        c = str(c)
        cls = ""
        if re.match(r"^[+-]\d", c):
            cls = ' class="pos"' if c.startswith("+") and not c.startswith("+0.0000") else \
                  (' class="neg"' if c.startswith("-") and not c.startswith("-0.0000") else "")
        elif c.startswith(("PASS", "FAIL")):
            cls = ' class="pos"' if c.startswith("PASS") else ' class="neg"'
        return f"<td{cls}>{inline_html(c)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img_b64(path: Path) -> str:
    """A PNG file as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _html_block(block: tuple) -> str:
    kind = block[0]
    if kind == "title":
        return f"<h1>{html.escape(block[1])}</h1>"
    if kind == "heading":
        return f"<h2>{html.escape(block[1])}</h2>"
    if kind == "para":
        return f"<p>{inline_html(block[1])}</p>"
    if kind == "note":
        return f'<p class="note">{inline_html(block[1])}</p>'
    if kind == "table":
        return html_table(block[1], block[2])
    if kind == "bullets":
        return "<ul>" + "".join(f"<li>{inline_html(item)}</li>" for item in block[1]) + "</ul>"
    if kind == "image":
        return f'<p><img src="{img_b64(block[1])}" alt="{html.escape(block[2])}"></p>'
    if kind == "empty":
        return f"<p>({html.escape(block[1])})</p>"
    if kind == "box":
        return f'<div class="{block[1]}">'
    if kind == "end_box":
        return "</div>"
    raise ValueError(f"unknown report block {kind!r}")


def to_html(blocks: list[tuple], title: str) -> str:
    """The report as one self-contained HTML page (figures embedded) titled ``title``."""
    body = "".join(_html_block(b) for b in blocks)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


__all__ = ["num", "delta", "short", "md_table", "to_markdown", "inline_html", "html_table", "img_b64", "to_html"]
