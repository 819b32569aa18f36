"""Scoring against hand-computed cases (dev-set README rules)."""
import math

import numpy as np
import pytest

from DeepMorphLib.scoring import (femur_p2c_real, femur_p2c_sim, head_errors, segment_distances, summarize_by,
                                  summarize_femur, summarize_head)


def test_head_circle_off_by_a_known_vector():
    e = head_errors((103.0, 96.0, 62.0), (100.0, 100.0, 50.0))  # off by (3, -4, 12)
    assert e["rmse"] == pytest.approx(13.0)
    assert e["center_err"] == pytest.approx(5.0)
    assert e["radius_err"] == pytest.approx(12.0)


def test_segment_distances():
    d = segment_distances([[5, 3], [-4, 0], [12, -5], [5, 0]], [[0, 0]], [[10, 0]])
    assert d == pytest.approx([3, 4, math.hypot(2, 5), 0])


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_contour_at_a_known_distance():
    outline = square(100, 100, 300, 300)
    # fitted square 2 px outside all round: every point is exactly 2 px from the outline
    t = np.linspace(0, 1, 25)[:-1]
    pts = np.concatenate([np.c_[98 + 204 * t, np.full_like(t, 98)], np.c_[np.full_like(t, 302), 98 + 204 * t]])
    pts = pts[(pts[:, 0] > 99) & (pts[:, 1] > 99)]  # avoid the corners (distance sqrt(8) there)
    assert femur_p2c_real(pts, outline, eval_max_y=400, width=448, height=448) == pytest.approx(2.0)
    assert femur_p2c_sim(pts, outline) == pytest.approx(2.0)


def dense_square(x0, y0, x1, y1, step=1.0):
    """Closed outline sampled every ``step`` px, like the dev set's outlines."""
    corners = np.array(square(x0, y0, x1, y1) + [[x0, y0]], float)
    pts = [a + (b - a) * t for a, b in zip(corners[:-1], corners[1:])
           for t in np.arange(0, 1, step / np.linalg.norm(b - a))]
    return np.array(pts)


def test_points_below_eval_max_y_and_outside_the_crop_are_ignored():
    outline = dense_square(100, 100, 300, 500)  # extends past a 448 crop; the bottom edge at y=500 is the cut
    good = [[103, 150], [297, 200]]  # 3 px from the sides
    below = [[200, 430], [150, 420]]  # y > eval_max_y: far from every kept segment, must be ignored
    outside = [[305, 460], [-3, 120]]  # outside the crop
    rms = femur_p2c_real(good + below + outside, outline, eval_max_y=400, width=448, height=448)
    assert rms == pytest.approx(3.0)
    # the bottom cut (y=500) and the sides below y=400 are not scored: a point at y=410 measures to (100|300, 400)
    assert femur_p2c_real([[200, 399]], outline, eval_max_y=400, width=448, height=448) == pytest.approx(100.0)
    assert femur_p2c_real(below, outline, eval_max_y=400, width=448, height=448) is None
    # the same points against the full closed outline (simulated rule): the bottom edge counts there
    assert femur_p2c_sim([[200, 497]], outline) == pytest.approx(3.0)


def test_only_segments_with_both_ends_above_eval_max_y_count():
    outline = square(100, 100, 300, 500)  # coarse: each side is one segment ending at y=500
    # only the top edge (both ends at y=100) is kept, so a point beside the left side measures to its corner
    assert femur_p2c_real([[97, 104]], outline, eval_max_y=400, width=448, height=448) == pytest.approx(5.0)


