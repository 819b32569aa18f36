"""A known femur side: the fits only try that side's shape (a left femur is the mirror image of a right one)."""
import numpy as np
import pytest

from DeepMorphLib import pipeline
from DeepMorphLib.commands.evaluate import side_of
from DeepMorphLib.similarity import Similarity
from DeepMorphLib.synthetic_shapes import point_to_curve_distance, render_confidence


class OneHip:
    """Stand-in femur network: the outline of a left femur (the mirror image of the shipped shape model's right
    femur), as an AP view in the radiological convention shows it."""

    expected_polarity = "bone-dark"
    target = "outline"

    def __init__(self, pdm, shape=(448, 448)):
        h, w = shape
        right = pdm.instance(None, Similarity.from_params(1.0, 10.0, (0.0, 0.0)))
        self.left = right * np.array([-1.0, 1.0]) - (right * np.array([-1.0, 1.0])).mean(0) + np.array([0.5 * w, 0.5 * h])
        self.map = render_confidence(self.left, shape)

    def __call__(self, image):
        return self.map


@pytest.fixture(scope="module")
def hip():
    return OneHip(pipeline.load_shape_model(None).pdm)


def _fit(hip, side):
    return pipeline.fit_image(np.full((448, 448), 100.0), "femur", predictor=hip, polarity="bone-dark",
                              head_anchor=False, region=False, side=side)


@pytest.mark.parametrize("side", ["left", "auto"])
def test_the_right_side_or_none_fits_the_femur(hip, side):
    res = _fit(hip, side)
    assert res.detected and res.reflected and res.side == (None if side == "auto" else side)
    assert np.mean(point_to_curve_distance(res.contour, hip.left)) < 1.5
    assert res.to_dict()["side"] == res.side


def test_the_given_side_is_obeyed(hip):
    """Told "right", the fit never swaps to the mirrored (left) model, however much better that would fit."""
    res = _fit(hip, "right")
    assert res.side == "right" and res.reflected is False
    assert not res.detected or res.quality < _fit(hip, "left").quality - 0.1


def test_a_bad_side_is_refused_by_name():
    with pytest.raises(ValueError, match="side must be 'left', 'right' or 'auto'"):
        pipeline.fit_image(np.full((64, 64), 1.0), "femur", side="L")


def test_evaluate_gives_each_image_its_recorded_side():
    sample = {"meta": {"side": "left"}}
    assert side_of(sample, "annotated") == "left" and side_of(sample, "auto") is None
    assert side_of(sample, "right") == "right" and side_of({"meta": {"side": "unknown"}}, "annotated") is None
    assert side_of({"meta": {}}, "annotated") is None


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_slicer_logic_passes_the_side_on(hip, side):
    """The module's logic (``fit_logic.fit_image``, what the Slicer widget calls) fits only the asked-for side."""
    from DeepMorphLib import fit_logic

    pdm = fit_logic.load_shape_model()
    res = fit_logic.fit_image(np.full((448, 448), 100.0, np.float32), "femur", pdm=pdm, polarity="bone-dark",
                              predict=hip, side=side)
    assert res.side == side and res.to_dict()["side"] == side
    error = np.mean(point_to_curve_distance(res.contour, hip.left)) if res.detected else np.inf
    assert error < 1.5 if side == "left" else error > 3.0
