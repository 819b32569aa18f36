"""Edge snapping of head circles onto a projected sphere's edge (analytic images with known circles)."""
import numpy as np
import pytest

from DeepMorphLib import head_femur_check, pipeline
from DeepMorphLib.edge_snap import snap_circle
from DeepMorphLib.region import disk_mask

HEAD = (231.4, 187.6, 57.3)  # cx, cy, r px


@pytest.fixture(autouse=True)
def dome_points_on_the_head(monkeypatch):
    """The stand-in femur fits here put their head-dome points on the head circle itself, so the circle through
    them is the head: the shipped dome-circle model (learned from femur outlines whose dome runs down the neck;
    test_dome_circle.py) is set aside and ``head_femur_check.dome_circle`` fits the circle through the points."""
    monkeypatch.setattr(pipeline, "default_dome_circle_path", lambda: pipeline.MODELS_DIR / "absent-dome-circle.npz")


def sphere_shadow(shape=(448, 448), circle=HEAD, seed=0, noise=4.0, shell_px=2.5, shell_ratio=3.0):
    """Bone-dark image of a femoral-head-like sphere on a smooth ramp: a cortical shell ``shell_px`` thick
    attenuating ``shell_ratio`` x the interior (path lengths 2 sqrt(R^2 - rho^2), px; ``shell_px`` 0 = a
    homogeneous sphere), with the upper half of a larger, fainter ring (an acetabulum-like distractor) and noise."""
    cx, cy, r = circle
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    rho = np.hypot(xx - cx, yy - cy)
    outer = 2 * np.sqrt(np.clip(r**2 - rho**2, 0, None))
    inner = 2 * np.sqrt(np.clip((r - shell_px) ** 2 - rho**2, 0, None)) if shell_px > 0 else outer
    path = inner + shell_ratio * (outer - inner)
    cup = ((rho > 1.25 * r) & (rho < 1.4 * r) & (yy < cy)) * 25.0
    img = 900.0 + 0.2 * xx - 2.0 * path - cup
    return (img + np.random.default_rng(seed).normal(0, noise, shape)).astype(np.float32)


@pytest.mark.parametrize("start", [(HEAD[0] + 22, HEAD[1] - 17, HEAD[2] * 1.15),
                                   (HEAD[0] - 30, HEAD[1] + 10, HEAD[2] * 0.85)])
def test_snaps_a_rough_estimate_onto_the_sphere_edge(start):
    snap = snap_circle(sphere_shadow(), start)
    assert snap.applied and snap.support >= 0.65
    assert np.hypot(snap.cx - HEAD[0], snap.cy - HEAD[1]) < 0.6 and abs(snap.r - HEAD[2]) < 0.8


def test_rim_offset_of_a_homogeneous_sphere_and_of_a_shelled_head():
    """The strongest blurred derivative lies 0.75 sigma inside a homogeneous sphere's rim (theory); a cortical
    shell moves it outward, which the calibrated default offset allows for (simulated heads have shells)."""
    from DeepMorphLib.edge_snap import HOMOGENEOUS_RIM_OFFSET_SIGMAS, RIM_OFFSET_SIGMAS

    start = (HEAD[0] + 10, HEAD[1] - 8, HEAD[2] * 1.1)
    solid = sphere_shadow(noise=1.0, shell_px=0)
    theory = snap_circle(solid, start, rim_offset_sigmas=HOMOGENEOUS_RIM_OFFSET_SIGMAS)
    assert abs(theory.r - HEAD[2]) < 0.3
    assert snap_circle(solid, start).r == pytest.approx(theory.r - (HOMOGENEOUS_RIM_OFFSET_SIGMAS - RIM_OFFSET_SIGMAS) * 1.5)
    shelled = sphere_shadow(noise=1.0, shell_px=2.5, shell_ratio=3.0)
    assert abs(snap_circle(shelled, start).r - HEAD[2]) < 0.3
    assert snap_circle(shelled, start, rim_offset_sigmas=HOMOGENEOUS_RIM_OFFSET_SIGMAS).r - HEAD[2] > 0.4


def acetabular_ring(depth=300.0, ring=(1.1, 1.25), blur=3.0) -> np.ndarray:
    """``sphere_shadow`` inside a full, denser ring concentric with the head (an acetabulum seen end on: bone from
    1.1 to 1.25 head radii, edges blurred by ``blur`` px), whose outer edge rises outward as the head's does."""
    from scipy import ndimage as ndi

    cx, cy, r = HEAD
    yy, xx = np.mgrid[0:448, 0:448]
    rho = np.hypot(xx - cx, yy - cy)
    cup = ndi.gaussian_filter(((rho > ring[0] * r) & (rho < ring[1] * r)).astype(np.float64), blur)
    return (sphere_shadow(noise=2.0) - depth * cup).astype(np.float32)


