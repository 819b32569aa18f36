"""Implants: exact ray-primitive chord lengths, metal attenuation, anatomical placement."""
import math

import numpy as np
import pytest

from DeepMorphSimulatorLib.geometry import CArmGeometry
from DeepMorphSimulatorLib.implants import (
    Box,
    Cylinder,
    FIXATIONS,
    femur_frame,
    metal_line_integrals,
    metal_mu,
    sample_implants,
)

X, Y, Z = np.eye(3)


def ray(src, direction):
    d = np.asarray(direction, float)
    return np.asarray(src, float), (d / np.linalg.norm(d))[None, :]


@pytest.mark.parametrize("offset", [0.0, 1.0, 2.9, 3.1])
def test_cylinder_perpendicular_chord(offset):
    r = 3.0
    cyl = Cylinder((0, 0, -50), (0, 0, 50), r, 1.0)
    src, d = ray((-100, offset, 7.0), X)
    expected = 2 * math.sqrt(max(r * r - offset * offset, 0.0))
    assert cyl.chord(src, d)[0] == pytest.approx(expected, abs=1e-9)


def test_cylinder_oblique_and_axial_chords():
    r, length = 2.0, 40.0
    cyl = Cylinder((0, 0, 0), (0, 0, length), r, 1.0)
    # along the axis: the full length
    src, d = ray((0.5, 0.0, -30.0), Z)
    assert cyl.chord(src, d)[0] == pytest.approx(length)
    # oblique through the axis at angle theta to the axis (not reaching the caps): 2r / sin(theta)
    theta = np.deg2rad(35.0)
    direction = np.array([np.sin(theta), 0.0, np.cos(theta)])
    mid = np.array([0.0, 0.0, 20.0])
    src = mid - 200 * direction
    assert cyl.chord(src, direction[None])[0] == pytest.approx(2 * r / np.sin(theta), rel=1e-9)
    # rounded ends (capsule) along the axis: length + 2 r
    cap = Cylinder((0, 0, 0), (0, 0, length), r, 1.0, rounded=True)
    src, d = ray((0.0, 0.0, -30.0), Z)
    assert cap.chord(src, d)[0] == pytest.approx(length + 2 * r)


def test_hollow_and_threaded_cylinders():
    R, r = 4.0, 1.5
    tube = Cylinder((0, 0, -20), (0, 0, 20), R, 1.0, inner_radius=r)
    src, d = ray((-50, 0.5, 0.0), X)
    expected = 2 * (math.sqrt(R * R - 0.25) - math.sqrt(r * r - 0.25))
    assert tube.chord(src, d)[0] == pytest.approx(expected)
    # a ray along the axis inside the annulus crosses only the rings: n_rings * land
    pitch, land = 3.0, 1.2
    thread = Cylinder((0, 0, 0), (0, 0, 30.0), R, 1.0, inner_radius=r, thread=(pitch, land))
    src, d = ray((0.0, 2.5, -10.0), Z)
    assert thread.chord(src, d)[0] == pytest.approx(10 * land)
    # perpendicular ray at an axial position on a ring sees the annulus; between rings nothing
    src, d = ray((-50, 0.0, 0.6), X)
    assert thread.chord(src, d)[0] == pytest.approx(2 * (R - r))
    src, d = ray((-50, 0.0, 2.0), X)
    assert thread.chord(src, d)[0] == pytest.approx(0.0)


def test_box_chords():
    box = Box((1.0, 2.0, 3.0), tuple(map(tuple, np.eye(3))), (5.0, 2.0, 1.0), 1.0)
    src, d = ray((-20, 2.0, 3.0), X)
    assert box.chord(src, d)[0] == pytest.approx(10.0)
    src, d = ray((-20, 2.0, 5.0), X)  # misses (above the box)
    assert box.chord(src, d)[0] == 0.0
    # rotated box crossed along its own diagonal direction in the thin plane
    rot = np.array([[np.cos(0.3), np.sin(0.3), 0], [-np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]])
    rbox = Box((0, 0, 0), tuple(map(tuple, rot)), (5.0, 2.0, 1.0), 1.0)
    src, d = ray(-30 * rot[0], rot[0])
    assert rbox.chord(src, d)[0] == pytest.approx(10.0)


def _brute_force(prims, src, d, t_range=(450.0, 750.0), step=0.02):
    """Numerical line integral by dense sampling of inside-tests (independent of the closed forms);
    the primitives lie within ~60 mm of the isocentre, 600 mm from the source."""
    t = np.arange(t_range[0], t_range[1], step) + step / 2
    total = 0.0
    for p in prims:
        pts = src + t[:, None] * d
        if isinstance(p, Cylinder):
            p0, p1 = np.asarray(p.p0), np.asarray(p.p1)
            a = (p1 - p0) / np.linalg.norm(p1 - p0)
            s = (pts - p0) @ a
            rad = np.linalg.norm(pts - p0 - s[:, None] * a, axis=1)
            inside = (s >= 0) & (s <= np.linalg.norm(p1 - p0)) & (rad <= p.radius) & (rad >= p.inner_radius)
            if p.thread is not None:
                inside &= np.mod(s, p.thread[0]) < p.thread[1]
        else:
            loc = (pts - np.asarray(p.center)) @ np.asarray(p.axes).T
            inside = np.all(np.abs(loc) <= np.asarray(p.half), axis=1)
        total += p.mu * inside.sum() * step
    return total