def test_summaries_and_groups():
    recs = [
        {"detected": True, "rmse": 2.0, "center_err": 1.0, "maturity": "mature"},
        {"detected": True, "rmse": 4.0, "center_err": 3.0, "maturity": "mature"},
        {"detected": False, "maturity": "immature"},
    ]
    s = summarize_head(recs, p95=True)
    assert s["rmse_mean"] == 3.0 and s["rmse_median"] == 3.0 and s["center_err_mean"] == 2.0
    assert s["detection_rate"] == pytest.approx(2 / 3) and s["n"] == 3 and s["rmse_p95"] == pytest.approx(3.9)
    g = summarize_by(recs, "maturity", summarize_head)
    assert g["immature"] == {"rmse_mean": None, "rmse_median": None, "center_err_mean": None,
                             "detection_rate": 0.0, "n": 1}
    f = summarize_femur([{"detected": True, "p2c": 1.0}, {"detected": True, "p2c": 3.0}, {"detected": False}])
    assert f["p2c_mean"] == 2.0 and f["p2c_median"] == 2.0 and f["n"] == 3 and f["n_scored"] == 2


def test_head_in_view_fractions_against_geometry():
    from DeepMorphLib.scoring import head_in_view

    assert head_in_view((100, 100, 30), 200, 200) == 1.0
    assert head_in_view((400, 100, 30), 200, 200) == 0.0
    # centred on the right border (x = width - 0.5): half of the disk is in the crop
    assert abs(head_in_view((199.5, 100, 30), 200, 200) - 0.5) < 0.01
    # a quarter: centred on the bottom-right corner
    assert abs(head_in_view((199.5, 199.5, 30), 200, 200) - 0.25) < 0.01
    # a collimator field covering the left half of the image hides the part of a centred disk right of x = 99.5
    field = np.zeros((200, 200))
    field[:, :100] = 1.0
    assert abs(head_in_view((99.5, 100, 40), 200, 200, field) - 0.5) < 0.01


def test_head_in_view_of_a_simulated_sample_follows_its_circular_collimator():
    from DeepMorphLib.commands.evaluate import _field
    from DeepMorphLib.scoring import head_in_view

    detector = {"collimation": "circle", "collimation_center": [0.5, 0.5], "collimation_radius": 0.4}
    field = _field(detector, (200, 200))  # a field of radius 80 px around (99.5, 99.5)
    assert head_in_view((99.5, 99.5, 30), 200, 200, field) == 1.0
    # a disk of radius 10 centred on the field's rim: about half of it inside (the rim curves slightly)
    assert abs(head_in_view((99.5 + 80, 99.5, 10), 200, 200, field) - 0.5) < 0.05
    assert head_in_view((99.5 + 80, 99.5, 10), 200, 200) == 1.0  # inside the crop, without the field
    assert _field({"collimation": "none"}, (200, 200)) is None and _field(None, (200, 200)) is None


def test_detection_rate_in_view_counts_only_heads_mostly_in_view():
    from DeepMorphLib.scoring import summarize_head

    recs = [{"detected": True, "rmse": 1.0, "center_err": 1.0, "head_in_view": 1.0},
            {"detected": False, "head_in_view": 0.9},
            {"detected": False, "head_in_view": 0.2},
            {"detected": True, "rmse": 3.0, "center_err": 2.0, "head_in_view": 0.3}]
    out = summarize_head(recs)
    assert out["detection_rate"] == 0.5 and out["n"] == 4
    assert out["detection_rate_in_view"] == 0.5 and out["n_in_view"] == 2
    assert "detection_rate_in_view" not in summarize_head([{"detected": True, "rmse": 1.0, "center_err": 1.0}])


def _wide_view_sample():
    """A simulated sample showing both hips: the annotated (right) femur on the left, the other one 200 px right."""
    t = np.linspace(0.0, 2 * np.pi, 400, endpoint=False)
    ring = lambda cx: np.column_stack([cx + 50 * np.cos(t), 150 + 50 * np.sin(t)]).tolist()  # noqa: E731
    return {"id": "w", "meta": {"polarity": "bone-dark", "side": "right", "implants": False, "modality": "simulated"},
            "truth": {"head_circle": [100.0, 150.0, 30.0], "contour": ring(100.0), "detector": None,
                      "other_femurs": [{"side": "left", "head_circle": [300.0, 150.0, 30.0], "contour": ring(300.0)}]}}


