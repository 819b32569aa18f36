"""Self-contained HTML reports (figures embedded as PNG data URIs) and CSV tables of per-image results.

Used by ``deepmorph fit --report``, ``deepmorph evaluate --report`` and the demo. One file, no external assets,
so a report can be mailed or attached to a ticket as it is.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import platform
import sys
import time
from pathlib import Path, PurePath

import numpy as np

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}
td.l,th.l{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:300px}figure img{width:300px;image-rendering:auto;border:1px solid #999}
figcaption{font-size:.75em;word-break:break-all}
.bad{color:#a00}.muted{color:#777;font-size:.8em}
"""


def software_versions() -> dict:
    """Versions of the program and the libraries that shape its results."""
    import importlib

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        from importlib.metadata import version

        out["deepmorph"] = version("deepmorph")
    except Exception:  # noqa: BLE001 - running from a checkout without installing
        out["deepmorph"] = "checkout"
    for name in ("numpy", "scipy", "torch", "SimpleITK", "PIL"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - optional or broken install: report, do not fail
            out[name] = "not available"
    return out


def png_data_uri(image) -> str:
    """``data:image/png;base64,...`` of a uint8 (H, W) or (H, W, 3) array, or of PNG bytes."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.2f}"
    if isinstance(v, (dict, list)):
        return html.escape(json.dumps(v, default=str))
    return html.escape(str(v))


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p class=muted>(none)</p>"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th class=l>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = "".join(
            f"<td{' class=l' if isinstance(r.get(c), str) else ''}>{_fmt(r.get(c))}</td>" for c in columns)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _kv_table(d: dict) -> str:
    return _table([{"key": k, "value": v if not isinstance(v, dict) else json.dumps(v, default=str)}
                   for k, v in d.items()], ["key", "value"])


FIGURE_LEGEND = ("grey: image; cyan: network confidence; green/yellow: fit (yellow dashed: contour extrapolated by the "
                 "shape model where the network sees no outline); magenta: landmarks; red: ground truth "
                 "(dashed: eval_max_y); orange dashed: found but not confirmed")


def _img_src(image) -> str:
    """``src`` of a figure: a relative path/URL (str or Path: the file is linked, not embedded) or a data URI."""
    if isinstance(image, (str, PurePath)):
        return Path(image).as_posix() if isinstance(image, PurePath) else image
    return png_data_uri(image)


def render_html(title: str, *, summary: dict | None = None, groups: dict | None = None,
                rows: list[dict] | None = None, columns: list[str] | None = None,
                figures: list[tuple[str, object]] | None = None, bad_files: list[tuple[str, str]] | None = None,
                timings: dict | None = None, versions: dict | None = None, notes: str | None = None,
                links: list[tuple[str, str]] | None = None, figure_legend: str | None = None,
                figure_columns: int | None = None) -> str:
    """HTML text of a report: summary figures, per-group figures (``{group: {key: value}}``), per-image
    table, figures ``[(caption, uint8 image, PNG bytes or a relative path), ...]`` (a path is linked, so the
    report and its folder travel together; arrays and bytes are embedded), bad files ``[(path, error), ...]``,
    links to files ``[(relative path, description), ...]``, timings (keys name their units) and software
    versions. ``figure_columns`` wraps the figures after that many per row (default: as many as fit)."""
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class=muted>written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"]
    if notes:
        parts.append(f"<p>{html.escape(notes)}</p>")
    if summary:
        parts.append("<h2>Summary</h2>" + _kv_table(summary))
    if groups:
        parts.append("<h2>By group</h2>" + _table([{"group": g, **v} for g, v in groups.items()]))
    if rows is not None:
        parts.append(f"<h2>Per image ({len(rows)})</h2>" + _table(rows, columns))
    if bad_files:
        items = "".join(f"<li class=bad>{html.escape(p)}: {html.escape(e)}</li>" for p, e in bad_files)
        parts.append(f"<h2>Bad files ({len(bad_files)}, skipped)</h2><ul>{items}</ul>")
    if figures:
        figs = []
        for cap, img in figures:
            src = html.escape(_img_src(img), quote=True)
            tag = f"<img src='{src}' alt='{html.escape(cap, quote=True)}'>"
            if not src.startswith("data:"):
                tag = f"<a href='{src}'>{tag}</a>"
            figs.append(f"<figure>{tag}<figcaption>{html.escape(cap)}</figcaption></figure>")
        legend = html.escape(FIGURE_LEGEND if figure_legend is None else figure_legend)
        style = f" style='max-width:{int(figure_columns) * 310}px'" if figure_columns else ""
        parts.append(f"<h2>Figures</h2><p class=muted>{legend}</p><div class=grid{style}>{''.join(figs)}</div>")
    if links:
        items = "".join(f"<li><a href='{html.escape(href, quote=True)}'>{html.escape(href)}</a>: {html.escape(text)}</li>"
                        for href, text in links)
        parts.append(f"<h2>Files</h2><ul>{items}</ul>")
    if timings:
        parts.append("<h2>Timings</h2>" + _kv_table(timings))
    parts.append("<h2>Software</h2>" + _kv_table(versions or software_versions()))
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html_report(path, title: str, **kwargs) -> Path:
    """Write ``render_html(title, **kwargs)`` atomically to ``path``; returns the path."""
    from DeepMorphSimulatorLib.files import atomic_write_text

    atomic_write_text(path, render_html(title, **kwargs))
    return Path(path)


def write_csv(path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """Rows as CSV (dict/list cells as JSON), atomically."""
    from DeepMorphSimulatorLib.files import atomic_write_text

    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else
                         json.dumps(r[c]) if isinstance(r.get(c), (dict, list)) else r.get(c) for c in columns])
    atomic_write_text(path, buf.getvalue())
    return Path(path)
