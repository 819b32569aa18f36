"""Head circle from a femur contour's head dome (DeepMorphLib.dome_circle), against known synthetic geometry."""
import json

import numpy as np
import pytest

from DeepMorphLib.circle_fit import fit_circle_points
from DeepMorphLib.dome_circle import DomeCircleModel, build_dome_circle_model, fit_dome_circle_model

K = 16  # dome points, as the shipped PDM's 24..39


def synthetic_dome(rng, head_r=None):
    """Dome points (K, 2) in a head-centred frame: up one side of the neck, round the head, down the other side;
    the head circle is (0, 0, head_r). Neck width and arc extent vary from shape to shape."""
    r = head_r if head_r is not None else rng.uniform(0.9, 1.1)
    half_neck = r * rng.uniform(0.55, 0.75)
    arc_start = np.arcsin(half_neck / r)  # where the neck sides meet the head
    n_neck = 3
    angles = np.linspace(arc_start, 2 * np.pi - arc_start, K - 2 * n_neck)  # round the head, from the neck's top side
    arc = np.column_stack([r * np.cos(angles), r * np.sin(angles)])
    x_join = r * np.cos(arc_start)
    neck_len = r * rng.uniform(0.6, 1.0)
    xs = np.linspace(x_join + neck_len, x_join + neck_len / n_neck, n_neck)
    top = np.column_stack([xs, np.full(n_neck, half_neck)])
    bottom = np.column_stack([xs[::-1], np.full(n_neck, -half_neck)])
    return np.vstack([top, arc, bottom]), np.array([0.0, 0.0, r])


def posed(rng, dome, circle, mirror):
    """Dome and head circle under a random similarity (scale 30-80 px, any rotation, translation; optional mirror)."""
    s, a = rng.uniform(30, 80), rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if mirror:
        rot = rot @ np.diag([-1.0, 1.0])
    t = rng.uniform(100, 300, 2)
    return dome @ rot.T * s + t, np.r_[rot @ circle[:2] * s + t, circle[2] * s]


def training_set(n, seed):
    rng = np.random.default_rng(seed)
    domes, circles = [], []
    for _ in range(n):
        d, c = posed(rng, *synthetic_dome(rng), mirror=False)
        domes.append(d)
        circles.append(c)
    return np.stack(domes), np.stack(circles)


@pytest.fixture(scope="module")
def model():
    domes, circles = training_set(300, seed=1)
    return fit_dome_circle_model(domes, circles, (24, 24 + K - 1))


@pytest.mark.parametrize("mirror", [False, True])
def test_recovers_the_head_circle_where_the_dome_circle_is_off(model, mirror):
    rng = np.random.default_rng(7)
    err_model, err_dome = [], []
    for _ in range(40):
        dome, truth = posed(rng, *synthetic_dome(rng), mirror=mirror)  # left femurs are mirror images
        err_model.append(np.linalg.norm(np.subtract(model.circle_of_dome(dome), truth)))
        cf = fit_circle_points(dome, method="algebraic", min_points=3)
        err_dome.append(np.linalg.norm(np.subtract((cf.cx, cf.cy, cf.r), truth)))
    assert np.max(err_model) < 0.5  # px, at 30-80 px head radii
    assert np.mean(err_dome) > 5 * np.mean(err_model)  # the circle through the dome runs down the neck


def test_whole_contour_uses_the_dome_indices(model):
    rng = np.random.default_rng(3)
    dome, truth = posed(rng, *synthetic_dome(rng), mirror=False)
    contour = np.vstack([rng.uniform(0, 400, (24, 2)), dome, rng.uniform(0, 400, (5, 2))])
    np.testing.assert_allclose(model.circle(contour), model.circle_of_dome(dome))
    with pytest.raises(ValueError, match="at least 40"):
        model.circle(contour[:30])
    with pytest.raises(ValueError, match="16"):
        model.circle_of_dome(dome[:10])
    bad = dome.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        model.circle_of_dome(bad)