def _result(task, circle=None, contour=None, detected=True):
    from DeepMorphLib import pipeline

    return pipeline.FitResult(task=task, image_shape=(448, 448), detected=detected, reason="", polarity="bone-dark",
                              polarity_score=None, polarity_mode="given", circle=circle, contour=contour)


def test_a_fit_on_the_other_hip_is_scored_against_that_femur():
    from DeepMorphLib.commands.evaluate import score_sample, summarize

    sample = _wide_view_sample()
    head = _result("head", circle={"cx": 303.0, "cy": 154.0, "r": 30.0})  # 5 px from the other head
    rec = score_sample("head", sample, head, real=False, shape=(448, 448))
    assert rec["scored_femur"] == "other" and rec["rmse"] == pytest.approx(5.0)
    assert rec["rmse_annotated"] == pytest.approx(np.hypot(203.0, 4.0))
    strict = score_sample("head", sample, head, real=False, shape=(448, 448), side_option="annotated")
    assert strict["rmse"] == pytest.approx(np.hypot(203.0, 4.0)) and strict["scored_femur"] == "annotated"
    assert score_sample("head", sample, head, real=False, shape=(448, 448), side_option="left")["rmse"] == pytest.approx(5.0)
    own = score_sample("head", sample, _result("head", circle={"cx": 100.0, "cy": 153.0, "r": 34.0}), False, (448, 448))
    assert own["scored_femur"] == "annotated" and own["rmse"] == pytest.approx(5.0) == own["rmse_annotated"]
    no_own_head = {**sample, "truth": {**sample["truth"], "head_circle": None}}
    assert score_sample("head", no_own_head, head, real=False, shape=(448, 448)) is None  # the scored images stay
    out = summarize("head", [rec, own], real=False)
    assert out["rmse_mean"] == pytest.approx(5.0) and out["n_other_femur"] == 1
    assert out["annotated_only"]["rmse_mean"] == pytest.approx((np.hypot(203.0, 4.0) + 5.0) / 2)

    t = np.linspace(0.0, np.pi, 50)
    arc = np.column_stack([300 + 52 * np.cos(t), 150 + 52 * np.sin(t)])  # 2 px outside the other femur's ring
    femur = score_sample("femur", sample, _result("femur", contour=arc), real=False, shape=(448, 448))
    assert femur["scored_femur"] == "other" and femur["p2c"] == pytest.approx(2.0, abs=0.05)
    assert femur["p2c_annotated"] > 140
    missed = score_sample("femur", sample, _result("femur", contour=arc, detected=False), False, (448, 448))
    assert missed["p2c"] is None and missed["p2c_unconfirmed"] == pytest.approx(2.0, abs=0.05)
    fsum = summarize("femur", [femur, missed], real=False)
    assert fsum["p2c_mean"] == pytest.approx(2.0, abs=0.05) and fsum["n_other_femur"] == 1
    assert fsum["annotated_only"]["p2c_mean"] == pytest.approx(femur["p2c_annotated"])


