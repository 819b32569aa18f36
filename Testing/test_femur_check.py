"""The head task's femur check: a head circle that its own edge does not clearly confirm is checked against the
whole femur fit, and a confident femur fit that puts the head elsewhere wins
(``head_femur_check.check_with_femur_fit``)."""
import numpy as np
import pytest

from DeepMorphLib import femur_confirm, head_femur_check, pipeline
from test_edge_snap import HEAD, FarHead, dome_points_on_the_head, flat_image, sphere_shadow  # noqa: F401 (autouse)


def femur_result(quality=0.85, dome_confidence=0.9, centre=HEAD[:2], r=HEAD[2]):
    """A femur FitResult whose head-dome points lie on the circle (centre, r) px."""
    shape_model = pipeline.load_shape_model(None)
    d0, d1 = pipeline._head_dome(shape_model)
    n = shape_model.pdm.n_points
    contour = np.zeros((n, 2))
    t = np.linspace(0.2 * np.pi, 1.6 * np.pi, d1 - d0 + 1)  # an arc of 250 degrees, as a head dome
    contour[d0: d1 + 1] = np.column_stack([centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)])
    confidence = np.full(n, 0.9)
    confidence[d0: d1 + 1] = dome_confidence
    return pipeline.FitResult(task="femur", image_shape=(448, 448), detected=True, reason="", polarity="bone-dark",
                              polarity_score=None, polarity_mode="given", contour=contour,
                              point_confidence=confidence, quality=quality)


@pytest.fixture
def femur_fit(monkeypatch):
    """``pipeline.fit_image`` answers the femur task with ``femur_fit.result`` (the head task runs for real)."""
    real = pipeline.fit_image
    calls = []

    def fit_image(image, task, **kw):
        if task == "femur":
            calls.append(kw)
            return fit_image.result
        return real(image, task, **kw)

    fit_image.result, fit_image.calls = femur_result(), calls
    monkeypatch.setattr(pipeline, "fit_image", fit_image)
    return fit_image


def head_result(circle=(HEAD[0] - 150, HEAD[1] + 150, HEAD[2]), detected=True, **extra):
    res = pipeline.FitResult(task="head", image_shape=(448, 448), detected=detected, reason="", polarity="bone-dark",
                             polarity_score=None, polarity_mode="given")
    res.circle = None if circle is None else {"cx": circle[0], "cy": circle[1], "r": circle[2], **extra}
    return res


def check(res, image, side=None):
    head_femur_check.check_with_femur_fit(res, image, "bone-dark", "cpu", 0.5, side, FarHead())
    return res


def test_which_circles_are_checked():
    assert head_femur_check.needs_femur_check(head_result(detected=False))
    assert head_femur_check.needs_femur_check(head_result(circle=None, detected=False))
    assert head_femur_check.needs_femur_check(head_result(snapped=False, edge_support=0.9))
    assert head_femur_check.needs_femur_check(head_result(snapped=True, edge_support=0.68))
    assert head_femur_check.needs_femur_check(head_result(snapped=True, edge_support=0.9, source="femur-dome"))
    clear = head_result(snapped=True, edge_support=head_femur_check.FEMUR_CHECK_EDGE)
    assert not head_femur_check.needs_femur_check(clear)


def test_a_confident_femur_fit_moves_a_wrong_circle_onto_the_head_edge(femur_fit):
    femur_fit.result = femur_result(centre=(HEAD[0] + 8, HEAD[1] - 6))  # the dome circle 10 px off: the edge wins
    res = check(head_result(snapped=True, edge_support=0.66), sphere_shadow())
    c = res.circle
    assert res.detected and c["source"] == "femur-fit" and c["snapped"]
    assert np.hypot(c["cx"] - HEAD[0], c["cy"] - HEAD[1]) < 1.0 and abs(c["r"] - HEAD[2]) < 1.0
    assert c["replaced"] == {"cx": HEAD[0] - 150, "cy": HEAD[1] + 150, "r": HEAD[2]} and c["replaced_detected"]
    assert res.landmarks["head_center"] == [c["cx"], c["cy"]]
    assert femur_fit.calls[-1]["side"] is None and femur_fit.calls[-1]["polarity"] == "bone-dark"


