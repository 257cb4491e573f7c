"""Plain, self-contained HTML: escaped text, 3-decimal tables, relative figure links, no CDN."""

from __future__ import annotations

import math
from html import escape

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 1.5em auto; padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 1.8em; }
.meta { color: #57606a; margin-top: 0; }
.summary { background: #f6f8fa; border-left: 4px solid #0969da; padding: 0.6em 1em; }
.scroll { overflow-x: auto; max-width: 100%; margin: 0.6em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
td.ci { white-space: nowrap; }
.context td, .context th { text-align: left; }
.context { font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: right; }
th { background: #f6f8fa; }
td.text, th.text { text-align: left; }
tr.chosen td { background: #fff8c5; font-weight: 600; }
figure { margin: 0.8em 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 0.9em; max-width: 900px; }
.note { color: #9a6700; }
.hl { background: #ffebe9; font-weight: 600; padding: 0 3px; }
code { background: #f6f8fa; padding: 0 3px; }
"""


class Shown(str):
    """Text already formatted as a number (an interval "0.97 [0.93, 0.99]"): right-aligned,
    kept on one line, escaped like any text."""


def ci(value, interval, digits: int = 3) -> Shown | None:
    """'0.987 [0.962, 0.998]': a value with its 95 % interval (None when the value is)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    lo, hi = (list(interval) + [None, None])[:2] if interval else (None, None)
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return Shown(num(float(value), digits))
    return Shown(
        f"{num(float(value), digits)} [{num(float(lo), digits)}, {num(float(hi), digits)}]"
    )


def esc(value) -> str:
    """`value` as text safe inside HTML and attribute values."""
    return escape(str(value), quote=True)


def num(value, digits: int = 3, small_sig: bool = False) -> str:
    """3 decimals; with small_sig, values below 0.01 keep 3 significant digits (learning rates)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if small_sig and value != 0 and abs(value) < 0.01:
            return f"{value:.{digits}g}"  # e.g. a learning rate: 0.000817, not 0.001 or 0.000
        return f"{value:.{digits}f}"
    return esc(value)


def cell(value, digits: int = 3, small_sig: bool = False) -> str:
    """One <td>: a `Shown` interval kept on one line, a number rounded by `num`, None as '–',
    anything else as left-aligned escaped text."""
    if isinstance(value, Shown):
        return f'<td class="ci">{esc(value)}</td>'
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"<td>{num(value, digits, small_sig)}</td>"
    if value is None:
        return "<td>–</td>"
    return f'<td class="text">{esc(value)}</td>'


def table(
    headers: list[str],
    rows: list[list],
    row_classes: list[str] | None = None,
    digits: int = 3,
    small_sig: bool = False,
) -> str:
    """A table with `headers` and one row per list of `rows` (cells as `cell` renders them);
    `row_classes` gives each row a CSS class ('chosen' highlights it)."""
    head = "".join(
        f'<th class="text">{esc(h)}</th>' if i == 0 else f"<th>{esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(cell(v, digits, small_sig) for v in row) + "</tr>")
    # The wrapper scrolls sideways inside the page instead of pushing wide tables past it.
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def definitions(pairs: list[tuple[str, str]], cls: str = "context") -> str:
    """A two-column table of (label, already-escaped HTML) pairs: the context block."""
    rows = "".join(
        f'<tr><th class="text">{esc(k)}</th><td class="text">{v}</td></tr>' for k, v in pairs
    )
    return f'<div class="scroll"><table class="{esc(cls)}"><tbody>{rows}</tbody></table></div>'


def figure(src: str, caption: str, alt: str | None = None) -> str:
    """An <img> of the relative path `src` with its caption (both escaped)."""
    return (
        f'<figure><img src="{esc(src)}" alt="{esc(alt or caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def section(title: str, *parts: str, anchor: str | None = None) -> str:
    """A <section> (with id `anchor` when given) headed by `title`, holding the HTML `parts`."""
    aid = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{aid}><h2>{esc(title)}</h2>{''.join(parts)}</section>"


def para(text: str, cls: str | None = None) -> str:
    """A paragraph of plain text (escaped)."""
    c = f' class="{esc(cls)}"' if cls else ""
    return f"<p{c}>{esc(text)}</p>"


def raw_para(html_text: str, cls: str | None = None) -> str:
    """A paragraph whose content the caller has already escaped."""
    c = f' class="{esc(cls)}"' if cls else ""
    return f"<p{c}>{html_text}</p>"


def page(title: str, body: str) -> str:
    """The whole self-contained page: the CSS inline, `body` HTML, no script, no link out."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
