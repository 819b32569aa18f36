"""The head task's use of the femur fit: the femur network + PDM locate the femoral head when the head network
cannot, and check the head network's circle.

``pipeline.fit_image(image, "head")`` calls, in order: ``head_from_femur_contour`` (the head network found too few
pixels), ``snap_from_femur_dome`` (its circle could not be edge-snapped) or ``snapped_on_femur`` (it was: does it
lie on the femur?), and last ``check_with_femur_fit`` (a circle that no clear edge of its own confirms is checked
against the femur task's whole fit, ``needs_femur_check``). Each updates the head ``pipeline.FitResult`` in place:
``circle["source"]`` says where a replaced circle came from, ``reason`` why a head is not detected.
Coordinates as in ``pipeline``: px of the input image, x = column, y = row. The thresholds were tuned on the
simulated tuning sets (training seeds); their comments give the figures.
"""
from __future__ import annotations

import functools

import numpy as np

from DeepMorphLib import femur_confirm, pipeline


def _network_map(net, img, polarity: str) -> np.ndarray:
    """``net``'s confidence (H, W) on ``img`` shown with ``polarity`` (converted to the polarity ``net`` expects)."""
    from DeepMorphLib.polarity import apply_polarity

    return pipeline._resize_to(net(apply_polarity(img, polarity, getattr(net, "expected_polarity", "bone-dark"))),
                               img.shape)


@functools.lru_cache(maxsize=4)
def _load_dome_circle_model(path: str, mtime_ns: int):
    from DeepMorphLib.dome_circle import DomeCircleModel

    return DomeCircleModel.load(path)


def dome_circle(dome_points):
    """Head circle (``circle_fit.CircleFit``, px) of the head-dome points (K, 2) px of a femur fit: the shipped
    ``dome-circle`` model (``default_dome_circle_path``) when present and made for as many dome points (another PDM's
    dome falls back), learned from simulated ground truth (on the
    ground-truth points of tuning images 0.16 px off, with 1.5 px noise on the points 1.0 px), else the algebraic
    circle through the points, which runs down the neck (8.5 px off, radius +4 px; method "algebraic")."""
    from DeepMorphLib.circle_fit import CircleFit, fit_circle_points

    points = np.asarray(dome_points, dtype=float)
    path = pipeline.default_dome_circle_path()
    if path.is_file():
        model = _load_dome_circle_model(str(path), path.stat().st_mtime_ns)
        if len(points) == model.n_dome and np.all(np.isfinite(points)):
            cx, cy, r = model.circle_of_dome(points)
            if np.isfinite([cx, cy, r]).all() and r > 0:
                return CircleFit(True, cx, cy, r, n_pixels=len(points), method="dome-circle-model")
    return fit_circle_points(points, method="algebraic", min_points=3)


HEAD_TASK_SHAPE_PRIOR = {"regularization": 1.0, "final_regularization": None}  # the femur fits that check or give
#   a head circle keep one weak shape prior: with the femur task's two-stage prior (asm_fit.REGULARIZATION) the
#   head circles moved either way, on balance worse: tune3 head rmse_mean 1.00 -> 1.07 px (detected 195 -> 196 of
#   199; 000032 0.45 -> 13.6 px, 000153 1.07 -> 9.77 px), real dev mature 2.68 -> 3.00 px (cgmh_44_L/R and
#   cgmh_51_L, whose heads come from their femur fits' domes)