def test_without_an_edge_the_dome_circle_itself_gives_the_missing_head(femur_fit):
    res = check(head_result(circle=None, detected=False), flat_image())
    c = res.circle
    assert res.detected and c["source"] == "femur-fit" and not c["snapped"] and c["replaced"] is None
    assert np.allclose([c["cx"], c["cy"], c["r"]], HEAD, atol=0.01)


@pytest.mark.parametrize("quality, dome_confidence", [(0.45, 0.9), (0.85, 0.5)])
def test_an_unconvincing_femur_fit_does_not_move_a_found_circle(femur_fit, monkeypatch, quality, dome_confidence):
    """Below ``FEMUR_CHECK_QUALITY`` (or not confident along the dome) a femur fit does not move a circle that an
    edge found, even a weak one (here on the femur, by the region network)."""
    monkeypatch.setattr(head_femur_check, "on_femur", lambda conf, circle: 0.9)
    femur_fit.result = femur_result(quality=quality, dome_confidence=dome_confidence)
    res = check(head_result(snapped=True, edge_support=0.66), sphere_shadow())
    assert res.detected and "source" not in res.circle and res.circle["cx"] == HEAD[0] - 150
    assert res.circle["femur_fit_quality"] == quality


def test_a_head_nothing_else_found_comes_from_a_femur_fit_the_femur_task_confirms(femur_fit):
    """When the head is otherwise not detected, a femur fit that the femur task confirms (with the rules the check
    was tuned with, ``CHECK_CONFIRMATION``) but below ``FEMUR_CHECK_QUALITY``, confident along its dome, gives the
    head; a fit the femur task does not confirm, or one not confident along the dome, gives none."""
    min_quality = head_femur_check.CHECK_CONFIRMATION["min_quality"]
    quality = 0.5 * (min_quality + head_femur_check.FEMUR_CHECK_QUALITY)
    femur_fit.result = femur_result(quality=quality)
    res = check(head_result(circle=None, detected=False), flat_image())
    c = res.circle
    assert res.detected and c["source"] == "femur-fit" and not c["snapped"] and c["replaced"] is None
    assert np.allclose([c["cx"], c["cy"], c["r"]], HEAD, atol=0.01) and "confirmed femur fit" in res.reason
    unconfirmed = check(head_result(), flat_image())  # the head network's circle, which nothing confirms
    assert unconfirmed.detected and unconfirmed.circle["source"] == "femur-fit"
    assert unconfirmed.circle["replaced"] == {"cx": HEAD[0] - 150, "cy": HEAD[1] + 150, "r": HEAD[2]}
    assert not unconfirmed.circle["replaced_detected"]
    weak_dome = head_femur_check.FEMUR_CHECK_DOME - 0.1
    for weak in (femur_result(quality=min_quality - 0.01, dome_confidence=weak_dome),
                 femur_result(quality=quality, dome_confidence=weak_dome)):
        femur_fit.result = weak
        assert not check(head_result(circle=None, detected=False), flat_image()).detected
        assert not check(head_result(), flat_image()).detected