def test_projected_metal_matches_brute_force():
    g = CArmGeometry(width_px=40, height_px=40, pixel_mm=2.0, orbital_deg=20, angular_deg=-10, inplane_deg=15)
    prims = [
        Cylinder((-10, 5, -20), (15, -5, 25), 4.0, 1.3, inner_radius=1.5),
        Box((5, 0, 0), tuple(map(tuple, np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0])), (20, 6, 2), 0.7),
        Cylinder((-20, 0, 10), (10, 3, -5), 3.0, 2.0, inner_radius=1.2, thread=(2.5, 1.0)),
    ]
    a = metal_line_integrals(prims, g)
    assert a.shape == (40, 40) and a.dtype == np.float32 and a.max() > 5
    src = g.source_lps
    rng = np.random.default_rng(0)
    for v, u in zip(rng.integers(0, 40, 25), rng.integers(0, 40, 25)):
        d = g.pixel_positions_lps(np.array(float(u)), np.array(float(v))) - src
        d = d / np.linalg.norm(d)
        assert a[v, u] == pytest.approx(_brute_force(prims, src, d), abs=0.06)


def test_metal_mu_ranges():
    # physical ranges at 40-60 keV (NIST XCOM based), scaled to water = 0.0206 /mm
    assert 0.95 < metal_mu("steel", 60, 0.0206) < metal_mu("steel", 40, 0.0206) < 2.5
    assert 0.3 < metal_mu("titanium", 60, 0.0206) < metal_mu("titanium", 40, 0.0206) < 0.8
    with pytest.raises(ValueError, match="material"):
        metal_mu("gold")


LANDMARKS = {  # a right femur, LPS mm (patient's right = -x)
    "head_center": np.array([-90.0, 0.0, 0.0]),
    "neck_axis_point": np.array([-120.0, 0.0, -20.0]),
    "greater_trochanter": np.array([-135.0, 5.0, 5.0]),
    "lesser_trochanter": np.array([-110.0, 5.0, -55.0]),
    "shaft_axis_proximal": np.array([-128.0, 0.0, -30.0]),
    "shaft_axis_distal": np.array([-118.0, 0.0, -230.0]),
}


def test_frame_lateral_points_away_from_head():
    fr = femur_frame(LANDMARKS, 24.0, 13.0)
    assert fr.lateral[0] < -0.9  # right femur: lateral = patient's right = -x
    assert fr.neck_dir @ fr.lateral < 0
    exit_pt = fr.lateral_exit(fr.head_center, fr.neck_dir)
    dist = np.linalg.norm(exit_pt - fr.shaft_axis_point(exit_pt))
    assert dist == pytest.approx(13.0, abs=1e-6)
    with pytest.raises(ValueError, match="missing"):
        femur_frame({"head_center": np.zeros(3)}, 24.0)


@pytest.mark.parametrize("kind", sorted(FIXATIONS))
def test_fixations_reach_the_head_and_project(kind):
    fr = femur_frame(LANDMARKS, 24.0, 13.0)
    prims, params = FIXATIONS[kind](np.random.default_rng(5), fr, 1.5)
    assert prims and isinstance(params, dict)
    # some metal lies inside the head sphere (screws/wires along the neck) or in the shaft (nail)
    g = CArmGeometry(width_px=96, height_px=96, pixel_mm=2.5, isocenter_lps=(-100.0, 0.0, -30.0))
    a = metal_line_integrals(prims, g)
    u, v = g.project(LANDMARKS["head_center"][None])[0]
    assert a.max() > 5.0
    if kind != "cephalomedullary_nail":
        near = a[int(v) - 12 : int(v) + 13, int(u) - 12 : int(u) + 13]
        assert near.max() > 1.0


def test_sample_implants_is_deterministic_and_respects_probability():
    a = sample_implants(np.random.default_rng(11), LANDMARKS, 24.0, probability=1.0, tool_probability=1.0)
    b = sample_implants(np.random.default_rng(11), LANDMARKS, 24.0, probability=1.0, tool_probability=1.0)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert len(a) >= 2 and all("type" in x.to_dict() for x in a)
    assert sample_implants(np.random.default_rng(1), LANDMARKS, 24.0, probability=0.0, tool_probability=0.0) == []
    kinds = set()
    for s in range(60):
        for imp in sample_implants(np.random.default_rng(s), LANDMARKS, 24.0, probability=1.0):
            kinds.add(imp.kind)
    assert set(FIXATIONS) <= kinds


def test_pixel_culling_is_exact():
    """Evaluating only pixels near each primitive's projected capsule loses nothing."""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        imps = sample_implants(rng, LANDMARKS, 24.0, probability=1.0, tool_probability=1.0)
        g = CArmGeometry(width_px=80, height_px=80, pixel_mm=3.0, orbital_deg=rng.uniform(-40, 40),
                         angular_deg=rng.uniform(-20, 20), isocenter_lps=(-100.0, 0.0, -30.0))
        culled = metal_line_integrals(imps, g)
        full = metal_line_integrals(imps, g, margin_px=1e5)
        np.testing.assert_array_equal(culled, full)