@pytest.mark.parametrize("start", [(HEAD[0] + 2, HEAD[1] + 2, HEAD[2]), (HEAD[0] - 6.2, HEAD[1] + 3.3, HEAD[2] * 1.25)])
def test_a_head_nested_in_a_clear_ring_is_taken_over_the_ring(start):
    img = acetabular_ring()
    ring = snap_circle(img, start)  # the plain search ends on the ring's outer edge
    assert ring.applied and abs(ring.r - 1.25 * HEAD[2]) < 2.0
    snap = snap_circle(img, start, nested=True)
    assert snap.applied and snap.support >= ring.support
    assert np.hypot(snap.cx - HEAD[0], snap.cy - HEAD[1]) < 0.6 and abs(snap.r - HEAD[2]) < 0.8


def test_no_clear_edge_leaves_the_estimate():
    noise = np.random.default_rng(1).normal(500, 20, (300, 300)).astype(np.float32)
    snap = snap_circle(noise, (150, 150, 40))
    assert not snap.applied and "edge too weak" in snap.reason
    # a bone-bright image shows the opposite edge: no snap either (callers convert to bone-dark first)
    bright = snap_circle(-sphere_shadow(), HEAD)
    assert not bright.applied


def test_the_confidence_map_breaks_ties_towards_the_network_region():
    img = sphere_shadow(noise=0.5)
    conf = disk_mask(img.shape, *HEAD)
    snap = snap_circle(img, (HEAD[0] + 25, HEAD[1], HEAD[2] * 1.2), conf)
    assert snap.applied and np.hypot(snap.cx - HEAD[0], snap.cy - HEAD[1]) < 0.6


def test_bad_input_is_refused():
    img = sphere_shadow((64, 64), (32, 32, 10))
    with pytest.raises(ValueError, match="positive radius"):
        snap_circle(img, (32, 32, 0))
    with pytest.raises(ValueError, match="NaN"):
        snap_circle(np.full((64, 64), np.nan, np.float32), (32, 32, 10))
    with pytest.raises(ValueError, match="differ in shape"):
        snap_circle(img, (32, 32, 10), np.zeros((10, 10)))
    with pytest.raises(ValueError, match="2-D"):
        snap_circle(np.zeros((2, 64, 64)), (32, 32, 10))


class RoughHead:
    """Stand-in head network: a region 25 px off and 15 % too large."""

    expected_polarity = "bone-dark"
    target = "region"

    def __call__(self, image):
        return disk_mask(np.shape(image), HEAD[0] + 20, HEAD[1] - 15, HEAD[2] * 1.15)


class RingHead(RoughHead):
    """Stand-in head network whose blob covers the acetabular ring around the head (``acetabular_ring``)."""

    def __call__(self, image):
        return disk_mask(np.shape(image), HEAD[0] + 2, HEAD[1] + 2, HEAD[2] * 1.25)


def test_the_pipeline_snaps_the_network_circle_onto_the_nested_head():
    res = pipeline.fit_image(acetabular_ring(), "head", predictor=RingHead(), polarity="bone-dark", refine=False)
    c = res.circle
    assert c["snapped"] and c["unsnapped"]["r"] > 1.2 * HEAD[2]
    assert np.hypot(c["cx"] - HEAD[0], c["cy"] - HEAD[1]) < 1.5 and abs(c["r"] - HEAD[2]) < 1.0


@pytest.mark.parametrize("polarity", ["bone-dark", "bone-bright"])
def test_pipeline_snaps_the_network_circle(polarity):
    img = sphere_shadow()
    img = img if polarity == "bone-dark" else img.max() + img.min() - img
    res = pipeline.fit_image(img, "head", predictor=RoughHead(), polarity=polarity, refine=False)
    assert res.circle["snapped"] and res.circle["unsnapped"]["cx"] == pytest.approx(HEAD[0] + 20, abs=0.5)
    assert np.hypot(res.circle["cx"] - HEAD[0], res.circle["cy"] - HEAD[1]) < 0.6
    assert res.landmarks["head_center"] == [res.circle["cx"], res.circle["cy"]]
    off = pipeline.fit_image(img, "head", predictor=RoughHead(), polarity=polarity, refine=False, edge_snap=False)
    assert "snapped" not in off.circle and off.circle["cx"] == pytest.approx(HEAD[0] + 20, abs=0.5)


class FarHead(pipeline.NetworkPredictor):
    """Stand-in head network (counted as a real one) whose blob is on the wrong structure, 150 px away."""

    def __init__(self):
        super().__init__(None, {"task": "head", "target": "region", "polarity": "bone-dark"})

    def __call__(self, image):
        return disk_mask(np.shape(image), HEAD[0] - 150, HEAD[1] + 150, HEAD[2])


