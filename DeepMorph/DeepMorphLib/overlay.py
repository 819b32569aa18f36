"""Overlay pictures of fits: the X-ray in grey, the confidence map in cyan, the fit in green (circle) or
yellow (contour) with named landmarks, the ground truth (when given) in red; a head circle kept for review with a
"not detected" result (and a femur contour not confirmed) dashed in orange. Where the network does not see the femur
outline (point confidence < ``EXTRAPOLATED_BELOW`` at both ends of a contour segment) the contour is the shape
model's extrapolation and is drawn dashed. A caption, and then the reason of a "not detected" result, go in a band
added below the image, so that on small images too they hide nothing and are not cut off. Pure numpy + Pillow."""
from __future__ import annotations

import numpy as np

FIT_CIRCLE = (60, 255, 60)
FIT_CONTOUR = (255, 220, 0)
LANDMARK = (255, 60, 255)
TRUTH = (255, 50, 50)
UNCONFIRMED = (255, 150, 0)  # a circle / contour found but not confirmed ("not detected", kept for review)
CONFIDENCE = np.array([0, 200, 255], dtype=np.float32)
EXTRAPOLATED_BELOW = 0.2  # contour points with a lower network confidence are extrapolated by the shape model. On the
#   tune3-448 tuning set (190 detected femur fits) such points (10 % of those in view) lie 6.3 px from the true outline
#   (median; 57 % beyond 5 px), the others 0.44 px (3 % beyond 5 px): mostly shaft ends past the collimator, burnt-out
#   or faint lateral shafts


def grey_to_rgb(image) -> np.ndarray:
    """uint8 (H, W, 3): ``image`` windowed to its 0.5-99.5 % percentiles."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    g = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    return np.repeat(g.astype(np.uint8)[..., None], 3, axis=2)


def _get(obj, key, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def draw_overlay(image, result=None, truth=None, confidence=None, confidence_alpha: float = 0.45,
                 caption: str | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3) overlay of ``result`` (``FitResult`` or its dict) and ``truth`` (dict with
    ``head_circle`` [cx, cy, r] and/or ``femur_outline`` [[x, y], ...], ``eval_max_y``) on ``image``.
    ``confidence`` (H, W) in [0, 1] defaults to the result's map when it has one. Text never covers the image: the
    ``caption`` and the reason of a "not detected" result (unless the caption holds it) are written in a band below
    it, so the picture is (H + band, W, 3) when there is either, (H, W, 3) otherwise."""
    from PIL import Image, ImageDraw

    rgb = grey_to_rgb(image).astype(np.float32)
    conf = confidence if confidence is not None else _get(result, "confidence")
    if conf is not None:
        a = np.clip(np.asarray(conf, dtype=np.float32), 0, 1)[..., None] * confidence_alpha
        rgb = rgb * (1 - a) + CONFIDENCE * a
    pil = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    w = max(1, round(max(pil.size) / 300))
    if truth is not None:
        _draw_truth(draw, truth, pil.size, w)
    if result is not None:
        _draw_result(draw, result, w, pil.size)
    font = caption_font(pil.size[0])
    rows = [(row, CAPTION) for row in caption_rows(caption, pil.size[0], font=font)]
    reason = _get(result, "reason") if result is not None and not _get(result, "detected", False) else None
    if reason and reason not in (caption or ""):
        rows += [(row, REASON) for row in caption_rows(f"not detected: {reason}", pil.size[0], font=font)]
    if not rows:
        return np.asarray(pil)
    line = font.getbbox("Hg")[3] + 3
    pictured = Image.new("RGB", (pil.size[0], pil.size[1] + line * len(rows) + 4), (0, 0, 0))
    pictured.paste(pil, (0, 0))
    draw = ImageDraw.Draw(pictured)
    for k, (row, colour) in enumerate(rows):
        draw.text((4, pil.size[1] + 2 + line * k), row, fill=colour, font=font)
    return np.asarray(pictured)