def test_the_check_confirms_the_femur_fit_with_the_rules_it_was_tuned_with(femur_fit):
    """The femur task's fit is asked for with its quality rules off and confirmed by ``CHECK_CONFIRMATION`` (0.4;
    40 % extrapolated below 0.5), not by the femur task's own (0.35; 30 % below 0.55, session 37)."""
    assert head_femur_check.CHECK_CONFIRMATION == {"min_quality": 0.4, "extrapolated_rule": (0.4, 0.5)}
    femur_fit.result = femur_result(quality=0.37)  # the femur task's rules confirm it, the check's do not
    res = check(head_result(circle=None, detected=False), flat_image())
    assert femur_fit.calls[-1]["femur_min_quality"] == 0.0
    assert res.detected and "dome only" in res.reason  # the head of a fit confident along its dome, not confirmed
    mostly_guessed = femur_result(quality=0.45)
    n = len(mostly_guessed.point_confidence)
    d0, d1 = pipeline._head_dome(pipeline.load_shape_model(None))
    off_dome = [i for i in range(n) if not d0 <= i <= d1]
    mostly_guessed.point_confidence[off_dome[:int(0.35 * n)]] = 0.05  # 35 % extrapolated
    mostly_guessed.contour[off_dome] = [224.0, 300.0]  # in the image
    assert "extrapolated" in femur_confirm.femur_confirmation_reason(  # the femur task's own rules would not confirm it
        0.45, mostly_guessed.contour, image_shape=(448, 448), point_confidence=mostly_guessed.point_confidence)
    femur_fit.result = mostly_guessed
    res = check(head_result(circle=None, detected=False), flat_image())
    assert res.detected and "confirmed femur fit" in res.reason and mostly_guessed.detected


def test_a_head_nothing_else_found_comes_from_a_femur_fit_confident_along_its_dome_only(femur_fit, monkeypatch):
    """A femur fit the femur task does not confirm (low mean confidence: a close-up whose shaft the network does not
    see; or not detected) still gives a head found nowhere else when it is confident along its head dome and the
    head's radius is plausible for the image; not with an implausible radius, not when the dome is not confident,
    and not with ``HEAD_FROM_CONFIDENT_DOME`` off. It never replaces a circle found otherwise."""
    for unconfirmed in (femur_result(quality=0.2), femur_result(quality=0.6)):
        unconfirmed.detected = False  # below FEMUR_MIN_QUALITY, or e.g. mostly extrapolated
        femur_fit.result = unconfirmed
        res = check(head_result(circle=None, detected=False), flat_image())
        c = res.circle
        assert res.detected and c["source"] == "femur-fit" and not c["snapped"] and c["replaced"] is None
        assert np.allclose([c["cx"], c["cy"], c["r"]], HEAD, atol=0.01) and "dome only" in res.reason
        network = check(head_result(), flat_image())  # the head network's circle, which nothing confirms
        assert network.detected and network.circle["replaced"] == {"cx": HEAD[0] - 150, "cy": HEAD[1] + 150,
                                                                    "r": HEAD[2]}
    lo, hi = femur_confirm.plausible_head_radius_px((448, 448))
    for weak in (femur_result(quality=0.2, dome_confidence=head_femur_check.FEMUR_CHECK_DOME - 0.05),
                 femur_result(quality=0.2, r=lo - 2.0), femur_result(quality=0.2, r=hi + 2.0)):
        femur_fit.result = weak
        assert not check(head_result(circle=None, detected=False), flat_image()).detected
    monkeypatch.setattr(head_femur_check, "on_femur", lambda conf, circle: 0.9)
    femur_fit.result = femur_result(quality=0.2, centre=(HEAD[0] + 60, HEAD[1]))
    found = check(head_result(snapped=True, edge_support=0.66, circle=HEAD), sphere_shadow())
    assert found.detected and "source" not in found.circle and found.circle["cx"] == HEAD[0]  # kept
    monkeypatch.setattr(head_femur_check, "HEAD_FROM_CONFIDENT_DOME", False)
    femur_fit.result = femur_result(quality=0.2)
    assert not check(head_result(circle=None, detected=False), flat_image()).detected


@pytest.mark.parametrize("extra, detected", [({}, False), ({"snapped": True, "edge_support": 0.66}, True),
                                             ({"source": "femur-dome", "snapped": True}, True)])