class DomeFit:
    """Stand-in femur PDM fit whose head dome lies on a circle 12 px off the true head."""

    detected = True
    quality = 0.9  # convincing: no second opinion from the region network

    def __init__(self, n_points, dome):
        t = np.linspace(0.0, 2 * np.pi, dome[1] - dome[0] + 1)
        self.points = np.zeros((n_points, 2))
        self.points[dome[0]: dome[1] + 1] = np.column_stack([HEAD[0] + 12 + HEAD[2] * np.cos(t),
                                                             HEAD[1] - 5 + HEAD[2] * np.sin(t)])


class FemurRegion:
    """Stand-in femur region network: the femur as a disk 1.4 head radii around the true head (+ shaft below)."""

    expected_polarity = "bone-dark"
    target = "region"

    def __call__(self, image):
        disk = disk_mask(np.shape(image), HEAD[0], HEAD[1], 1.4 * HEAD[2])
        disk[int(HEAD[1]):, int(HEAD[0] - 40): int(HEAD[0] + 40)] = 1.0
        return disk


def stub_femur_dome(monkeypatch, dome_confidence: float, fit_pdm=None, region=None) -> DomeFit:
    """The shipped femur network replaced by an empty map and its PDM fit by ``DomeFit`` (dome confidence
    ``dome_confidence``; ``fit_pdm`` (conf, pdm, **kw) -> fit, to see the call); the shipped femur region
    network by ``region`` (None: none, so no femur check); returns the fit."""
    monkeypatch.setattr(pipeline, "load_region_net", lambda *a, **k: region)
    shape_model = pipeline.load_shape_model(None)
    fit = DomeFit(shape_model.pdm.n_points, pipeline._head_dome(shape_model))
    fit.point_confidence = np.full(shape_model.pdm.n_points, dome_confidence)
    real_load = pipeline.load_predictor
    monkeypatch.setattr(pipeline, "load_predictor", lambda task, model=None, device="auto": (
        (lambda image: np.zeros(np.shape(image), np.float32)) if task == "femur" else real_load(task, model, device)))
    monkeypatch.setattr(pipeline, "_fit_pdm", fit_pdm or (lambda conf, pdm, **kw: fit))
    return fit


def flat_image() -> np.ndarray:
    """Noise around a constant: no edge anywhere."""
    return np.random.default_rng(3).normal(500.0, 2.0, (448, 448)).astype(np.float32)


def test_an_unsnappable_circle_is_snapped_again_from_the_femur_dome(monkeypatch):
    shape_model = pipeline.load_shape_model(None)
    dome = pipeline._head_dome(shape_model)
    femur_calls = []

    def femur_net(image):
        femur_calls.append(1)
        return np.zeros(np.shape(image), np.float32)

    real_load = pipeline.load_predictor
    monkeypatch.setattr(pipeline, "load_predictor",
                        lambda task, model=None, device="auto": femur_net if task == "femur" else real_load(task, model, device))
    monkeypatch.setattr(pipeline, "_fit_pdm", lambda conf, pdm, **kw: DomeFit(pdm.n_points, dome))
    res = pipeline.fit_image(sphere_shadow(), "head", predictor=FarHead(), polarity="bone-dark", refine=False)
    assert femur_calls and res.circle["source"] == "femur-dome" and res.circle["snapped"]
    assert np.hypot(res.circle["cx"] - HEAD[0], res.circle["cy"] - HEAD[1]) < 0.6 and abs(res.circle["r"] - HEAD[2]) < 0.8
    assert res.circle["unsnapped"]["cx"] == pytest.approx(HEAD[0] - 150, abs=1.0)
    # the second attempt belongs to the fallback: off with head_fallback=False
    off = pipeline.fit_image(sphere_shadow(), "head", predictor=FarHead(), polarity="bone-dark", refine=False,
                             head_fallback=False)
    assert not off.circle["snapped"] and off.circle["cx"] == pytest.approx(HEAD[0] - 150, abs=1.0)


def test_compiled_and_numpy_sampling_agree(monkeypatch):
    from DeepMorphLib import edge_snap

    if not edge_snap._HAVE_NUMBA:
        pytest.skip("numba not installed: only the numpy path exists")
    img = sphere_shadow()
    conf = disk_mask(img.shape, HEAD[0] + 20, HEAD[1] - 15, HEAD[2] * 1.15)
    fast = snap_circle(img, (HEAD[0] + 20, HEAD[1] - 15, HEAD[2] * 1.15), conf)
    monkeypatch.setattr(edge_snap, "_HAVE_NUMBA", False)
    slow = snap_circle(img, (HEAD[0] + 20, HEAD[1] - 15, HEAD[2] * 1.15), conf)
    assert fast.applied == slow.applied
    assert np.allclose([fast.cx, fast.cy, fast.r, fast.support], [slow.cx, slow.cy, slow.r, slow.support], atol=1e-3)


