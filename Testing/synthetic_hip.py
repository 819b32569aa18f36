"""Simulated-like hip crops for tests (no CT, no network): analytic line integrals of a femur, pelvis and soft
tissue, displayed bone-dark (fluoroscopy, paper eq. 10) or bone-bright (radiograph), optionally collimated.

Ground truth follows the real dev-set annotation format: ``head_circle`` [cx, cy, r] px, ``femur_outline``
closed polygon [[x, y], ...] px (x right, y down, may extend past the crop), ``eval_max_y`` px.
Layout: a *left* hip has the femoral head on the image's left (medial), the trochanters on the right; a right
hip is the mirror image.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _unit(deg):
    a = np.deg2rad(deg)
    return np.array([np.cos(a), np.sin(a)])


def densify(poly, step_px=1.0):
    """Closed polygon resampled so that no segment is longer than ``step_px`` (like the dev set's outlines)."""
    poly = np.asarray(poly, dtype=np.float64)
    nxt = np.roll(poly, -1, axis=0)
    out = []
    for a, b in zip(poly, nxt):
        k = max(1, int(np.ceil(np.linalg.norm(b - a) / step_px)))
        out.append(a + (b - a) * (np.arange(k)[:, None] / k))
    return np.concatenate(out)


def femur_outline(cx, cy, r, neck_deg=35.0, shaft_len=7.0, n_arc=90, step_px=1.0):
    """Closed outline polygon (N, 2) of a left proximal femur with the head circle (cx, cy, r) in px."""
    u, h = _unit(neck_deg), 0.65
    nrm = np.array([u[1], -u[0]])  # perpendicular to the neck, pointing up-lateral
    t = np.sqrt(1.0 - h * h)
    a1 = np.arctan2(*(t * u - h * nrm)[::-1])  # lower neck edge meets the head
    a2 = np.arctan2(*(t * u + h * nrm)[::-1]) + 2 * np.pi  # upper neck edge meets the head
    ang = np.linspace(a1, a2, n_arc)
    pts = [np.c_[np.cos(ang), np.sin(ang)]]
    pts.append(np.array([
        1.5 * u + h * nrm,  # upper neck end
        [1.75, -0.45], [2.1, -0.58], [2.5, -0.25], [2.62, 0.5],  # greater trochanter
        [2.5, 1.4], [2.3, 3.0], [2.05, shaft_len],  # lateral shaft
        [0.75, shaft_len], [0.9, 3.0], [0.95, 2.45],  # medial shaft
        [0.62, 2.15], [0.8, 1.85],  # lesser trochanter
        1.4 * u - h * nrm,  # lower neck end
    ]))
    poly = np.concatenate(pts) * r + np.array([cx, cy])
    return densify(poly, step_px)


def _polygon_mask(poly, shape, supersample=2):
    from PIL import Image, ImageDraw

    h, w = shape
    img = Image.new("L", (w * supersample, h * supersample), 0)
    xy = [((x + 0.5) * supersample - 0.5, (y + 0.5) * supersample - 0.5) for x, y in poly]
    ImageDraw.Draw(img).polygon(xy, fill=255)
    small = np.asarray(img, dtype=np.float32).reshape(h, supersample, w, supersample).mean(axis=(1, 3))
    return small / 255.0


def _coloured_noise(rng, shape, sigma_px):
    return ndi.gaussian_filter(rng.standard_normal(shape), sigma_px) * sigma_px


def _tube(radius, depth, cortex_frac, mu_cortex, mu_marrow):
    """Chord lengths (px) through a cylinder of ``radius`` at ``depth`` px inside its outline, weighted by
    attenuation per px: cortical shell (``cortex_frac`` of the radius) and marrow."""
    x = np.clip(radius - depth, 0, None)  # distance from the axis
    outer = 2 * np.sqrt(np.clip(radius**2 - x**2, 0, None)) * (depth > 0)
    inner_r = radius * (1 - cortex_frac)
    inner = 2 * np.sqrt(np.clip(inner_r**2 - x**2, 0, None))
    return mu_cortex * (outer - inner) + mu_marrow * inner


def line_integrals(rng, size=448, side="left", r=None, centre=None):
    """Attenuation line integrals A (H, W) (dimensionless) and the ground truth of one synthetic hip crop."""
    h = w = size
    r = float(rng.uniform(45, 70)) if r is None else float(r)
    if centre is None:
        centre = (size * rng.uniform(0.30, 0.42), size * rng.uniform(0.30, 0.45))
    cx, cy = map(float, centre)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    poly = femur_outline(cx, cy, r, neck_deg=rng.uniform(28, 42))
    mask = _polygon_mask(poly, (h, w))
    depth_in = ndi.distance_transform_edt(mask > 0.5)
    # femur: a tube with a cortical shell (chord lengths through an outer and an inner cylinder whose local
    # radius is the outline's half width), so the cortex seen edge-on gives ridges along the outline
    radius = ndi.gaussian_filter(ndi.maximum_filter(depth_in, size=int(r)), r / 6) + 1e-3
    a_femur = _tube(radius, depth_in, 0.22, 0.02, 0.002) * (mask > 0.5)
    d_head = np.hypot(xx - cx, yy - cy)
    a_femur = np.maximum(a_femur, _tube(np.full_like(d_head, r), r - d_head, 0.08, 0.02, 0.005))
    a_femur += 0.04 * _coloured_noise(rng, (h, w), 1.0) * (a_femur > 0)  # trabecular texture
    # pelvis: acetabular roof (a shell above the head), ilium plate, pubic/ischial rami around the obturator
    ang = np.arctan2(yy - cy, xx - cx)
    roof = _tube(np.full_like(d_head, 6.0), 6.0 - np.abs(d_head - r - 8), 0.3, 0.02, 0.008)
    roof *= np.clip(np.cos(ang + np.pi / 2) * 2.0, 0, 1)  # upper half only
    ilium = ndi.gaussian_filter((yy < cy - 0.6 * r - 0.25 * (xx - cx)).astype(float), 6) * 0.35
    ox, oy = cx - 1.4 * r, cy + 2.1 * r
    e = np.hypot((xx - ox) / (1.0 * r), (yy - oy) / (0.7 * r))
    ring_w = 0.25 * r
    ring = _tube(np.full_like(e, ring_w), ring_w - np.abs(e - 1.0 - 0.25) * 0.85 * r, 0.2, 0.012, 0.004)
    a_pelvis = roof + ilium + ring + 0.03 * _coloured_noise(rng, (h, w), 1.0) * (ilium + ring > 0.05)
    # soft tissue: water-equivalent thickness of the body; the lateral body edge (air beyond) may be in view
    edge_x = cx + rng.uniform(3.0, 6.0) * r
    depth = np.sqrt(np.clip(1 - ((xx - cx + 2.0 * r) / (edge_x - cx + 2.0 * r)) ** 2, 0, None))
    a_soft = 1.5 * depth + 0.05 * _coloured_noise(rng, (h, w), 20.0)
    a = a_soft + a_femur + a_pelvis
    truth = {"head_circle": [cx, cy, r], "femur_outline": poly, "eval_max_y": cy + 6.0 * r}
    if side == "right":
        a = a[:, ::-1]
        truth["head_circle"] = [w - 1 - cx, cy, r]
        truth["femur_outline"] = np.c_[w - 1 - poly[:, 0], poly[:, 1]][::-1]
    truth["femur_outline"] = truth["femur_outline"].round(2).tolist()
    truth["side"] = side
    return a.astype(np.float32), truth


def display(a, polarity, rng, collimation=None, gamma=1.0, noise=2.0):
    """Grey values 0-255 (float32): bone-dark = exp(-A) with 2.5 % saturation scaled to [20, 255] (paper);
    bone-bright = radiograph-like linear window of A. ``collimation``: None, "circle-black", "rect-black"."""
    if polarity == "bone-dark":
        i = np.exp(-(a - a.min()))
        top = np.quantile(i, 0.975)
        g = 20 + 235 * np.clip(i / top, 0, 1)
    elif polarity == "bone-bright":
        lo, hi = np.quantile(a, [0.01, 0.995])
        g = 255 * np.clip((a - lo) / (hi - lo), 0, 1)
    else:
        raise ValueError(polarity)
    g = 255 * (g / 255) ** gamma
    g = g + noise * rng.standard_normal(g.shape)
    h, w = g.shape
    if collimation == "circle-black":
        yy, xx = np.mgrid[0:h, 0:w]
        rad = rng.uniform(0.42, 0.55) * w
        g[np.hypot(xx - w / 2, yy - h / 2) > rad] = rng.uniform(0, 8)
    elif collimation == "rect-black":
        m = int(rng.uniform(0.05, 0.15) * w)
        g[:, :m] = 0
        g[:m, :] = 0
    return np.clip(g, 0, 255).astype(np.float32)


def make_hip(seed, polarity="bone-dark", side="left", collimation=None, size=448, gamma=None):
    """One synthetic hip crop: (image float32 (H, W) 0-255, ground-truth dict in the dev-set format)."""
    rng = np.random.default_rng(seed)
    a, truth = line_integrals(rng, size=size, side=side)
    gamma = float(rng.uniform(0.7, 1.4)) if gamma is None else gamma
    image = display(a, polarity, rng, collimation=collimation, gamma=gamma)
    truth["polarity"] = polarity
    return image, truth