def _femur_head_dome(img, polarity: str, device, threshold: float, head_circle=None, side: str | None = None):
    """The shipped femur network + PDM fit on ``img`` (shown with ``polarity``): the head-dome points of the fitted
    contour (K, 2) px, their confidences (K,) and the map the PDM was fitted to; None when the PDM does not name
    its head dome or the fit finds no femur. ``head_circle`` (cx, cy, r) px: anchors the fit's second opinions,
    as in the femur task (``asm_fit``); None = no anchoring. ``side``: the femur's side when known (``fit_image``)."""
    shape_model = pipeline.load_shape_model(None)
    dome = pipeline._head_dome(shape_model)
    if dome is None:
        return None
    pred = pipeline.load_predictor("femur", None, device)
    conf = _network_map(pred, img, polarity)
    # the femur network's fit alone: with the region network's second opinion (as in the femur task) the head
    # error on the simulated tuning images grew (rmse_mean 5.55 -> 7.80 px)
    conf = pipeline.femur_fit_map(conf, getattr(pred, "target", "outline"), threshold)
    anchor = {} if head_circle is None else {"head_circle": tuple(head_circle), "head_dome": dome}
    sf = pipeline._fit_pdm(conf, shape_model.pdm, shaft_axis=pipeline.shaft_axis_indices(shape_model.landmark_indices),
                           **pipeline.side_option(shape_model.pdm, side), **anchor, **HEAD_TASK_SHAPE_PRIOR)
    if not sf.detected:
        return None
    arc = slice(dome[0], dome[1] + 1)
    confidence = getattr(sf, "point_confidence", None)
    confidence = np.zeros(dome[1] + 1 - dome[0]) if confidence is None else np.asarray(confidence)[arc]
    return np.asarray(sf.points, dtype=float)[arc], confidence, conf


def head_from_femur_contour(result: pipeline.FitResult, img, polarity: str, device, threshold: float, min_pixels: int):
    """Head circle from the femur outline: PDM fit -> head-dome arc -> circle through the femur confidence
    pixels within a few px of that arc (robust fit). Leaves ``result`` as is when that fails too."""
    from DeepMorphLib.circle_fit import fit_circle_points

    found = _femur_head_dome(img, polarity, device, threshold, side=result.side)
    if found is None:
        return
    arc, _, conf = found
    v, u = np.nonzero(conf > threshold)
    fg = np.column_stack([u, v]).astype(float)
    if len(fg):
        d = np.min(np.linalg.norm(fg[:, None, :] - arc[None, ::2, :], axis=2), axis=1)
        fg = fg[d < 6.0]
    points = fg if len(fg) >= min_pixels // 2 else arc
    cf = fit_circle_points(points, method="robust", min_points=3)
    if not cf.detected or cf.r > 0.5 * max(img.shape):  # a nearly straight "dome": no head there
        return
    pipeline._fill_head(result, cf)
    result.circle["source"] = "femur-contour"
    result.reason = "head outline from the femur network + PDM (head network found too few pixels)"


DOME_CONFIDENCE = 0.5  # mean femur confidence along the head dome for the dome circle to replace an unsnapped one
DOME_AGREEMENT = 0.3  # an edge circle within this fraction of r (centre distance + |radius change|) of the dome circle
DOME_MAX_MOVE = 0.5  # ... and a clear edge circle further than this fraction of r from it is another structure
DOME_RADIUS_AGREEMENT = 0.1  # a weak (not clear) edge circle that agrees with the dome circle is taken only
#   when its radius is within this fraction of the dome circle's, else the dome circle is: weak edges of another
#   radius were other arcs, 5-11 px too large (tune7 head 1.55 -> 1.37 px, p95 7.8 -> 3.2, median 0.68 -> 0.68)
MIN_RING_CONTRAST = 0.5  # an uncorroborated head circle needs this much confidence contrast across its rim


def ring_contrast(conf: np.ndarray, circle) -> float:
    """How crisp the confidence blob of a head circle (cx, cy, r) px is: mean confidence on the circle of radius
    0.7 r minus that on the circle of radius 1.3 r (outside the map counts as 0); ~0.9 for a clean disk."""
    from DeepMorphLib.edge_snap import ring_means

    inner, outer = ring_means(conf, circle, (0.7, 1.3))
    return float(inner - outer)


MIN_ON_FEMUR = 0.5  # mean femur-region confidence inside 0.7 r for a head circle that its own edge did not confirm