@pytest.mark.parametrize("dome_confidence, replaced", [(0.9, True), (0.2, False)])
def test_a_confident_femur_dome_replaces_a_circle_without_edge(monkeypatch, dome_confidence, replaced):
    stub_femur_dome(monkeypatch, dome_confidence)
    res = pipeline.fit_image(flat_image(), "head", predictor=FarHead(), polarity="bone-dark", refine=False)
    assert not res.circle["snapped"]
    if replaced:
        assert res.circle["source"] == "femur-dome-fit" and res.circle["unsnapped"]["cx"] == pytest.approx(HEAD[0] - 150, abs=1)
        assert np.allclose([res.circle["cx"], res.circle["cy"], res.circle["r"]], [HEAD[0] + 12, HEAD[1] - 5, HEAD[2]], atol=0.5)
    else:
        assert "source" not in res.circle and res.circle["cx"] == pytest.approx(HEAD[0] - 150, abs=1.0)


@pytest.mark.parametrize("edge_offset_px, source", [(5.0, "femur-dome"), (40.0, "femur-dome-fit")])
def test_a_weak_edge_next_to_the_femur_dome_is_taken(monkeypatch, edge_offset_px, source):
    """The dome circle and an edge circle that agree (within DOME_AGREEMENT r) confirm each other even when the
    edge alone is too weak to snap; an edge circle far from the dome circle is ignored. The femur fit there is
    anchored on the head network's unsnapped circle."""
    from DeepMorphLib import edge_snap

    anchors = []
    fit = stub_femur_dome(monkeypatch, 0.9, lambda conf, pdm, **kw: anchors.append(kw) or fit)

    def weak_edge(image, circle, confidence=None, **kw):  # never clear enough; best circle edge_offset_px to the right
        cx, cy, r = circle
        return edge_snap.EdgeSnap(False, cx + edge_offset_px, cy, r, 0.3, "weak")

    monkeypatch.setattr(edge_snap, "snap_circle", weak_edge)
    res = pipeline.fit_image(sphere_shadow(), "head", predictor=FarHead(), polarity="bone-dark", refine=False,
                             femur_check=False)  # this stage alone: the femur check after it has its own tests
    assert res.circle["source"] == source
    expected_cx = HEAD[0] + 12 + (edge_offset_px if source == "femur-dome" else 0.0)
    assert np.allclose([res.circle["cx"], res.circle["cy"], res.circle["r"]], [expected_cx, HEAD[1] - 5, HEAD[2]], atol=0.5)
    (kw,) = anchors
    assert kw["head_dome"] == pipeline._head_dome(pipeline.load_shape_model(None)) and np.allclose(kw["head_circle"], [res.circle["unsnapped"][k] for k in ("cx", "cy", "r")])
    assert kw["head_circle"][0] == pytest.approx(HEAD[0] - 150, abs=1.0)


@pytest.mark.parametrize("radius_ratio", [1.05, 1.15])
def test_a_weak_edge_of_another_radius_gives_way_to_the_dome_circle(monkeypatch, radius_ratio):
    """A weak edge circle concentric with the dome circle agrees with it (within DOME_AGREEMENT r), but one whose
    radius differs by more than DOME_RADIUS_AGREEMENT is another arc (often the acetabular rim around the head): the
    dome circle itself is taken; within it, the edge circle."""
    from DeepMorphLib import edge_snap

    check = head_femur_check
    assert check.DOME_RADIUS_AGREEMENT < 0.15 < check.DOME_AGREEMENT and check.DOME_RADIUS_AGREEMENT > 0.05
    stub_femur_dome(monkeypatch, 0.9)

    def weak_wider_edge(image, circle, confidence=None, **kw):  # never clear enough
        cx, cy, r = circle
        return edge_snap.EdgeSnap(False, cx, cy, radius_ratio * r, 0.3, "weak")

    monkeypatch.setattr(edge_snap, "snap_circle", weak_wider_edge)
    res = pipeline.fit_image(sphere_shadow(), "head", predictor=FarHead(), polarity="bone-dark", refine=False,
                             femur_check=False)
    assert res.circle["source"] == "femur-dome"
    r = HEAD[2] * (radius_ratio if radius_ratio < 1.1 else 1.0)
    assert np.allclose([res.circle["cx"], res.circle["cy"], res.circle["r"]], [HEAD[0] + 12, HEAD[1] - 5, r], atol=0.5)


