"""Image polarity of an X-ray: is bone shown dark (fluoroscopy, the paper's DRRs) or bright (radiographs)?

Cue: bone is the high-attenuation part of the image and is drawn by thin high-attenuation *ridges* (cortical
shells seen edge-on, the acetabular roof, trabecular struts). Soft tissue has no such lines. So the sign of
the strongest line-like second derivatives tells the polarity: bright lines -> bone-bright, dark lines ->
bone-dark. What would vote with the wrong sign is kept out, symmetrically for both polarities:
- step edges (skin, collimator, implant outlines): a ridge centre has curvature but no slope, an edge's
  shoulder has both, so the slope is subtracted from the curvature;
- noise specks (quantum noise is skewed): only line-like curvature (one strong eigenvalue) in connected
  pieces of at least 4 sigma px counts;
- masks and clipping (black collimation disks, white unexposed film, saturated air or metal) with a margin;
- air beside the body (a smooth region of either grey tail touching the border: the skin's corner next to
  air is a ridge of the air's brightness) and edges far stronger than anatomy's (metal implants and tools,
  with their edge-enhancement halos).
Scales: sigma 1.5 and 2 px on the image (block-averaged to <= 512 px) and on its half-size copy.

Checked (see the evalreal report): the 38 bone-bright dev radiographs (all right, |score| >= 0.14) and
their inverted copies, also after gamma, exp/log display, JPEG, unsharp masking, histogram equalisation,
noise, blur, resampling and collimation; simulator DRRs of both polarities. With implants and tools in view the
ridges have little to vote with (simulated tuning images with an implant in every one: 7 of 200 wrong), so a
second, independent cue is added: the polarity classifier (``polarity_net``, shipped as ``polarity.safetensors``),
which sees metal (the most attenuating thing in view) and air (the least) at once. ``detect_polarity`` adds the
two log-odds (``polarity_evidence``); without the classifier file the ridges decide alone.
A small |score| (< ``CONFIDENT_SCORE``) means little evidence, though its sign is still usually right;
``pipeline.fit_image`` lets the network decide below a per-task threshold (``pipeline.AUTO_FIT_BELOW``: fits both
polarities, keeps the better fit).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

POLARITIES = ("bone-dark", "bone-bright")
NETWORK_DEFAULT_POLARITY = "bone-dark"  # what the paper's simulator renders and the nets expect by default
CONFIDENT_SCORE = 0.12  # |score| below this: weak evidence (implant-heavy or structureless images)
_MAX_SIDE = 512  # px; larger images are block-averaged first (speed; ridge scales are in px of this size)
_MIN_SIDE = 384  # px; smaller images are enlarged to 448 px first
_SIGMAS = (1.5, 2.0)  # px, Gaussian derivative scales at each pyramid level (>= 1.5: sampled well enough)
_LEVELS = 2
_SLOPE_PENALTY = 1.5  # curvature * sigma must exceed this x the slope
_LINE_RATIO = 1.0  # line weight 1 - ratio * |l_small| / |l_big|
_MIN_LINE_PX = 4.0  # shortest line piece kept, in units of sigma (px)
_TOP_FRACTION = 0.05  # the most ridge-like pixels that vote
_MIN_VOTES = 0.005  # fewer voting (line) pixels than this fraction of the field: no evidence at that scale
_METAL_EDGE_FACTOR = 5.0  # metal edges: gradient > this x the field's 90th percentile of the gradient
_METAL_MARGIN_PX = 10  # px dropped around metal edges
_TAIL = 0.1  # fraction of the field in each grey tail checked for air
_MASK_MARGIN_PX = 15.0  # px kept clear of masked regions (detector halos reach that far)


def _as_float_image(image) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(axis=-1)
    if img.ndim != 2 or min(img.shape) < 16:
        raise ValueError(f"Polarity detection needs a 2-D grey image of at least 16x16 px, got shape {img.shape}.")
    if not np.all(np.isfinite(img)):
        raise ValueError("Polarity detection got NaN/infinite pixels; clean the image first.")
    return img


def _working_size(img: np.ndarray) -> np.ndarray:
    """The image at the scale the detector's px settings are made for: larger than ``_MAX_SIDE`` ->
    block-averaged; smaller than ``_MIN_SIDE`` -> enlarged bilinearly to 448 px."""
    side = max(img.shape)
    if side < _MIN_SIDE:
        from scipy import ndimage as ndi

        return ndi.zoom(img, 448.0 / side, order=1)
    f = int(np.ceil(side / _MAX_SIDE))
    if f <= 1:
        return img
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def field_mask(img: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels of the exposed, unsaturated field. Excluded: flat regions touching the border at
    an end of the grey range (collimation masks, unexposed film) and clipped regions (>= 50 px) at the range's
    ends (saturated air or metal). Their boundaries are kinks that look like ridges, so callers keep away from
    them. Flat terraces of a coarsely quantised image lie inside the range and are kept."""
    from scipy import ndimage as ndi

    lo, hi = float(img.min()), float(img.max())
    span = hi - lo
    if span <= 0:
        return np.zeros(img.shape, bool)
    u = ((img - lo) / span).astype(np.float32)  # 0..1: the tests below are relative to the range
    q_lo, q_hi = np.quantile(u, [0.01, 0.99])
    extreme = (u <= max(0.002, q_lo)) | (u >= min(0.998, q_hi))
    mean = ndi.uniform_filter(u, 5)
    sd = np.sqrt(np.clip(ndi.uniform_filter(u * u, 5) - mean * mean, 0, None))
    labels, _ = ndi.label((sd < 0.003) & extreme)
    border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    masked = np.isin(labels, border[border > 0])
    labels, n = ndi.label((u <= 0.002) | (u >= 0.998))
    if n:
        sizes = np.bincount(labels.ravel())
        big = sizes >= 50
        big[0] = False
        masked |= big[labels]
    return ~masked


