"""deepmorph build-pdm: a PDM from dataset-format ground truth, left femurs mirrored."""
import json

import numpy as np
import pytest
from DeepMorphLib.cli import main
from DeepMorphLib.pdm import PointDistributionModel
from DeepMorphLib.synthetic_shapes import femur_training_set


def _write_dataset(root, shapes, sides):
    (root / "samples").mkdir(parents=True)
    for i, (shape, side) in enumerate(zip(shapes, sides)):
        pts = shape * np.array([-1.0, 1.0]) if side == "left" else shape
        meta = {"points": pts.tolist(), "visible": [True] * len(pts), "side": side, "anchors_in_order": True,
                "anchor_indices": {"head_apex": 5, "greater_trochanter": 1}}
        (root / "samples" / f"{i:06d}.json").write_text(json.dumps(meta))


def test_build_pdm_mirrors_left_femurs_and_names_landmarks(tmp_path):
    shapes = femur_training_set(n_shapes=30, seed=3, pose=False)
    sides = ["right", "left"] * 15
    _write_dataset(tmp_path / "ds", shapes, sides)
    assert main(["build-pdm", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "pdm"), "--variance", "0.99"]) == 0
    pdm = PointDistributionModel.load(tmp_path / "pdm")
    assert pdm.landmarks["head"] == 5 and pdm.landmarks["greater_trochanter"] == 1
    # the same shapes without mirroring give the same model: mirrored lefts are right femurs again
    ref = PointDistributionModel.fit(shapes, variance_kept=0.99)
    np.testing.assert_allclose(np.abs(pdm.mean), np.abs(ref.mean), atol=1e-6)
    # every training shape is reproduced by the model within a fraction of a px
    for shape in shapes[:5]:
        assert np.sqrt(np.mean(np.sum((pdm.project(shape, clip=None) - shape) ** 2, axis=1))) < 1.0


def test_build_pdm_needs_enough_shapes(tmp_path):
    shapes = femur_training_set(n_shapes=3, seed=1, pose=False)
    _write_dataset(tmp_path / "ds", shapes, ["right"] * 3)
    with pytest.raises(ValueError, match="needs >= 10"):
        from DeepMorphLib.pdm_build import build_pdm

        build_pdm([tmp_path / "ds"])