@pytest.mark.parametrize("offset_r, source", [(0.4, "femur-dome"), (0.6, "femur-dome-fit")])
def test_a_clear_edge_far_from_the_femur_dome_is_another_arc(monkeypatch, offset_r, source):
    """A clear edge circle at the femur fit's head dome is taken within DOME_MAX_MOVE r of the dome circle; further
    away it is another arc (on radiographs the acetabular roof above the head) and the dome circle stays."""
    from DeepMorphLib import edge_snap

    assert head_femur_check.DOME_AGREEMENT < 0.4 < head_femur_check.DOME_MAX_MOVE < 0.6
    stub_femur_dome(monkeypatch, 0.9)
    dome_cx = HEAD[0] + 12

    def clear_edge_above(image, circle, confidence=None, **kw):  # the head network's own circle finds no edge
        cx, cy, r = circle
        return edge_snap.EdgeSnap(abs(cx - dome_cx) < 5, cx, cy - offset_r * r, r, 0.9, "edge above")

    monkeypatch.setattr(edge_snap, "snap_circle", clear_edge_above)
    res = pipeline.fit_image(sphere_shadow(), "head", predictor=FarHead(), polarity="bone-dark", refine=False)
    assert res.circle["source"] == source
    cy = HEAD[1] - 5 - (offset_r * HEAD[2] if source == "femur-dome" else 0.0)
    assert np.allclose([res.circle["cx"], res.circle["cy"], res.circle["r"]], [dome_cx, cy, HEAD[2]], atol=0.5)


def test_ring_contrast_of_crisp_and_diffuse_blobs():
    crisp = disk_mask((448, 448), 200, 220, 60)
    assert head_femur_check.ring_contrast(crisp, (200, 220, 60)) == pytest.approx(1.0, abs=0.01)
    assert head_femur_check.ring_contrast(crisp, (200 + 240, 220, 60)) == pytest.approx(0.0, abs=0.01)  # off the blob
    yy, xx = np.mgrid[:448, :448]
    diffuse = np.exp(-((xx - 200.0) ** 2 + (yy - 220.0) ** 2) / (2 * 90.0 ** 2)).astype(np.float32)
    # analytic: exp(-(0.7 r)^2 / 2 s^2) - exp(-(1.3 r)^2 / 2 s^2) with r = 60, s = 90
    expected = np.exp(-(42.0 ** 2) / (2 * 90.0 ** 2)) - np.exp(-(78.0 ** 2) / (2 * 90.0 ** 2))
    assert head_femur_check.ring_contrast(diffuse, (200, 220, 60)) == pytest.approx(expected, abs=0.01)


class DiffuseFarHead(FarHead):
    """Stand-in head network whose blob is diffuse (a wide Gaussian) and on the wrong structure."""

    def __call__(self, image):
        yy, xx = np.mgrid[: np.shape(image)[0], : np.shape(image)[1]]
        d2 = (xx - (HEAD[0] - 150.0)) ** 2 + (yy - (HEAD[1] + 150.0)) ** 2
        return (0.9 * np.exp(-d2 / (2 * (1.1 * HEAD[2]) ** 2))).astype(np.float32)


@pytest.mark.parametrize("net, found", [(FarHead, True), (DiffuseFarHead, False)])
def test_an_unconfirmed_diffuse_blob_is_not_a_detection(monkeypatch, net, found):
    """No edge, a femur fit that is not confident along the dome: a crisp blob is kept, a diffuse one is reported
    as not detected (its circle kept for review), in the pipeline and in the Slicer module's logic."""
    from DeepMorphLib import fit_logic

    stub_femur_dome(monkeypatch, 0.2)
    flat = flat_image()
    # (the femur check that follows, and rejects an unconfirmed crisp blob too, is tested in test_femur_check)
    res = pipeline.fit_image(flat, "head", predictor=net(), polarity="bone-dark", refine=False, femur_check=False)
    assert res.detected is found and "source" not in res.circle
    assert res.circle["cx"] == pytest.approx(HEAD[0] - 150, abs=3.0)  # kept for review either way
    assert (res.circle["ring_contrast"] >= head_femur_check.MIN_RING_CONTRAST) is found
    if not found:
        assert "diffuse" in res.reason and "not found" in res.reason
    probe = fit_logic.FitResult("head", True, "", circle=(res.circle["cx"], res.circle["cy"], res.circle["r"]),
                                polarity="bone-dark", confidence=res.confidence)
    fit_logic._snap_from_femur(probe, flat)
    assert probe.detected is found and (found or "diffuse" in probe.reason)


class NearHead(FarHead):
    """Stand-in head network (counted as a real one) whose blob is 25 px off the true head and 15 % too large."""

    __call__ = RoughHead.__call__