def ridge_polarity_score(image) -> float:
    """Signed score in [-1, 1]: > 0 when the strongest ridges are bright (bone-bright), < 0 when dark."""
    from scipy import ndimage as ndi

    img = _working_size(_as_float_image(image))
    valid = field_mask(img)
    if valid.sum() < 0.1 * img.size:  # almost nothing left: use the whole image
        valid = np.ones(img.shape, bool)
    lo, hi = np.percentile(img[valid], [1, 99])
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):  # float rounding (e.g. of the enlargement) is not contrast
        raise ValueError("Polarity detection got an image without contrast (constant inside the field): it holds "
                         "no X-ray; check the file, or the window / level it was exported with.")
    s = ((img - lo) / (hi - lo)).astype(np.float32)
    valid &= ~non_anatomy(s, valid)
    dist = ndi.distance_transform_edt(np.pad(valid, 1))[1:-1, 1:-1]  # px to the nearest excluded pixel/edge
    scores = []
    for level in range(_LEVELS):  # pyramid: effective scales sigma * 2**level px of the (<= 512 px) image
        if level:
            s, dist = _halve(s), _halve(dist)
        for sigma in _SIGMAS:
            score = _ridge_sign(s, dist >= max((3.0 * sigma + 2.0) * 2**level, _MASK_MARGIN_PX), sigma)
            if score is not None:
                scores.append(score)
    return float(np.mean(scores)) if scores else 0.0