def on_femur(region_conf: np.ndarray, circle) -> float:
    """Mean of a femur region network's confidence (H, W) inside the circle (cx, cy, r) px shrunk to 0.7 r (pixels in
    the image only; 0 when none is): ~1 for a circle on the femoral head, ~0 for one on the pelvis or beside the
    femur."""
    from DeepMorphLib.region import disk_mask

    cx, cy, r = (float(v) for v in circle)
    mask = disk_mask(region_conf.shape, cx, cy, 0.7 * r)
    area = float(mask.sum())
    return float((mask * region_conf).sum() / area) if area > 0 else 0.0


def snap_from_femur_dome(result: pipeline.FitResult, img, polarity: str, device, threshold: float) -> None:
    """``_snap_from_dome`` (the second snap attempt), then, when the head still counts as found, the femur check:
    a circle that its own edge did not confirm must lie on the femur, i.e. the shipped femur region network's
    confidence inside it must reach ``MIN_ON_FEMUR`` (``circle["on_femur"]``). A circle off the femur means the head
    network found something else, so the head is looked for once more from the femur fit alone (not anchored on that
    circle): the edge circle at its head dome is taken when confirmed (clear edge or agreement, as above) and on the
    femur (``source`` "femur-dome-unanchored"), else from the femur networks' maps (``_hough_head_circle``, ``source``
    "femur-hough"); failing both, the head counts as not found (the circle kept for review). A circle on the femur
    that no edge confirmed (the head network's blob, or the femur fit's dome circle) gives way to the maps' circle
    when that one is edge-confirmed (real dev set: one mature hip 9.0 -> 1.4 px, one indeterminate 1.2 -> 7.0 px;
    simulated tuning images unchanged). On simulated tuning
    images circles off the femur (on the pelvis, beside the femur) were 100-200 px off, while every circle within
    3 px of the truth scored >= 0.93. (The map search after a diffuse blob was also tried: on the real dev set it
    added one wrong head, 154 px off, and nothing on the tuning images.)"""
    _snap_from_dome(result, img, polarity, device, threshold)
    scored = _score_on_femur(result, img, polarity, device) if result.detected else None
    if scored is None:
        return
    conf, score = scored
    if score >= MIN_ON_FEMUR:
        if not result.circle.get("snapped"):  # on the femur but no edge confirms it: an edge-confirmed head beats it
            found = _hough_head_circle(img, polarity, device, conf, result.confidence)
            if found is not None:
                _take_rescue(result, found[0], "femur-hough", found[1])
        return
    _rescue_off_femur(result, img, polarity, device, threshold, conf, score)


SNAPPED_MUST_BE_ON_FEMUR = True  # snapped circles are checked with ``on_femur`` too (False: every clear edge is
#   trusted, as before session 32). Tuning set tune7 (400 images, 50 phantoms): 5 clear round edges off the femur,
#   117-212 px off, were 80 % of the head error; 4 are found again on the femur (0.1-0.9 px), 1 is not found


def snapped_on_femur(result: pipeline.FitResult, img, polarity: str, device, threshold: float) -> None:
    """The head network's circle snapped onto an edge must lie on the femur as well (``on_femur`` >= ``MIN_ON_FEMUR``
    on the femur region network's map): a clear round edge off the femur is another structure (obturator ring,
    pubic ramus, the symphysis), and the head is then looked for as for an unsnapped circle off the femur
    (``_rescue_off_femur``)."""
    scored = _score_on_femur(result, img, polarity, device)
    if scored is None or scored[1] >= MIN_ON_FEMUR:
        return
    _rescue_off_femur(result, img, polarity, device, threshold, scored[0], scored[1])


def _score_on_femur(result: pipeline.FitResult, img, polarity: str, device):
    """(region map, score): the shipped femur region network's map of ``img`` (shown with ``polarity``) and the
    ``on_femur`` score of the circle in ``result``, recorded as ``circle["on_femur"]``; None without a region
    network."""
    region = pipeline.region_confidence(img, polarity, pipeline.load_region_net(None, device))
    if region is None:
        return None
    conf = region()
    c = result.circle
    c["on_femur"] = on_femur(conf, (c["cx"], c["cy"], c["r"]))
    return conf, c["on_femur"]