@pytest.mark.parametrize("net, found", [(FarHead, False), (NearHead, True)])
def test_an_unconfirmed_circle_off_the_femur_is_not_a_detection(monkeypatch, net, found):
    """No edge, no confident femur dome, a crisp blob: kept only when the femur region network puts it on the
    femur (the blob 150 px away is not; one 25 px off the true head is), in the pipeline and in the Slicer logic."""
    from DeepMorphLib import fit_logic

    stub_femur_dome(monkeypatch, 0.2, region=FemurRegion())
    flat = flat_image()
    res = pipeline.fit_image(flat, "head", predictor=net(), polarity="bone-dark", refine=False, femur_check=False)
    assert res.detected is found and (res.circle["on_femur"] >= head_femur_check.MIN_ON_FEMUR) is found
    assert res.circle["ring_contrast"] >= head_femur_check.MIN_RING_CONTRAST  # crisp: only the femur check decides
    if not found:
        assert "not on the femur" in res.reason and res.circle["cx"] == pytest.approx(HEAD[0] - 150, abs=3.0)
    probe = fit_logic.FitResult("head", True, "", circle=(res.circle["cx"], res.circle["cy"], res.circle["r"]),
                                polarity="bone-dark", confidence=res.confidence)
    fit_logic._snap_from_femur(probe, flat)
    assert probe.detected is found and probe.quality["on_femur"] == pytest.approx(res.circle["on_femur"], abs=1e-6)


@pytest.mark.parametrize("must_be_on_femur", [True, False])
@pytest.mark.parametrize("net, on_the_femur", [(FarHead, False), (NearHead, True)])
def test_a_clear_round_edge_off_the_femur_is_not_the_head(monkeypatch, net, on_the_femur, must_be_on_femur):
    """A sphere-like structure with a clear edge under the head network's crisp blob: the snap takes its edge, but a
    snapped circle must lie on the femur too (obturator ring, pubic ramus and symphysis look like this). Off the
    femur, with no head from the femur fit or maps, it is not found (the circle kept for review); on the femur it
    stays. ``SNAPPED_MUST_BE_ON_FEMUR`` False (the rule before) trusts every clear edge. Pipeline and Slicer logic."""
    from DeepMorphLib import fit_logic

    monkeypatch.setattr(head_femur_check, "SNAPPED_MUST_BE_ON_FEMUR", must_be_on_femur)
    stub_femur_dome(monkeypatch, 0.2, region=FemurRegion())
    monkeypatch.setattr(head_femur_check, "_dome_edge_circle", lambda *a, **k: None)
    monkeypatch.setattr(head_femur_check, "_hough_head_circle", lambda *a, **k: None)
    centre = HEAD if on_the_femur else (HEAD[0] - 150, HEAD[1] + 150, HEAD[2])
    img = sphere_shadow(circle=centre)
    res = pipeline.fit_image(img, "head", predictor=net(), polarity="bone-dark", refine=False, femur_check=False)
    assert res.circle["snapped"] and res.circle["edge_support"] >= head_femur_check.FEMUR_CHECK_EDGE  # a clear edge
    assert np.hypot(res.circle["cx"] - centre[0], res.circle["cy"] - centre[1]) < 1.0
    kept = on_the_femur or not must_be_on_femur
    assert res.detected is kept
    if must_be_on_femur:
        assert (res.circle["on_femur"] >= head_femur_check.MIN_ON_FEMUR) is on_the_femur
    else:
        assert "on_femur" not in res.circle
    if not kept:
        assert "not on the femur" in res.reason
    probe = fit_logic.FitResult("head", True, "", circle=(res.circle["cx"], res.circle["cy"], res.circle["r"]),
                                polarity="bone-dark", confidence=res.confidence)
    fit_logic._snap_from_femur(probe, img, snapped=True)
    assert probe.detected is kept and ("on_femur" in probe.quality) is must_be_on_femur


def test_the_femur_check_rejects_an_unconfirmed_circle_unless_asked_to_keep_it(monkeypatch):
    """A crisp blob on the femur that no edge and no confident femur fit confirm: "not detected" after the femur
    check (circle kept for review); ``keep_unconfirmed_head`` reports it."""
    stub_femur_dome(monkeypatch, 0.2, region=FemurRegion())
    kw = dict(predictor=NearHead(), polarity="bone-dark", refine=False)
    strict = pipeline.fit_image(flat_image(), "head", **kw)
    assert not strict.detected and "not confirmed" in strict.reason
    assert strict.circle["on_femur"] >= head_femur_check.MIN_ON_FEMUR
    kept = pipeline.fit_image(flat_image(), "head", keep_unconfirmed_head=True, **kw)
    assert kept.detected and kept.circle["cx"] == pytest.approx(strict.circle["cx"])


def test_on_femur_scores_the_region_inside_the_circle():
    region = FemurRegion()(np.zeros((448, 448)))
    assert head_femur_check.on_femur(region, HEAD) == pytest.approx(1.0, abs=1e-3)
    assert head_femur_check.on_femur(region, (HEAD[0] - 150, HEAD[1] + 150, HEAD[2])) == pytest.approx(0.0, abs=1e-3)
    assert head_femur_check.on_femur(region, (-500.0, -500.0, 20.0)) == 0.0  # entirely outside the image