CAPTION = (255, 255, 255)
REASON = (255, 80, 80)
FONT_PX = 11  # letters of the caption and of the reason on images up to 448 px wide, larger on wider ones


def caption_font(width_px: int):
    """Pillow's default font at ``FONT_PX`` for a picture ``width_px`` wide, proportionally larger beyond 448 px (a
    2000 px X-ray is shown shrunk)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=round(FONT_PX * max(1.0, width_px / 448)))
    except TypeError:  # Pillow < 10.1: its one bitmap font
        return ImageFont.load_default()


def caption_rows(caption: str | None, width_px: int, max_rows: int = 10, font=None) -> list[str]:
    """``caption`` wrapped to ``width_px`` (less a 4 px margin each side) in ``font`` (default ``caption_font``), at
    most ``max_rows`` lines (the last one ends in '...' when the text is longer); a word longer than a line (a long
    file name) is cut."""
    if not caption:
        return []
    font = font or caption_font(width_px)
    room = max(width_px - 8, 1)
    rows = []
    for word in caption.split():
        if rows and font.getlength(f"{rows[-1]} {word}") <= room:
            rows[-1] += f" {word}"
            continue
        while len(word) > 1 and font.getlength(word) > room:
            k = 1
            while font.getlength(word[:k + 1]) <= room:
                k += 1
            rows.append(word[:k])
            word = word[k:]
        rows.append(word)
    if len(rows) > max_rows:
        rows = rows[:max_rows]
        while rows[-1] and font.getlength(rows[-1] + "...") > room:
            rows[-1] = rows[-1][:-1]
        rows[-1] += "..."
    return rows


def _circle(draw, c, colour, width):
    cx, cy, r = (float(v) for v in c)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=width)
    draw.line([cx - 4, cy, cx + 4, cy], fill=colour, width=width)
    draw.line([cx, cy - 4, cx, cy + 4], fill=colour, width=width)


def _draw_truth(draw, truth, size, width):
    for other in _get(truth, "other_femurs") or []:  # simulated wide views: the other hip's femur, also truth
        _draw_truth(draw, {"head_circle": other.get("head_circle"), "femur_outline": other.get("contour")}, size, width)
    if _get(truth, "head_circle") is not None:
        _circle(draw, truth["head_circle"], TRUTH, width)
    outline = _get(truth, "femur_outline")
    if outline:
        pts = [tuple(map(float, p)) for p in outline]
        draw.line(pts + pts[:1], fill=TRUTH, width=width)
    y = _get(truth, "eval_max_y")
    if y is not None and y < size[1]:
        for x in range(0, size[0], 12):  # dashed line: below it the outline is not scored
            draw.line([x, y, x + 6, y], fill=TRUTH, width=1)


def _dashed_circle(draw, c, colour, width, dash_deg: float = 12.0):
    cx, cy, r = (float(v) for v in c)
    for start in np.arange(0.0, 360.0, 2 * dash_deg):
        draw.arc([cx - r, cy - r, cx + r, cy + r], float(start), float(start + dash_deg), fill=colour, width=width)


def _dashed_polyline(draw, pts, colour, width, dash_px: float = 6.0, gap_px: float | None = None):
    """Pieces of ``dash_px`` of the polyline ``pts`` (N, 2) px, ``gap_px`` (default: ``dash_px``) apart."""
    seg = np.diff(pts, axis=0)
    at = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
    for start in np.arange(0.0, at[-1], dash_px + (dash_px if gap_px is None else gap_px)):
        s = np.linspace(start, min(start + dash_px, at[-1]), 4)
        piece = np.column_stack([np.interp(s, at, pts[:, 0]), np.interp(s, at, pts[:, 1])])
        draw.line([tuple(map(float, p)) for p in piece], fill=colour, width=width)


def extrapolated_points(point_confidence) -> np.ndarray:
    """bool (N,): contour points whose network confidence is below ``EXTRAPOLATED_BELOW`` (the shape model's
    extrapolation)."""
    return np.asarray(point_confidence, dtype=float) < EXTRAPOLATED_BELOW


def extrapolated_segments(point_confidence, closed: bool = False) -> np.ndarray:
    """bool (S,): contour segments (point k -> k + 1, and the last back to the first when ``closed``) whose both end
    points are ``extrapolated_points``."""
    low = extrapolated_points(point_confidence)
    nxt = np.roll(low, -1)
    return (low & nxt) if closed else (low[:-1] & nxt[:-1])


def _draw_contour(draw, pts: np.ndarray, point_confidence, closed: bool, width: int) -> None:
    """A fitted contour: solid where the network sees the outline, dashed where it is extrapolated."""
    path = np.vstack([pts, pts[:1]]) if closed else pts
    dashed = np.zeros(len(path) - 1, bool)
    if point_confidence is not None and len(point_confidence) == len(pts):
        dashed = extrapolated_segments(point_confidence, closed)
    k = 0
    while k < len(dashed):  # runs of segments of one kind
        j = k
        while j + 1 < len(dashed) and dashed[j + 1] == dashed[k]:
            j += 1
        run = path[k:j + 2]
        if dashed[k]:
            _dashed_polyline(draw, run, FIT_CONTOUR, width, dash_px=3.0, gap_px=5.0)
        else:
            draw.line([tuple(map(float, p)) for p in run], fill=FIT_CONTOUR, width=width)
        k = j + 1
    seen = ~extrapolated_points(point_confidence) if dashed.any() else np.ones(len(pts), bool)
    for p in pts[seen]:  # the points the network supports, as dots
        draw.ellipse([p[0] - width, p[1] - width, p[0] + width, p[1] + width], fill=FIT_CONTOUR)


def _draw_result(draw, result, width, size):
    if not _get(result, "detected", False):
        circle = _get(result, "circle")
        if circle:  # found, then rejected: shown for review, dashed
            _dashed_circle(draw, (circle["cx"], circle["cy"], circle["r"]), UNCONFIRMED, width)
            x = min(circle["cx"] + 0.72 * circle["r"], size[0] - draw.textlength("unconfirmed") - 2)  # in view
            draw.text((max(x, 0), max(circle["cy"] - 0.72 * circle["r"] - 12, 0)), "unconfirmed", fill=UNCONFIRMED)
        contour = _get(result, "contour")
        if contour is not None and len(contour):
            pts = np.asarray(contour, dtype=float)
            _dashed_polyline(draw, np.vstack([pts, pts[:1]]) if _get(result, "contour_closed", False) else pts,
                             UNCONFIRMED, width)
            w, h = size
            shown = pts[(pts[:, 0] >= 0) & (pts[:, 0] < w - 70) & (pts[:, 1] >= 14) & (pts[:, 1] < h)]
            if len(shown):  # labelled at its highest point in view (the label, 12 px high, stays in the picture)
                top = shown[np.argmin(shown[:, 1])]
                draw.text((float(top[0]) + 6, float(top[1]) - 12), "unconfirmed", fill=UNCONFIRMED)
        return
    circle = _get(result, "circle")
    if circle:
        _circle(draw, (circle["cx"], circle["cy"], circle["r"]), FIT_CIRCLE, width)
    contour = _get(result, "contour")
    if contour is not None and len(contour):
        _draw_contour(draw, np.asarray(contour, dtype=float), _get(result, "point_confidence"),
                      bool(_get(result, "contour_closed", False)), width)
    for name, (x, y) in (_get(result, "landmarks") or {}).items():
        if circle and name == "head_center":
            continue
        draw.line([x - 5, y - 5, x + 5, y + 5], fill=LANDMARK, width=width)
        draw.line([x - 5, y + 5, x + 5, y - 5], fill=LANDMARK, width=width)
        draw.text((x + 6, y - 6), name.replace("_", " "), fill=LANDMARK)