def test_without_a_confident_femur_fit_an_unconfirmed_network_circle_is_not_a_detection(femur_fit, monkeypatch, extra,
                                                                                          detected):
    """The head network's own circle, with no edge to confirm it and no confident femur fit: "not detected", the
    circle kept for review. A snapped circle on the femur, or one found by the femur helpers, stays."""
    monkeypatch.setattr(head_femur_check, "on_femur", lambda conf, circle: 0.9)
    femur_fit.result = femur_result(quality=0.3, dome_confidence=0.5)
    res = check(head_result(**extra), flat_image())
    assert res.detected is detected and res.circle["cx"] == HEAD[0] - 150
    if not detected:
        assert "not confirmed" in res.reason and "kept" in res.reason
    agreeing = check(head_result(circle=(HEAD[0] + 0.2 * HEAD[2], HEAD[1], HEAD[2])), flat_image())
    assert not agreeing.detected  # the same weak femur fit: nothing confirms this one either
    femur_fit.result = femur_result()
    confirmed = check(head_result(circle=(HEAD[0] + 0.2 * HEAD[2], HEAD[1], HEAD[2])), flat_image())
    assert confirmed.detected and confirmed.circle["femur_agrees"] and "source" not in confirmed.circle


def test_no_head_and_no_confident_femur_fit_leaves_no_circle(femur_fit):
    """Not found, without a circle, and a weak femur fit: still no circle (overlays draw the plain 'not detected')."""
    from DeepMorphLib.overlay import draw_overlay

    femur_fit.result = femur_result(quality=0.3, dome_confidence=0.5)
    res = check(head_result(circle=None, detected=False), flat_image())
    assert not res.detected and res.circle is None
    assert draw_overlay(flat_image(), res).shape[1] == 448  # the image, and the reason in a band below it


def test_a_circle_the_femur_fit_agrees_with_is_kept(femur_fit):
    near = (HEAD[0] + 0.2 * HEAD[2], HEAD[1], HEAD[2])  # within DOME_AGREEMENT r of the femur's head
    res = check(head_result(circle=near), flat_image())
    assert "source" not in res.circle and res.circle["cx"] == near[0]


def test_the_pipeline_runs_the_check_only_when_asked(femur_fit):
    img = flat_image()  # no edge anywhere: nothing before the femur check finds the head
    on = pipeline.fit_image(img, "head", predictor=FarHead(), polarity="bone-dark", refine=False, side="left")
    assert on.detected and on.circle["source"] == "femur-fit" and on.side == "left"
    assert np.allclose([on.circle["cx"], on.circle["cy"], on.circle["r"]], HEAD, atol=0.01)
    assert femur_fit.calls[-1]["side"] == "left" and femur_fit.calls[-1]["polarity"] == "bone-dark"
    assert "femur_check_ms" in on.timings_ms
    off = pipeline.fit_image(img, "head", predictor=FarHead(), polarity="bone-dark", refine=False, femur_check=False)
    assert off.circle.get("source") != "femur-fit"


def test_the_femur_check_reuses_the_head_tasks_polarity_detection(femur_fit, monkeypatch):
    from DeepMorphLib import polarity

    calls = []
    real = polarity.detect_polarity
    monkeypatch.setattr(polarity, "detect_polarity", lambda image: calls.append(1) or real(image))
    res = pipeline.fit_image(flat_image(), "head", predictor=FarHead(), polarity="auto", refine=False)
    assert res.circle["source"] == "femur-fit" and len(calls) == 1
    assert femur_fit.calls[-1]["polarity"] == "auto"
    assert femur_fit.calls[-1]["detected_polarity"] == (res.polarity, res.polarity_score)


def test_a_given_polarity_detection_is_used_instead_of_detecting_again(monkeypatch):
    from DeepMorphLib import polarity

    calls = []
    monkeypatch.setattr(polarity, "detect_polarity", lambda image: calls.append(1) or ("bone-dark", -0.5))
    femur = pipeline.fit_image(flat_image(), "femur", predictor=lambda img: np.zeros(img.shape, np.float32),
                               polarity="auto", detected_polarity=("bone-bright", 0.5), head_anchor=False, region=False)
    assert not calls and femur.polarity == "bone-bright" and femur.polarity_score == 0.5