def test_a_circle_off_the_femur_is_replaced_by_the_unanchored_femur_dome(monkeypatch):
    """The head network's blob is off the femur and the femur fit anchored on it follows it away; the femur fit
    without that anchor finds the head dome, whose edge is clear: the head is found there."""
    near = stub_femur_dome(monkeypatch, 0.2, region=FemurRegion())  # dome 12 px off the true head
    far = DomeFit(len(near.points), pipeline._head_dome(pipeline.load_shape_model(None)))
    far.points = near.points - [150.0, -150.0]  # around the head network's wrong blob
    far.point_confidence = near.point_confidence
    calls = []

    def fit_pdm(conf, pdm, **kw):
        calls.append("head_circle" in kw)
        return far if "head_circle" in kw else near

    monkeypatch.setattr(pipeline, "_fit_pdm", fit_pdm)
    img = sphere_shadow()
    img[:, :80] = img[:, 80:81]  # no edge near the wrong blob
    res = pipeline.fit_image(img, "head", predictor=FarHead(), polarity="bone-dark", refine=False,
                             femur_check=False)  # this stage alone: the femur check after it has its own tests
    assert calls == [True, False]  # anchored first, then alone
    assert res.detected and res.circle["source"] == "femur-dome-unanchored"
    assert res.circle["off_femur"] < head_femur_check.MIN_ON_FEMUR <= res.circle["on_femur"]
    assert np.hypot(res.circle["cx"] - HEAD[0], res.circle["cy"] - HEAD[1]) < 1.0


def test_a_degenerate_huge_circle_is_not_searched():
    """A nearly straight arc fits a circle far larger than the image (seen: r 3889 px on a 448 px image); the edge
    search around it would need tens of GiB, so it is refused as a result, not a crash."""
    snap = snap_circle(sphere_shadow(), (3338.4, -1942.1, 3888.6))
    assert not snap.applied and "larger than the image" in snap.reason
    assert (snap.cx, snap.cy, snap.r) == pytest.approx((3338.4, -1942.1, 3888.6))


def _femur_outline_of(region: np.ndarray) -> np.ndarray:
    """What a femur outline network draws: the femur region's boundary, a ridge a few px wide."""
    from scipy import ndimage as ndi

    edge = region.astype(bool) ^ ndi.binary_erosion(region.astype(bool))
    return np.clip(ndi.gaussian_filter(edge.astype(np.float32), 1.2) * 4.0, 0.0, 1.0)


class FemurWithHeadRegion(FemurRegion):
    """Stand-in femur region network: the head disk itself + the neck and shaft (80 px wide) below it."""

    def __call__(self, image):
        region = disk_mask(np.shape(image), *HEAD)
        region[int(HEAD[1] + 0.6 * HEAD[2]):, int(HEAD[0] - 40): int(HEAD[0] + 40)] = 1.0
        return region


def stub_femur_outline(monkeypatch, outline) -> None:
    """The shipped femur (outline) network replaced by one that returns ``outline``."""
    real_load = pipeline.load_predictor
    monkeypatch.setattr(pipeline, "load_predictor", lambda task, model=None, device="auto": (
        (lambda image: outline) if task == "femur" else real_load(task, model, device)))


@pytest.mark.parametrize("net", ["crisp", "diffuse"])
@pytest.mark.parametrize("outline_drawn", [True, False])
def test_the_femur_maps_find_a_head_that_the_femur_fits_missed(monkeypatch, outline_drawn, net):
    """Both femur fits (anchored and alone) follow the head network's crisp blob off the femur; the last search, a
    circle Hough on the femur outline and region maps (head_search), finds the head when the outline network drew
    it, and its clear edge confirms it (``"femur-hough"``), in the pipeline and in the Slicer logic; without it: not
    found. A diffuse blob that nothing confirmed stays not found (the map search is only for circles off the femur)."""
    from DeepMorphLib import fit_logic

    near = stub_femur_dome(monkeypatch, 0.2, region=FemurWithHeadRegion())
    far = DomeFit(len(near.points), pipeline._head_dome(pipeline.load_shape_model(None)))
    far.points = near.points - [150.0, -150.0]  # around the head network's wrong blob
    far.point_confidence = near.point_confidence
    monkeypatch.setattr(pipeline, "_fit_pdm", lambda conf, pdm, **kw: far)
    region = FemurWithHeadRegion()(np.zeros((448, 448)))
    stub_femur_outline(monkeypatch, _femur_outline_of(region) if outline_drawn else np.zeros((448, 448), np.float32))
    img = sphere_shadow()
    img[:, :80] = img[:, 80:81]  # no edge near the wrong blob
    head_net = FarHead() if net == "crisp" else DiffuseFarHead()
    res = pipeline.fit_image(img, "head", predictor=head_net, polarity="bone-dark", refine=False)
    found = outline_drawn and net == "crisp"
    assert res.detected is found
    if found:
        assert res.circle["source"] == "femur-hough" and res.circle["snapped"]
        assert res.circle["off_femur"] < head_femur_check.MIN_ON_FEMUR <= res.circle["on_femur"]
        assert np.hypot(res.circle["cx"] - HEAD[0], res.circle["cy"] - HEAD[1]) < 1.0 and abs(res.circle["r"] - HEAD[2]) < 1.0
    else:
        assert ("not on the femur" if net == "crisp" else "diffuse") in res.reason
    probe = fit_logic.FitResult("head", True, "", circle=(HEAD[0] - 150, HEAD[1] + 150, HEAD[2]), polarity="bone-dark",
                                confidence=res.confidence)
    fit_logic._snap_from_femur(probe, img)
    assert probe.detected is found and ("from_femur_hough" in probe.quality) is found