def test_points_in_the_exposed_field_are_scored_apart():
    """A circular collimator of radius 0.25 x 400 = 100 px around (199.5, 199.5): a fit 2 px off the truth inside
    the field and 12 px off outside it scores 2 px in the field, the RMS of both over the image."""
    from DeepMorphLib.commands.evaluate import score_sample, summarize
    from DeepMorphLib.scoring import points_in_field
    from DeepMorphSimulatorLib.detector import DetectorParams, field_mask

    detector = {"collimation": "circle", "collimation_center": [0.5, 0.5], "collimation_radius": 0.25}
    field = field_mask((400, 400), DetectorParams(collimation="circle", collimation_center=(0.5, 0.5),
                                                  collimation_radius=0.25))
    assert len(points_in_field([[199.5, 199.5], [199.5, 290.0], [199.5, 310.0], [-5.0, 3.0]], field)) == 2
    assert len(points_in_field([[1.0, 1.0], [-5.0, 3.0]], None)) == 2  # no collimation: every point
    truth_x = 150.0  # a straight outline x = 150 from y = 0 to 399
    outline = [[truth_x, 0.0], [truth_x, 399.0], [truth_x - 1.0, 399.0], [truth_x - 1.0, 0.0]]
    ys_in, ys_out = np.linspace(140, 260, 13), np.linspace(20, 60, 5)  # the field spans y 113-286 at x ~ 152
    contour = np.r_[np.column_stack([np.full(13, truth_x + 2.0), ys_in]), np.column_stack([np.full(5, truth_x + 12.0), ys_out])]
    sample = {"id": "c", "meta": {"polarity": "bone-dark", "side": "right"},
              "truth": {"head_circle": None, "contour": outline, "detector": detector}}
    rec = score_sample("femur", sample, _result("femur", contour=contour), real=False, shape=(400, 400))
    assert rec["p2c_in_field"] == pytest.approx(2.0, abs=1e-6)
    assert rec["p2c"] == pytest.approx(np.sqrt((13 * 4 + 5 * 144) / 18), abs=1e-6)
    assert summarize("femur", [rec], real=False)["in_field"]["p2c_mean"] == pytest.approx(2.0, abs=1e-6)


def test_contour_parts_split_at_the_neck_landmarks():
    from DeepMorphLib.scoring import contour_parts

    parts = contour_parts(60, {"anchor_neck_superior": 24, "anchor_neck_inferior": 39, "head": 31})
    assert list(parts["lateral"]) == list(range(24)) and list(parts["head_neck"]) == list(range(24, 40))
    assert list(parts["medial"]) == list(range(40, 60))
    assert contour_parts(60, {"neck_superior": 5, "neck_inferior": 9})["head_neck"].tolist() == [5, 6, 7, 8, 9]
    assert contour_parts(60, {"head": 31}) is None  # no neck landmarks: no parts
    assert contour_parts(10, {"neck_superior": 5, "neck_inferior": 12}) is None  # not inside the contour


def test_error_by_part_against_a_known_offset():
    """An outline with a straight side x = 100; the fitted points sit 1 px off it on the lateral part, 3 px on the
    head/neck, 5 px on the medial part, and one medial point lies below eval_max_y (left out, as the dev rules say)."""
    from DeepMorphLib.scoring import contour_parts, femur_distances_real, rms_by_part, summarize_parts

    outline = [[100, 0], [100, 150], [100, 440], [300, 440], [300, 0]]  # closed; x = 100 is near the points
    offsets = np.r_[np.full(4, 1.0), np.full(3, 3.0), np.full(3, 5.0)]
    ys = np.linspace(10, 100, 10)
    points = np.c_[100.0 + offsets, ys]
    points[-1, 1] = 300.0  # below eval_max_y
    dist = femur_distances_real(points, outline, 200.0, 448, 448)
    assert np.isnan(dist[-1]) and np.allclose(dist[:-1], offsets[:-1])
    parts = contour_parts(10, {"neck_superior": 4, "neck_inferior": 6})
    by_part = rms_by_part(dist, parts)
    assert by_part == pytest.approx({"lateral": 1.0, "head_neck": 3.0, "medial": 5.0})
    summary = summarize_parts([{"detected": True, "p2c_parts": by_part},
                               {"detected": True, "p2c_parts": {**by_part, "medial": None}},
                               {"detected": False, "p2c_parts": {"lateral": 99.0}}])
    assert summary["medial"] == {"p2c_mean": 5.0, "p2c_median": 5.0, "n": 1}
    assert summary["lateral"]["n"] == 2 and summary["lateral"]["p2c_mean"] == pytest.approx(1.0)
    assert summarize_parts([{"detected": True}]) is None