def _rescue_off_femur(result: pipeline.FitResult, img, polarity: str, device, threshold: float, region_conf,
                      score: float) -> None:
    """The head circle in ``result`` lies off the femur (``on_femur`` ``score`` < ``MIN_ON_FEMUR`` on the region
    network's map ``region_conf``): the head network found something else, so the head is looked for from the femur
    fit alone, not anchored on that circle ("femur-dome-unanchored", its edge confirmed and on the femur), then on
    the femur networks' maps ("femur-hough"); failing both, the head counts as not found (circle kept for review)."""
    found = _dome_edge_circle(img, polarity, device, threshold, result.confidence, side=result.side)
    if found is not None and found[2]:
        snap = found[1]
        rescued = on_femur(region_conf, (snap.cx, snap.cy, snap.r))
        if rescued >= MIN_ON_FEMUR:
            _take_rescue(result, snap, "femur-dome-unanchored", rescued, off_femur=score)
            return
    found = _hough_head_circle(img, polarity, device, region_conf, result.confidence)
    if found is not None:
        _take_rescue(result, found[0], "femur-hough", found[1], off_femur=score)
        return
    result.detected = False
    result.reason = (f"head not found: the circle is not on the femur (femur region confidence inside it "
                     f"{score:.2f} < {MIN_ON_FEMUR}), its own edge does not clearly confirm it, and neither the femur "
                     "fit's head dome nor the femur maps show a clear head; the circle is kept in 'circle' for review")


FEMUR_CHECK_EDGE = 0.7  # a head circle snapped onto its own edge with at least this support is not checked
FEMUR_CHECK_QUALITY = 0.5  # mean confidence of a femur fit that may move the head circle
FEMUR_CHECK_DOME = 0.7  # ... and its mean confidence along the head dome
HEAD_FROM_CONFIDENT_DOME = True  # a head found nowhere else is taken from a femur fit confident along its head dome
#   (>= FEMUR_CHECK_DOME) even when the femur task does not confirm that fit (close-up views whose shaft the outline
#   network does not see; low mean confidence). Simulated tuning set tune7 (training seeds), the 16 heads missed before:
#   000389 (dome confidence 1.00) found 0.5 px off, 000230 (0.72) 3.1 px off; no other missed head had a dome
#   confidence above 0.54 (the wrong domes 0.15-0.54)


def needs_femur_check(result: pipeline.FitResult) -> bool:
    """Whether the head circle of ``result`` is checked against the femur fit: not found, not snapped onto an edge,
    snapped with support below ``FEMUR_CHECK_EDGE``, or found by the femur helpers (``source`` set). On simulated
    tuning images the wrong circles the check fixed were snapped with support 0.65-0.68 (onto the acetabulum or
    the other hip), while well-placed snaps reached 0.74-0.78."""
    c = result.circle or {}
    return (not result.detected or not c.get("snapped") or c.get("source") is not None
            or float(c.get("edge_support") or 0.0) < FEMUR_CHECK_EDGE)


