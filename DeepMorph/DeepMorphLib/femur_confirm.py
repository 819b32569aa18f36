"""When a femur fit counts as found: the confirmation rules of the femur task.

A fit from ``pipeline.fit_image`` (or the Slicer logic) is reported "not detected", its contour kept for review,
when the network does not support it: a low mean confidence at its points (``FEMUR_MIN_QUALITY``), mostly
extrapolated by the shape model (``FEMUR_MAX_EXTRAPOLATED`` / ``FEMUR_EXTRAPOLATED_QUALITY``), or a head implausibly
sized for the image (``PLAUSIBLE_HEAD_RADIUS``). Contours are (N, 2) px in image coordinates (x right, y down).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from DeepMorphLib.pipeline import FitResult


FEMUR_MIN_QUALITY = 0.35  # a femur fit with a lower mean confidence at its points is not confirmed. Simulated tuning
#   images (tune3-448, training seeds; session 25): the 11 of 200 fits below 0.4 were all 12.9-294 px off
#   (point-to-curve); p2c_mean of the confirmed fits 7.53 -> 4.39 px, detection 1.0 -> 0.945. Session 37 lowered it
#   to 0.35 together with the mostly-extrapolated rule below (the three constants chosen jointly)


def unconfirmed_femur_reason(quality: float, min_quality: float) -> str:
    return (f"femur not confirmed: the fit's mean confidence at its points is {quality:.2f} (< {min_quality:g}), so "
            "most of its contour is not on the network's outline; the contour is kept for review")


FEMUR_MAX_EXTRAPOLATED = 0.3  # a femur fit with at least this share of its contour points inside the image
FEMUR_EXTRAPOLATED_QUALITY = 0.55  # extrapolated (``overlay.EXTRAPOLATED_BELOW``) and a mean confidence below this
#   is mostly the shape model's guess: not confirmed. Chosen in session 37 with ``FEMUR_MIN_QUALITY`` on the three
#   simulated tuning sets together (tune3, tune2, tune7: 760 images, training seeds), as the lowest mean p2c_mean that
#   keeps the detections within 1 % (grid of 180; was 0.4 / 0.4 / 0.5 from tune3 alone): tune3 1.812 -> 1.704 px
#   (181 -> 178 detected), tune2 2.220 -> 2.199 (143 -> 144), tune7 2.589 -> 2.176 (353 -> 350); chosen on two sets,
#   the third moved 1.812 -> 1.704, 2.220 -> 2.231, 2.589 -> 2.176 px (docs/experiments.md, session 37)


def confirm_femur(result: FitResult, min_quality: float = FEMUR_MIN_QUALITY, head_dome=None,
                  extrapolated_rule=None) -> None:
    """A detected femur fit whose ``quality`` (mean confidence at its points) is below ``min_quality``, that is mostly
    extrapolated (``mostly_extrapolated_reason``; both off when ``min_quality`` is 0) or, with ``head_dome`` (the PDM's
    head-dome point indices), whose head is implausibly sized for the image (``implausible_size_reason``), becomes
    "not detected" (reason given); its contour, landmarks and point confidences stay in ``result`` for review
    (overlays draw it dashed orange, the Slicer module as an "unconfirmed" contour). ``extrapolated_rule``: as in
    ``mostly_extrapolated_reason``."""
    reason = femur_confirmation_reason(result.quality, result.contour, min_quality, head_dome, result.image_shape,
                                       result.point_confidence, extrapolated_rule)
    if result.detected and reason:
        result.detected, result.reason = False, reason


def femur_confirmation_reason(quality, contour, min_quality: float = FEMUR_MIN_QUALITY, head_dome=None,
                              image_shape=None, point_confidence=None, extrapolated_rule=None) -> str:
    """Why a femur fit (mean confidence ``quality`` at its points, ``contour`` (N, 2) px, ``point_confidence`` (N,))
    is not confirmed (``unconfirmed_femur_reason``, then, with ``point_confidence`` and ``image_shape``,
    ``mostly_extrapolated_reason`` (``extrapolated_rule`` as there) unless ``min_quality`` is 0, then, with
    ``head_dome`` and ``image_shape``, ``implausible_size_reason``); "" when it is. Raises for ``min_quality`` < 0."""
    if min_quality < 0:
        raise ValueError(f"femur_min_quality must be >= 0, got {min_quality}.")
    if quality is not None and quality < min_quality:
        return unconfirmed_femur_reason(quality, min_quality)
    if min_quality > 0 and quality is not None and point_confidence is not None and contour is not None \
            and image_shape is not None:
        reason = mostly_extrapolated_reason(quality, contour, point_confidence, image_shape, extrapolated_rule)
        if reason:
            return reason
    if head_dome is not None and contour is not None and image_shape is not None:
        return implausible_size_reason(contour, head_dome, image_shape)
    return ""


def mostly_extrapolated_reason(quality: float, contour, point_confidence, image_shape,
                               extrapolated_rule=None) -> str:
    """Why a femur fit is mostly the shape model's guess: at least ``FEMUR_MAX_EXTRAPOLATED`` of its ``contour``
    points inside the image (``image_shape`` (H, W)) have network confidence below ``overlay.EXTRAPOLATED_BELOW`` and
    its mean confidence ``quality`` is below ``FEMUR_EXTRAPOLATED_QUALITY``; "" otherwise. ``extrapolated_rule``:
    (share, quality) instead of those two."""
    from DeepMorphLib.overlay import extrapolated_points
    from DeepMorphLib.scoring import inside_crop

    max_share, below = (FEMUR_MAX_EXTRAPOLATED, FEMUR_EXTRAPOLATED_QUALITY) if extrapolated_rule is None \
        else extrapolated_rule
    inside = inside_crop(np.asarray(contour, dtype=float), int(image_shape[1]), int(image_shape[0]))
    if not inside.any() or quality >= below:
        return ""
    share = float(np.mean(extrapolated_points(np.asarray(point_confidence, dtype=float))[inside]))
    if share < max_share:
        return ""
    return (f"femur not confirmed: {share:.0%} of its contour in the image is extrapolated by the shape model "
            f"(network confidence < 0.2) and the rest is weakly supported (mean confidence {quality:.2f} < "
            f"{below:g}): the fit is mostly a guess; the contour is kept for review")


PLAUSIBLE_HEAD_RADIUS = (0.06, 0.27)  # femoral-head radius / min(H, W) that a confirmed femur fit may have: the
#   networks are trained on images where it is 0.086-0.19 (train-v2: 21.9-49.0 px of 256; real dev crops 0.10-0.16).
#   Outside it the PDM has shrunk onto a few px of one ridge (or blown up): not a femur the network can have outlined.
#   Only the confirmation uses it: as a prior in the fit comparisons (the plausible second opinion wins) it replaced
#   3 such fits on simulated tuning images (tune2-448) by confident wrong ones (58-315 px), p2c_mean 3.96 -> 4.87 px


def plausible_head_radius_px(image_shape) -> tuple[float, float]:
    """(min, max) femoral-head radius px for an image of ``image_shape`` (H, W): ``PLAUSIBLE_HEAD_RADIUS`` x min(H, W)."""
    side = float(min(image_shape[:2]))
    return PLAUSIBLE_HEAD_RADIUS[0] * side, PLAUSIBLE_HEAD_RADIUS[1] * side


def implausible_size_reason(contour, head_dome, image_shape) -> str:
    """Why a femur ``contour`` (N, 2) px is not a femur the networks can have outlined in an image of ``image_shape``:
    its head-dome radius (points ``head_dome``) is outside ``plausible_head_radius_px``; "" when it is inside."""
    from DeepMorphLib.asm_fit import head_dome_radius

    lo, hi = plausible_head_radius_px(image_shape)
    r = head_dome_radius(contour, head_dome)
    if lo <= r <= hi:
        return ""
    hint = ("the fit may have shrunk onto a small structure (look at the contour); if the femur is that small, crop "
            "the image closer" if r < lo else "if the femur is that large, give a wider view of the hip")
    return (f"femur not confirmed: the fitted head's radius is {r:.1f} px, outside the {lo:.0f}-{hi:.0f} px "
            f"({PLAUSIBLE_HEAD_RADIUS[0]:g}-{PLAUSIBLE_HEAD_RADIUS[1]:g} of the image size) the networks know; {hint}; "
            "the contour is kept for review")