def test_save_load_round_trip_and_bad_files(model, tmp_path):
    path = model.save(tmp_path / "dome-circle")
    assert path.name == "dome-circle.npz" and (tmp_path / "dome-circle.json").is_file()
    loaded = DomeCircleModel.load(tmp_path / "dome-circle")
    dome, _ = posed(np.random.default_rng(5), *synthetic_dome(np.random.default_rng(6)), mirror=True)
    np.testing.assert_allclose(loaded.circle_of_dome(dome), model.circle_of_dome(dome), atol=1e-9)
    assert loaded.dome == (24, 39) and loaded.metadata["n_shapes"] == 300
    with pytest.raises(FileNotFoundError, match="build-dome-circle"):
        DomeCircleModel.load(tmp_path / "missing")
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a valid dome-circle model"):
        DomeCircleModel.load(tmp_path / "corrupt")
    (tmp_path / "other.npz").write_bytes(path.read_bytes())
    (tmp_path / "other.json").write_text(json.dumps({"format": "deepmorph-pdm"}))
    with pytest.raises(ValueError, match="not a DeepMorph dome-circle sidecar"):
        DomeCircleModel.load(tmp_path / "other")


def test_builds_from_dataset_samples_with_left_femurs_mirrored(tmp_path):
    rng = np.random.default_rng(11)
    samples = tmp_path / "data" / "samples"
    samples.mkdir(parents=True)
    for i in range(60):
        left = i % 2 == 1
        dome, circle = posed(rng, *synthetic_dome(rng), mirror=left)
        points = np.vstack([np.zeros((24, 2)), dome, np.zeros((4, 2))])
        meta = {"points": points.tolist(), "head_circle": circle.tolist(), "side": "left" if left else "right",
                "anchors_in_order": True}
        (samples / f"{i:06d}.json").write_text(json.dumps(meta))
    (samples / "000060.json").write_text(json.dumps({"points": [], "head_circle": None}))  # skipped: no truth
    model = build_dome_circle_model([tmp_path / "data"], (24, 39))
    assert model.metadata["n_shapes"] == 60
    assert model.metadata["errors_px"]["model_mean"] < 0.3 < model.metadata["errors_px"]["dome_circle_mean"]
    with pytest.raises(ValueError, match="at least 20"):
        build_dome_circle_model([tmp_path / "data"], (24, 39 + 40))
    with pytest.raises(ValueError, match="16 \\(x, y\\) points"):
        fit_dome_circle_model(np.zeros((30, 12, 2)), np.zeros((30, 3)), (24, 39))


def test_pipeline_uses_the_shipped_model_or_falls_back(monkeypatch, tmp_path, model):
    from DeepMorphLib import head_femur_check, pipeline

    rng = np.random.default_rng(21)
    dome, truth = posed(rng, *synthetic_dome(rng), mirror=False)
    model.save(tmp_path / "dome-circle")
    monkeypatch.setattr(pipeline, "default_dome_circle_path", lambda: tmp_path / "dome-circle.npz")
    cf = head_femur_check.dome_circle(dome)
    assert cf.detected and cf.method == "dome-circle-model"
    assert np.linalg.norm(np.subtract((cf.cx, cf.cy, cf.r), truth)) < 0.5
    monkeypatch.setattr(pipeline, "default_dome_circle_path", lambda: tmp_path / "absent.npz")
    cf = head_femur_check.dome_circle(dome)
    assert cf.detected and cf.method == "algebraic"  # the circle through the points


def test_shipped_model_matches_the_shipped_pdm():
    from DeepMorphLib.pipeline import default_dome_circle_path, head_dome_indices, load_shape_model

    path = default_dome_circle_path()
    if not path.is_file():
        pytest.skip("no shipped dome-circle model")
    shipped = DomeCircleModel.load(path)
    assert shipped.dome == head_dome_indices(load_shape_model(None).landmark_indices)
    assert shipped.metadata["errors_px"]["model_mean"] < 0.5 < shipped.metadata["errors_px"]["dome_circle_mean"]