def strong_edges(s: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """bool (H, W): edges far stronger than anatomy's (metal implants, tools). ``s``: image scaled to its
    field's 1-99 % range. Anatomy's strongest edges stay below ~4x the 90th percentile of the gradient
    magnitude (sigma 1.5 px); metal edges exceed it."""
    from scipy import ndimage as ndi

    grad = np.hypot(*np.gradient(ndi.gaussian_filter(s, 1.5)))
    core = ndi.binary_erosion(valid, iterations=6)
    if core.sum() < 100:
        return np.zeros(s.shape, bool)
    return (grad > _METAL_EDGE_FACTOR * float(np.quantile(grad[core], 0.9))) & core


def non_anatomy(s: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """bool (H, W): what must not vote, whatever the polarity: air beside the body and metal edges.

    Air: a smooth region (sigma 3 px) of either grey tail (darkest/brightest ``_TAIL`` of the field) that
    touches the border - bright in bone-dark, dark in bone-bright images, so both tails are dropped. Metal:
    ``_METAL_MARGIN_PX`` around edges far stronger than anatomy's (``strong_edges``)."""
    from scipy import ndimage as ndi

    if valid.sum() < 100:
        return np.zeros(s.shape, bool)
    strong = strong_edges(s, valid)
    out = ndi.binary_dilation(strong, iterations=_METAL_MARGIN_PX) if strong.any() else strong
    g = ndi.gaussian_filter(s, 3.0)
    lo, hi = np.quantile(g[valid], [_TAIL, 1.0 - _TAIL])
    for tail in (g <= lo, g >= hi):
        labels, n = ndi.label(tail & valid)
        if n:
            border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
            out = out | np.isin(labels, border[border > 0])
    return out


def _halve(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _ridge_strength_numpy(g: np.ndarray, inner: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(sign of the dominant Hessian eigenvalue (int8), ridge strength (float32)) of the smoothed image ``g``,
    derivatives as ``np.gradient`` (central differences, one-sided at the border)."""
    gy, gx = np.gradient(g)
    hyy, hxy = np.gradient(gy)
    hxx = np.gradient(gx, axis=1)
    half_tr = 0.5 * (hxx + hyy)
    disc = np.sqrt(np.clip(half_tr**2 - (hxx * hyy - hxy**2), 0, None))
    dominant = np.where(half_tr > 0, half_tr + disc, half_tr - disc)  # eigenvalue of largest magnitude
    other = np.where(half_tr > 0, half_tr - disc, half_tr + disc)
    # ridge centres have curvature but no slope; step-edge shoulders have both (|l| sigma <= |grad| there);
    # a line has one strong curvature, a speck two
    line = np.clip(1.0 - _LINE_RATIO * np.abs(other) / np.maximum(np.abs(dominant), 1e-12), 0, 1)
    strength = np.clip(np.abs(dominant) * sigma - _SLOPE_PENALTY * np.hypot(gx, gy), 0, None) * line * inner
    return np.sign(dominant).astype(np.int8), strength.astype(np.float32)


try:
    import numba

    @numba.njit(cache=True, inline="always")
    def _diff(a, i, j, n, axis):  # pragma: no cover - compiled; np.gradient's difference at (i, j) along axis
        if axis == 0:
            if i == 0:
                return a[1, j] - a[0, j]
            if i == n - 1:
                return a[n - 1, j] - a[n - 2, j]
            return (a[i + 1, j] - a[i - 1, j]) * np.float32(0.5)
        if j == 0:
            return a[i, 1] - a[i, 0]
        if j == n - 1:
            return a[i, n - 1] - a[i, n - 2]
        return (a[i, j + 1] - a[i, j - 1]) * np.float32(0.5)

    @numba.njit(cache=True, parallel=True)
    def _ridge_strength_numba(g, inner, sigma, line_ratio, slope_penalty):  # pragma: no cover - compiled
        """As ``_ridge_strength_numpy`` (same arithmetic in float32), in two parallel passes over the rows."""
        h, w = g.shape
        gy = np.empty((h, w), np.float32)
        gx = np.empty((h, w), np.float32)
        for i in numba.prange(h):
            for j in range(w):
                gy[i, j] = _diff(g, i, j, h, 0)
                gx[i, j] = _diff(g, i, j, w, 1)
        sign = np.zeros((h, w), np.int8)
        strength = np.zeros((h, w), np.float32)
        sig = np.float32(sigma)
        for i in numba.prange(h):
            for j in range(w):
                hyy = _diff(gy, i, j, h, 0)
                hxy = _diff(gy, i, j, w, 1)
                hxx = _diff(gx, i, j, w, 1)
                half_tr = np.float32(0.5) * (hxx + hyy)
                disc = np.float32(np.sqrt(max(half_tr * half_tr - (hxx * hyy - hxy * hxy), np.float32(0.0))))
                if half_tr > 0:
                    dominant, other = half_tr + disc, half_tr - disc
                else:
                    dominant, other = half_tr - disc, half_tr + disc
                sign[i, j] = 1 if dominant > 0 else (-1 if dominant < 0 else 0)
                if not inner[i, j]:
                    continue
                line = min(max(np.float32(1.0) - line_ratio * abs(other) / max(abs(dominant), np.float32(1e-12)),
                               np.float32(0.0)), np.float32(1.0))
                slope = np.float32(np.sqrt(gx[i, j] * gx[i, j] + gy[i, j] * gy[i, j]))
                strength[i, j] = max(abs(dominant) * sig - slope_penalty * slope, np.float32(0.0)) * line
        return sign, strength

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; the numpy path keeps working without it
    _HAVE_NUMBA = False


def _ridge_strength(g: np.ndarray, inner: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Sign of the dominant Hessian eigenvalue and ridge strength (0 outside ``inner``) of the smoothed image
    ``g`` (float32): compiled and parallel with numba, numpy otherwise (same numbers to float32 rounding)."""
    g = np.ascontiguousarray(g, np.float32)
    if _HAVE_NUMBA and min(g.shape) >= 2:
        return _ridge_strength_numba(g, np.ascontiguousarray(inner, np.bool_), np.float32(sigma),
                                     np.float32(_LINE_RATIO), np.float32(_SLOPE_PENALTY))
    return _ridge_strength_numpy(g, inner, sigma)


def _ridge_sign(s: np.ndarray, inner: np.ndarray, sigma: float) -> float | None:
    """Strength-weighted mean of -sign(dominant Hessian eigenvalue) over the most ridge-like pixels that
    form lines (noise specks and blobs are left out: quantum noise is skewed, which would bias the sign)."""
    from scipy import ndimage as ndi

    if inner.sum() < 50:
        return None
    sign_map, strength = _ridge_strength(ndi.gaussian_filter(s, sigma), inner, sigma)
    if not strength.any():
        return None
    sel = strength >= np.quantile(strength[inner], 1.0 - _TOP_FRACTION)
    sel &= strength > 0
    total = score = 0.0
    n_votes = 0
    for sign in (-1, 1):  # keep connected line pieces of at least _MIN_LINE_PX * sigma pixels
        labels, n = ndi.label(sel & (sign_map == sign), structure=np.ones((3, 3)))
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())
        keep = sizes >= _MIN_LINE_PX * sigma
        keep[0] = False
        kept = keep[labels]
        w = float(strength[kept].sum())
        total, score, n_votes = total + w, score - sign * w, n_votes + int(kept.sum())
    if total <= 0 or n_votes < max(20, _MIN_VOTES * inner.sum()):
        return None  # too few line pixels to say anything at this scale
    return score / total


NET_LOGIT_PER_SCORE = 25.0  # log-odds of one unit of ridge score: CONFIDENT_SCORE (0.12) counts as a classifier 95 % sure
SHIPPED_CLASSIFIER = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "polarity.safetensors"
_CLASSIFIERS: dict = {}


def load_classifier(classifier="default"):
    """The polarity classifier to use: "default" = the shipped ``polarity.safetensors`` (None when it is not
    installed), a path (``polarity_net.PolarityClassifier``, loaded once per file), an object with ``logit(image)``,
    or None / False = ridges alone."""
    if classifier is None or classifier is False:
        return None
    if classifier == "default":
        if not SHIPPED_CLASSIFIER.is_file():
            return None
        classifier = SHIPPED_CLASSIFIER
    if hasattr(classifier, "logit"):
        return classifier
    key = str(Path(classifier).resolve())
    if key not in _CLASSIFIERS:
        from DeepMorphLib.polarity_net import PolarityClassifier

        _CLASSIFIERS[key] = PolarityClassifier.load(classifier)
    return _CLASSIFIERS[key]


def polarity_evidence(image, classifier="default") -> dict:
    """Both cues and their sum: {"ridge_score": ``ridge_polarity_score``, "net_logit": the classifier's logit
    of bone-bright (None without one), "score": tanh((net_logit + NET_LOGIT_PER_SCORE * ridge_score) /
    NET_LOGIT_PER_SCORE)}. The two are independent reads of the image (thin bone ridges; metal, air and the whole
    picture), so their log-odds add; ``score`` is that sum on the ridge score's scale (> 0 bone-bright, about the
    ridge score itself when the classifier is unsure or absent)."""
    ridge = ridge_polarity_score(image)
    net = load_classifier(classifier)
    logit = None if net is None else float(net.logit(_as_float_image(image)))
    total = NET_LOGIT_PER_SCORE * ridge + (logit or 0.0)
    return {"ridge_score": ridge, "net_logit": logit, "score": float(np.tanh(total / NET_LOGIT_PER_SCORE))}


def detect_polarity(image, classifier="default") -> tuple[str, float]:
    """Polarity of a grey X-ray (any range/dtype, (H, W)): ("bone-dark" | "bone-bright", score).

    ``score`` in [-1, 1] (> 0 bone-bright, < 0 bone-dark) combines the ridge score and the polarity classifier
    (``polarity_evidence``; ``classifier`` as in ``load_classifier``); |score| below ``CONFIDENT_SCORE`` means
    weak evidence (the sign is still the best guess). About 0.1 s for 448 x 448."""
    score = polarity_evidence(image, classifier)["score"]
    return ("bone-bright" if score > 0 else "bone-dark"), score


def resolve_polarity(image, polarity: str = "auto") -> tuple[str, float | None]:
    """``polarity`` "auto" -> detect; "bone-dark"/"bone-bright" -> taken as given (score None)."""
    if polarity == "auto":
        return detect_polarity(image)
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be 'auto', 'bone-dark' or 'bone-bright', not {polarity!r}.")
    return polarity, None


def apply_polarity(image, polarity: str, expected: str = NETWORK_DEFAULT_POLARITY) -> np.ndarray:
    """Image (float32) in the ``expected`` polarity: inverted within its own range (max + min - I) when
    ``polarity`` differs from ``expected``, unchanged otherwise. ``expected`` comes from the model's sidecar
    key ``polarity`` (default bone-dark); "any" (a net trained on both) leaves the image as it is."""
    img = np.asarray(image, dtype=np.float32)
    for name, value in (("polarity", polarity), ("expected", expected)):
        if value not in POLARITIES and not (name == "expected" and value == "any"):
            raise ValueError(f"{name} must be 'bone-dark' or 'bone-bright', not {value!r}.")
    if expected == "any" or polarity == expected:
        return img
    return (float(img.max()) + float(img.min()) - img).astype(np.float32)
