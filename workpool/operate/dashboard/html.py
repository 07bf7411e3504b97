"""Small HTML builders for the dashboard's server-rendered pages: every value escaped, a page
layout, tables, forms carrying the CSRF token, and an inline SVG chart (no front-end build,
no script library: static/app.js only re-fetches a page's live parts)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import quote, urlencode

#: what a form needs to post an action: the CSRF token, or None where actions are off
Actions = str | None


def e(value: object) -> str:
    """`value` as text safe in HTML (None as nothing)."""
    return "" if value is None else escape(str(value), quote=True)


def link(path: str, label: object, **query: object) -> str:
    """A link to `path` with `query` (empty values left out)."""
    q = urlencode({k: v for k, v in query.items() if v not in (None, "")})
    return f'<a href="{e(path + ("?" + q if q else ""))}">{e(label)}</a>'


def segment(value: str) -> str:
    """`value` as one path segment."""
    return quote(value, safe="")


def page(title: str, body: str, *, read_only: bool) -> str:
    """A whole page: the layout around `body`."""
    mode = '<span class="badge">read-only</span>' if read_only else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)} - workpool</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/style.css"><script src="/static/app.js" defer></script>
</head><body><header><a class="brand" href="/">workpool</a> {mode}
<nav><a href="/">pools</a> <a href="/jobs">jobs</a> <a href="/metrics">metrics</a></nav>
</header><main>{body}</main></body></html>"""


def live(url: str, inner: str) -> str:
    """A part of a page that static/app.js re-fetches from `url` every 2 s."""
    return f'<div class="live" data-live="{e(url)}">{inner}</div>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "") -> str:
    """A table; the cells are HTML already (escape values with e())."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def form(action: str, csrf: Actions, label: str, *, fields: dict[str, str] | None = None,
         inputs: str = "", danger: bool = False) -> str:
    """A POST form for an action (nothing when actions are off: read-only)."""
    if csrf is None:
        return ""
    hidden = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">'
                     for k, v in {"csrf": csrf, **(fields or {})}.items())
    cls = ' class="danger"' if danger else ""
    return (f'<form method="post" action="{e(action)}" class="action">{hidden}{inputs}'
            f'<button type="submit"{cls}>{e(label)}</button></form>')


def chart(minutes: Sequence[tuple[int, dict[str, int]]], series: Sequence[str]) -> str:
    """An SVG line chart of per-minute counts (one line per series), with its legend, labeled
    in per-second rates."""
    width, height, pad = 600, 120, 4
    top = max([1, *(counts.get(s, 0) for _, counts in minutes for s in series)])
    step, scale = (width - 2 * pad) / max(1, len(minutes) - 1), (height - 2 * pad) / top
    lines = []
    for i, name in enumerate(series):
        points = " ".join(f"{pad + j * step:.1f},{height - pad - counts.get(name, 0) * scale:.1f}"
                          for j, (_, counts) in enumerate(minutes))
        lines.append(f'<polyline class="s{i}" fill="none" points="{points}"/>')
    legend = " ".join(f'<span class="s{i}">{e(name)}</span>' for i, name in enumerate(series))
    return (f'<figure class="chart"><svg viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="per minute, last hour">{"".join(lines)}</svg>'
            f"<figcaption>per second over the last hour (each point a minute; highest "
            f"{top / 60:.2f}/s): {legend}</figcaption></figure>")