class ShaftHead(FarHead):
    """Stand-in head network whose crisp blob sits on the femoral shaft, 110 px below the head: on the femur, too far
    for the edge snap."""

    def __call__(self, image):
        return disk_mask(np.shape(image), HEAD[0], HEAD[1] + 110, 0.8 * HEAD[2])


def test_an_edge_confirmed_head_from_the_femur_maps_beats_an_unconfirmed_circle_on_the_femur(monkeypatch):
    """A crisp blob on the shaft is on the femur, but no edge confirms it (nor a confident femur dome: the femur fit
    is elsewhere); the femur maps' circle, whose edge is clear, replaces it. Without a map circle it is kept."""
    near = stub_femur_dome(monkeypatch, 0.2, region=FemurWithHeadRegion())
    far = DomeFit(len(near.points), pipeline._head_dome(pipeline.load_shape_model(None)))
    far.points = near.points - [150.0, -150.0]
    far.point_confidence = near.point_confidence
    monkeypatch.setattr(pipeline, "_fit_pdm", lambda conf, pdm, **kw: far)
    img = sphere_shadow()
    img[:, :80] = img[:, 80:81]  # no edge near the femur fit's dome
    stub_femur_outline(monkeypatch, np.zeros((448, 448), np.float32))
    kept = pipeline.fit_image(img, "head", predictor=ShaftHead(), polarity="bone-dark", refine=False,
                              femur_check=False)  # (the femur check would reject it: test_femur_check)
    assert kept.detected and not kept.circle["snapped"] and kept.circle["on_femur"] >= head_femur_check.MIN_ON_FEMUR
    assert kept.circle["cy"] == pytest.approx(HEAD[1] + 110, abs=3.0)
    stub_femur_outline(monkeypatch, _femur_outline_of(FemurWithHeadRegion()(img)))
    res = pipeline.fit_image(img, "head", predictor=ShaftHead(), polarity="bone-dark", refine=False)
    assert res.detected and res.circle["source"] == "femur-hough" and res.circle["snapped"]
    assert "off_femur" not in res.circle and res.circle["unsnapped"]["cy"] == pytest.approx(HEAD[1] + 110, abs=3.0)
    # (the edge snap also weighs the head network's map, whose blob is on the shaft: a pull of 2-3 px downwards)
    assert np.hypot(res.circle["cx"] - HEAD[0], res.circle["cy"] - HEAD[1]) < 3.0 and abs(res.circle["r"] - HEAD[2]) < 1.5


def test_the_femur_fit_is_anchored_on_the_femur_maps_circle_when_the_head_networks_is_unconfirmed():
    """head_anchor_callable: the head network's circle (150 px off, no edge to confirm it) anchors the femur fit's
    second opinions only when the femur maps have no well supported circle; with them, their circle does."""
    img = flat_image()
    region = FemurWithHeadRegion()(img)
    outline = _femur_outline_of(region)
    result = pipeline.FitResult(task="femur", image_shape=img.shape, detected=False, reason="", polarity="bone-dark",
                                polarity_score=None, polarity_mode="given")
    anchored = pipeline.head_anchor_callable(result, img, "bone-dark", FarHead(), outline_conf=outline,
                                             region=lambda: region)()
    assert np.hypot(anchored[0] - HEAD[0], anchored[1] - HEAD[1]) < 1.5 and abs(anchored[2] - HEAD[2]) < 1.5
    assert result.head_anchor["source"] == "femur-hough"
    assert result.head_anchor["replaced"]["cx"] == pytest.approx(HEAD[0] - 150, abs=3.0)
    plain = pipeline.head_anchor_callable(None, img, "bone-dark", FarHead())()  # no femur maps at hand
    assert plain[0] == pytest.approx(HEAD[0] - 150, abs=3.0)
    blank = pipeline.head_anchor_callable(None, img, "bone-dark", FarHead(), outline_conf=np.zeros_like(outline),
                                          region=lambda: region)()
    assert blank[0] == pytest.approx(HEAD[0] - 150, abs=3.0)