def check_with_femur_fit(result: pipeline.FitResult, img, polarity: str, device, threshold: float, side, head_net,
                          detected_polarity: tuple | None = None, reject_unconfirmed: bool = True) -> None:
    """The femur task's whole fit (``fit_image(img, "femur", polarity=polarity)`` with the polarity option as given,
    so "auto" keeps the femur task's own choice, which lets both polarities compete on weak evidence; outline
    network, second opinions, region network)
    locates the femur, head dome included, far more often than the head network's blob on its own. When that fit is
    confident (mean confidence >= ``FEMUR_CHECK_QUALITY``, >= ``FEMUR_CHECK_DOME`` along the head dome), the circle
    through its head dome, moved onto the head's edge when that edge is clear (``edge_snap``, within
    ``DOME_MAX_MOVE`` r), replaces a head circle that lies more than ``DOME_AGREEMENT`` r from it, or gives the head
    when none was found (``circle["source"]`` "femur-fit", ``snapped`` says whether the edge confirmed it). Simulated
    tuning images (25 phantoms, training seeds): rmse_mean 5.37 -> 4.09 px, detection 0.965 -> 0.980; on the real dev
    radiographs no femur fit is confident along the dome where the circle disagrees (unchanged). When no confident
    femur fit speaks, ``reject_unconfirmed`` makes an unconfirmed head-network circle "not detected"
    (``_reject_unconfirmed_network_circle``) and a weakly snapped one must lie on the femur
    (``_rescue_weak_snap_off_femur``). A head that is then not detected is taken from a femur fit that the femur
    task confirms (with the rules the check was tuned with, ``CHECK_CONFIRMATION``; plausible head size) when it is
    confident along the dome (>= ``FEMUR_CHECK_DOME``), as above (``FEMUR_CHECK_QUALITY`` only guards replacing a
    circle that was found): the head and femur tasks no longer disagree on whether the image shows a femoral head.
    Real dev radiographs: 2 of 9 heads not detected found, 3.5 and 3.9 px off (a mature and an indeterminate hip;
    their femur fits' quality 0.41-0.43); simulated tuning sets: tune3 1 of 5 (0.8 px), tune2 none changed. Failing
    that, with ``HEAD_FROM_CONFIDENT_DOME``, a femur fit that the femur task does not confirm but that is confident
    along its head dome (a close-up whose shaft the network does not see) gives the head the same way."""
    from DeepMorphLib.edge_snap import snap_circle
    from DeepMorphLib.polarity import apply_polarity

    femur = pipeline.fit_image(img, "femur", polarity=polarity, device=device, side=side, femur_min_quality=0.0,
                               detected_polarity=detected_polarity, fit_options=HEAD_TASK_SHAPE_PRIOR)
    _confirm_as_tuned(femur)
    shape_model = pipeline.load_shape_model(None)
    dome = pipeline._head_dome(shape_model)
    if result.circle is not None:  # a head that stays not found without a circle keeps none (overlays, markups)
        result.circle["femur_fit_quality"] = femur.quality
    if dome is None:  # a shape model without a named head dome: nothing to check against
        return
    seed = _confident_dome_circle(femur, dome, img.shape)
    reason = "head circle from the femur fit's head dome (it put the head elsewhere than the head network)"
    if seed is None:  # no confident femur fit speaks
        if reject_unconfirmed:
            _reject_unconfirmed_network_circle(result)
            _rescue_weak_snap_off_femur(result, img, device, threshold)
        if result.detected:
            return
        # no head otherwise: the head of a femur fit that the femur task itself confirms, when its dome is confident
        seed = _confident_dome_circle(femur, dome, img.shape, min_quality=CHECK_CONFIRMATION["min_quality"])
        reason = ("head circle from the head dome of the confirmed femur fit (nothing else found or confirmed the "
                  "head)")
        if seed is None and HEAD_FROM_CONFIDENT_DOME:
            seed = _confident_dome_circle(femur, dome, img.shape, min_quality=0.0, confirmed=False)
            reason = ("head circle from the head dome of a femur fit that is confident along the dome only (the "
                      "femur itself is not confirmed; nothing else found or confirmed the head)")
        if seed is None:
            return
    conf = result.confidence if femur.polarity == result.polarity and result.confidence is not None else \
        _network_map(head_net, img, femur.polarity)
    snap = snap_circle(apply_polarity(img, femur.polarity, "bone-dark"), (seed.cx, seed.cy, seed.r), conf)
    moved = float(np.hypot(snap.cx - seed.cx, snap.cy - seed.cy)) + abs(snap.r - seed.r)
    edge = snap.applied and moved <= DOME_MAX_MOVE * seed.r
    cx, cy, r = (snap.cx, snap.cy, snap.r) if edge else (seed.cx, seed.cy, seed.r)
    c = result.circle if result.circle is not None else {}
    if result.detected and "cx" in c and np.hypot(c["cx"] - cx, c["cy"] - cy) <= DOME_AGREEMENT * r:
        c["femur_agrees"] = True  # the femur fit confirms the circle
        return
    before = {k: c[k] for k in ("cx", "cy", "r")} if "cx" in c else None
    c.update(cx=float(cx), cy=float(cy), r=float(r), snapped=bool(edge), edge_support=float(snap.support),
             source="femur-fit", replaced=before, replaced_detected=bool(result.detected))
    result.circle, result.detected, result.reason = c, True, reason
    result.landmarks = {"head_center": [float(cx), float(cy)]}