def test_the_slicer_logic_runs_the_same_check(femur_fit, femur_region_at_the_head, monkeypatch):
    from DeepMorphLib import fit_logic

    far = (HEAD[0] - 150, HEAD[1] + 150, HEAD[2])
    res = fit_logic.FitResult("head", True, "", circle=far, quality={"edge_support": 0.5}, polarity="bone-dark",
                              confidence=np.zeros((448, 448), np.float32))
    fit_logic._check_with_femur(res, flat_image(), None, {}, "auto", "right")
    assert res.detected and np.allclose(res.circle, HEAD, atol=0.01)
    assert res.quality["from_femur_fit"] == 1.0 and res.quality["snapped_from_femur_fit"] == 0.0
    assert femur_fit.calls[-1]["side"] == "right" and femur_fit.calls[-1]["polarity"] == "auto"
    sure = fit_logic.FitResult("head", True, "", circle=far, quality={"edge_support": 0.9}, polarity="bone-dark")
    fit_logic._check_with_femur(sure, flat_image(), None, {}, "auto", None)  # clearly on its own edge: not checked
    assert sure.circle == far and len(femur_fit.calls) == 1
    # no confident femur fit (nor dome): an unsnapped network circle is not found
    femur_fit.result = femur_result(quality=0.3, dome_confidence=0.5)
    weak = fit_logic.FitResult("head", True, "", circle=far, quality={"edge_support": 0.5, "snapped": 0.0},
                               polarity="bone-dark", confidence=np.zeros((448, 448), np.float32))
    fit_logic._check_with_femur(weak, flat_image(), None, {}, "auto", None)
    assert not weak.detected and "not confirmed" in weak.reason and weak.circle == far
    snapped = fit_logic.FitResult("head", True, "", circle=far, quality={"edge_support": 0.66, "snapped": 1.0},
                                  polarity="bone-dark", confidence=np.zeros((448, 448), np.float32))
    fit_logic._check_with_femur(snapped, flat_image(), None, {}, "auto", None)
    assert not snapped.detected and "not on the femur" in snapped.reason and snapped.circle == far
    monkeypatch.setattr(head_femur_check, "on_femur", lambda conf, circle: 0.9)  # a weak snap on the femur stays
    on = fit_logic.FitResult("head", True, "", circle=far, quality={"edge_support": 0.66, "snapped": 1.0},
                             polarity="bone-dark", confidence=np.zeros((448, 448), np.float32))
    fit_logic._check_with_femur(on, flat_image(), None, {}, "auto", None)
    assert on.detected and on.circle == far


def test_the_check_takes_the_head_circle_of_the_femur_fit_from_dome_circle(femur_fit, monkeypatch):
    """The femur fit's head comes from ``head_femur_check.dome_circle`` (the shipped dome-circle model when present)
    given the fit's head-dome points, not from a circle fitted here."""
    seen = []
    offset = (HEAD[0] + 3.0, HEAD[1] - 2.0, HEAD[2] - 1.5)

    def dome_circle(points):
        seen.append(np.array(points))
        from DeepMorphLib.circle_fit import CircleFit
        return CircleFit(True, *offset, method="spy")

    monkeypatch.setattr(head_femur_check, "dome_circle", dome_circle)
    d0, d1 = pipeline._head_dome(pipeline.load_shape_model(None))
    res = check(head_result(), flat_image())
    assert len(seen) == 1 and np.array_equal(seen[0], femur_fit.result.contour[d0: d1 + 1])
    assert res.detected and res.circle["source"] == "femur-fit" and not res.circle["snapped"]
    assert np.allclose([res.circle["cx"], res.circle["cy"], res.circle["r"]], offset)