CHECK_CONFIRMATION = {"min_quality": 0.4, "extrapolated_rule": (0.4, 0.5)}  # the femur task's confirmation as the
#   femur check was tuned with (``femur_confirm.femur_confirmation_reason``; the femur task's own rules were re-tuned in
#   session 37 to 0.35 and (0.3, 0.55): through the check they moved one tune7 head, 000331, 0.49 -> 9.5 px, and none
#   of tune3's, so the check keeps these)


def _confirm_as_tuned(femur: pipeline.FitResult) -> None:
    """The femur task's fit (found with the quality rules off) confirmed by ``CHECK_CONFIRMATION``: "not detected"
    with the reason when it fails them."""
    femur_confirm.confirm_femur(femur, CHECK_CONFIRMATION["min_quality"],
                                extrapolated_rule=CHECK_CONFIRMATION["extrapolated_rule"])


def _confident_dome_circle(femur: pipeline.FitResult, dome: tuple, shape: tuple,
                           min_quality: float = FEMUR_CHECK_QUALITY, confirmed: bool = True):
    """The head circle (``dome_circle``) of the head dome (point indices ``dome``) of a detected femur fit that is
    confident (quality >= ``min_quality``, >= ``FEMUR_CHECK_DOME`` along the dome, radius within half the image
    ``shape``), or None. ``confirmed=False``: also a fit the femur task did not confirm (``detected`` False, e.g. a
    close-up view whose shaft the network does not see), when it is confident along the dome and its head radius is
    plausible for the image (``plausible_head_radius_px``)."""
    if (confirmed and not femur.detected) or (femur.quality or 0.0) < min_quality \
            or femur.contour is None or femur.point_confidence is None:
        return None
    if float(np.mean(np.asarray(femur.point_confidence)[dome[0]: dome[1] + 1])) < FEMUR_CHECK_DOME:
        return None
    seed = dome_circle(np.asarray(femur.contour, dtype=float)[dome[0]: dome[1] + 1])
    if not seed.detected or seed.r > 0.5 * max(shape):
        return None
    lo, hi = femur_confirm.plausible_head_radius_px(shape)
    return seed if confirmed or lo <= seed.r <= hi else None


def _reject_unconfirmed_network_circle(result: pipeline.FitResult) -> None:
    """The end of the femur check when no confident femur fit speaks: a detected circle that is the head network's
    own (no ``source``) and that no clear edge confirmed (not ``snapped``) becomes "not detected", the circle kept
    for review. Such circles were all wrong on the simulated tuning sets and the real dev set (tune3 000042 179 px,
    tune2 000064 24 px and 000133 11 px, cgmh_47_L 168 px: crisp blobs on the other hip or on the pelvis)."""
    c = result.circle or {}
    if result.detected and c.get("source") is None and not c.get("snapped"):
        result.detected = False
        result.reason = ("head not confirmed: neither a clear edge in the image nor a confident femur fit confirms "
                         "the head network's circle; the circle is kept in 'circle' for review")


def _rescue_weak_snap_off_femur(result: pipeline.FitResult, img, device, threshold: float) -> None:
    """The end of the femur check when no confident femur fit speaks: the head network's own circle (no ``source``)
    snapped onto an edge with support below ``FEMUR_CHECK_EDGE`` must lie on the femur (``on_femur`` >=
    ``MIN_ON_FEMUR``, as an unsnapped one must, ``snap_from_femur_dome``); off it, the head is looked for from the
    femur fit and maps instead (``_rescue_off_femur``), else it counts as not found. Weak snaps are where the wrong
    circles are (acetabulum, the other hip, a blob on the pelvis: support 0.65-0.68 on the tuning sets)."""
    c = result.circle or {}
    if not result.detected or c.get("source") is not None or not c.get("snapped") \
            or float(c.get("edge_support") or 0.0) >= FEMUR_CHECK_EDGE:
        return
    scored = _score_on_femur(result, img, result.polarity, device)
    if scored is not None and scored[1] < MIN_ON_FEMUR:
        _rescue_off_femur(result, img, result.polarity, device, threshold, *scored)


def _take_rescue(result: pipeline.FitResult, snap, source: str, on_femur_score: float, **replaced) -> None:
    """The head found by a later search (an edge circle ``snap``) replaces the circle in ``result`` (the head
    network's first circle stays in ``circle["unsnapped"]``; ``replaced``: what was wrong with the replaced one,
    e.g. ``off_femur`` = its femur score)."""
    before = result.circle.get("unsnapped") or {k: result.circle[k] for k in ("cx", "cy", "r")}
    result.circle.update(cx=snap.cx, cy=snap.cy, r=snap.r, snapped=True, edge_support=snap.support,
                         unsnapped=before, source=source, on_femur=on_femur_score, **replaced)
    result.landmarks = {"head_center": [snap.cx, snap.cy]}


def _hough_head_circle(img, polarity: str, device, region_conf, head_conf):
    """The last head search, from the femur networks' maps alone (``head_search.head_circle_hough``: the femur
    outline network's ridge where the region network has a rim, voting inwards): the edge circle next to the Hough
    circle (``edge_snap.snap_circle``) and its ``on_femur`` score, taken only when the Hough circle is supported
    (score x arc coverage >= ``MIN_HOUGH_SUPPORT``) and its edge circle is clear, within ``DOME_MAX_MOVE`` r of it
    and on the femur (``on_femur`` >= ``MIN_ON_FEMUR``); else None."""
    from DeepMorphLib.edge_snap import snap_circle
    from DeepMorphLib.head_search import head_circle_hough
    from DeepMorphLib.polarity import apply_polarity

    pred = pipeline.load_predictor("femur", None, device)
    if getattr(pred, "target", "outline") != "outline":
        return None
    outline = _network_map(pred, img, polarity)
    found = head_circle_hough(outline, region_conf)
    if found is None or found.score * found.coverage < pipeline.MIN_HOUGH_SUPPORT:
        return None
    snap = snap_circle(apply_polarity(img, polarity, "bone-dark"), (found.cx, found.cy, found.r), head_conf)
    moved = float(np.hypot(snap.cx - found.cx, snap.cy - found.cy)) + abs(snap.r - found.r)
    if not snap.applied or moved > DOME_MAX_MOVE * found.r:
        return None
    score = on_femur(region_conf, (snap.cx, snap.cy, snap.r))
    return (snap, score) if score >= MIN_ON_FEMUR else None