@pytest.fixture
def femur_region_at_the_head(monkeypatch):
    """The femur region network marks a disk around the true head ``HEAD`` (and nothing else); the searches from the
    femur fit and maps find nothing unless a test sets ``femur_region_at_the_head.hough`` (an edge circle)."""
    from DeepMorphLib.edge_snap import EdgeSnap
    from DeepMorphLib.region import disk_mask

    region = disk_mask((448, 448), HEAD[0], HEAD[1], 1.5 * HEAD[2]).astype(np.float32)
    monkeypatch.setattr(pipeline, "region_confidence", lambda img, polarity, net: (lambda: region))
    monkeypatch.setattr(head_femur_check, "_dome_edge_circle", lambda *a, **k: None)
    state = type("State", (), {"hough": None})()
    def hough(img, pol, dev, region_conf, head_conf):
        if state.hough is None:
            return None
        return EdgeSnap(True, *state.hough, support=0.8), head_femur_check.on_femur(region_conf, state.hough)

    monkeypatch.setattr(head_femur_check, "_hough_head_circle", hough)
    return state


def test_a_weak_snap_off_the_femur_is_looked_for_again_on_the_femur(femur_fit, femur_region_at_the_head):
    """No confident femur fit: the head network's own circle snapped with support below ``FEMUR_CHECK_EDGE`` must lie
    on the femur; off it, the femur maps' edge circle replaces it, or the head counts as not found (kept for
    review), and then a femur fit the femur task confirms still gives the head."""
    femur_fit.result = femur_result(quality=0.3, dome_confidence=0.5)
    far = {"snapped": True, "edge_support": 0.66}
    res = check(head_result(**far), flat_image())
    assert not res.detected and "not on the femur" in res.reason and res.circle["cx"] == HEAD[0] - 150
    assert res.circle["on_femur"] < head_femur_check.MIN_ON_FEMUR
    femur_region_at_the_head.hough = HEAD
    res = check(head_result(**far), flat_image())
    assert res.detected and res.circle["source"] == "femur-hough"
    assert res.circle["off_femur"] < head_femur_check.MIN_ON_FEMUR
    assert np.allclose([res.circle["cx"], res.circle["cy"], res.circle["r"]], HEAD)
    femur_region_at_the_head.hough = None
    femur_fit.result = femur_result(quality=0.45)  # confirmed by the femur task, confident along the dome
    res = check(head_result(**far), flat_image())
    assert res.detected and res.circle["source"] == "femur-fit" and not res.circle["replaced_detected"]
    femur_fit.result = femur_result(quality=0.3)
    on = check(head_result(circle=HEAD, **far), flat_image())  # a weak snap on the femur stays
    assert on.detected and "source" not in on.circle and on.circle["on_femur"] >= head_femur_check.MIN_ON_FEMUR
    clear = check(head_result(snapped=True, edge_support=head_femur_check.FEMUR_CHECK_EDGE), flat_image())
    assert clear.detected and "on_femur" not in clear.circle  # a clear edge is not checked against the femur
    kept = head_result(**far)
    head_femur_check.check_with_femur_fit(kept, flat_image(), "bone-dark", "cpu", 0.5, None, FarHead(),
                                   reject_unconfirmed=False)
    assert kept.detected and "on_femur" not in kept.circle  # --keep-unconfirmed-head: as before


def test_the_femur_fits_that_give_a_head_keep_one_weak_shape_prior(femur_fit, monkeypatch):
    """The femur task searches under a strong shape prior and refines under a weak one (``asm_fit``); the femur fits
    that check or give a head circle keep the single weak prior (``head_femur_check.HEAD_TASK_SHAPE_PRIOR``): both
    the femur task's whole fit the check asks for and the head task's own femur-network fit of the head dome."""
    from DeepMorphLib.asm_fit import ShapeFit

    assert head_femur_check.HEAD_TASK_SHAPE_PRIOR == {"regularization": 1.0, "final_regularization": None}
    check(head_result(snapped=True, edge_support=0.66), sphere_shadow())
    assert femur_fit.calls[-1]["fit_options"] == head_femur_check.HEAD_TASK_SHAPE_PRIOR
    seen = []
    monkeypatch.setattr(pipeline, "_fit_pdm", lambda conf, pdm, **kw: seen.append(kw) or ShapeFit(detected=False))
    assert head_femur_check._femur_head_dome(sphere_shadow(), "bone-dark", "cpu", 0.5) is None
    assert seen and seen[-1]["regularization"] == 1.0 and seen[-1]["final_regularization"] is None