def _dome_edge_circle(img, polarity: str, device, threshold: float, head_conf, head_circle=None,
                      side: str | None = None):
    """The head circle (``dome_circle``) of the femur PDM fit (``_femur_head_dome``, its second opinions anchored on
    ``head_circle`` (cx, cy, r) px when given) and the best edge circle around it (``edge_snap.snap_circle``):
    (seed CircleFit, EdgeSnap, confirmed, dome point confidences), ``confirmed`` when the edge circle lies within
    ``DOME_AGREEMENT`` r of the seed, or within ``DOME_MAX_MOVE`` r when its edge is clear (further away a clear
    edge is another arc, most often the acetabular roof concentric with the head: on the real dev radiographs all
    7 such snaps were wrong, two of them moving a dome circle 1.6-2.0 px off to 30-37 px off); None when there
    is no femur fit or dome circle. A weak edge circle confirmed by agreement alone gives way to the dome circle
    itself when their radii differ by more than ``DOME_RADIUS_AGREEMENT``."""
    import dataclasses

    from DeepMorphLib.edge_snap import snap_circle
    from DeepMorphLib.polarity import apply_polarity

    found = _femur_head_dome(img, polarity, device, threshold, head_circle=head_circle, side=side)
    if found is None:
        return None
    arc, arc_confidence, _ = found
    seed = dome_circle(arc)
    if not seed.detected:
        return None
    snap = snap_circle(apply_polarity(img, polarity, "bone-dark"), (seed.cx, seed.cy, seed.r), head_conf)
    moved = float(np.hypot(snap.cx - seed.cx, snap.cy - seed.cy)) + abs(snap.r - seed.r)
    confirmed = moved <= DOME_AGREEMENT * seed.r or (snap.applied and moved <= DOME_MAX_MOVE * seed.r)
    if confirmed and not snap.applied and abs(snap.r - seed.r) > DOME_RADIUS_AGREEMENT * seed.r:
        snap = dataclasses.replace(snap, cx=float(seed.cx), cy=float(seed.cy), r=float(seed.r),
                                   reason="a weak edge of another radius than the dome circle: the dome circle")
    return seed, snap, bool(confirmed), arc_confidence


def _snap_from_dome(result: pipeline.FitResult, img, polarity: str, device, threshold: float) -> None:
    """Second edge-snap attempt for a head circle that could not be snapped: from the head circle (``dome_circle``)
    of the femur PDM fit (shipped femur network and PDM, its second opinions anchored on the unsnapped head
    circle, as in the femur task). The best edge circle around the dome circle replaces the head circle when its
    evidence is clear or when it agrees with the dome circle (within ``DOME_AGREEMENT`` r: two independent
    estimates, the femur outline and the image edge, confirm each other); otherwise the dome circle itself does
    when the femur fit is confident along the dome (mean >= ``DOME_CONFIDENCE``). When nothing confirms the head
    circle and its blob is diffuse (``ring_contrast`` < ``MIN_RING_CONTRAST``) the head counts as not found
    (``detected`` False, the circle kept for review): a blob on the wrong structure. On the tune3 tuning images
    the dome circles taken alone ("femur-dome-fit") were 8.5 px off (mean, 10 images) as the circle through the
    dome points, 3.2 px (4 images; the others now snap onto the edge) by the dome-circle model."""
    before = {k: result.circle[k] for k in ("cx", "cy", "r")}
    found = _dome_edge_circle(img, polarity, device, threshold, result.confidence,
                              (before["cx"], before["cy"], before["r"]), side=result.side)
    if found is None:
        return
    seed, snap, confirmed, arc_confidence = found
    if confirmed:
        result.circle.update(cx=snap.cx, cy=snap.cy, r=snap.r, snapped=True, edge_support=snap.support,
                             unsnapped=before, source="femur-dome")
    elif float(np.mean(arc_confidence)) >= DOME_CONFIDENCE:
        # no clear edge either way: a femur fit that is confident along the head dome beats a head circle that
        # found no edge (on simulated images from training seeds: 48 -> 8 px mean error where this applied)
        result.circle.update(cx=seed.cx, cy=seed.cy, r=seed.r, unsnapped=before, source="femur-dome-fit")
    else:  # nothing confirms the head network's circle: keep it only when its own blob is crisp
        contrast = ring_contrast(result.confidence, (before["cx"], before["cy"], before["r"]))
        result.circle["ring_contrast"] = contrast
        if contrast < MIN_RING_CONTRAST:
            result.detected = False
            result.reason = (f"head not found: the head network's blob is diffuse (ring contrast {contrast:.2f} < "
                             f"{MIN_RING_CONTRAST}) and neither a clear edge in the image nor the femur fit confirms "
                             "it; the unconfirmed circle is kept in 'circle' for review")
        return
    result.landmarks = {"head_center": [result.circle["cx"], result.circle["cy"]]}
