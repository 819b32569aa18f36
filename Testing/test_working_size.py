"""Images are fitted with their longer side at 448 px (large ones reduced, small ones enlarged) and the result comes
back in their own px (``working_size``)."""
import numpy as np
import pytest

from DeepMorphLib import fit_logic, pipeline
from DeepMorphLib.working_size import WORKING_SIZE_PX, ToImagePx, resample, working_shape


def sphere_shadow(shape, cx, cy, r):
    """Bone-dark X-ray of a sphere (radius ``r`` px at (cx, cy)) on a bright background, float32 (H, W)."""
    v, u = np.mgrid[:shape[0], :shape[1]]
    path = 2 * np.sqrt(np.clip(r**2 - (u - cx) ** 2 - (v - cy) ** 2, 0, None))
    return (200.0 - 120.0 * path / (2 * r)).astype(np.float32)


class ShadowHead:
    """Stand-in head network: the sphere's shadow (< 190) is the head region; records the sizes it was given."""

    expected_polarity = "bone-dark"
    target = "region"

    def __init__(self):
        self.shapes = []

    def __call__(self, image):
        self.shapes.append(np.shape(image))
        return (np.asarray(image) < 190).astype(np.float32)


def test_working_shape_scales_the_longer_side_to_448_px_keeping_the_aspect_ratio():
    assert working_shape((448, 448)) == (448, 448)
    assert working_shape((300, 128)) == (448, 191)
    assert working_shape((3000, 3000)) == (WORKING_SIZE_PX, WORKING_SIZE_PX)
    assert working_shape((1000, 2000)) == (224, 448)


def test_the_mapping_back_puts_a_reduced_disk_where_it_is_in_the_image():
    shape, (cx, cy, r) = (1350, 1800), (1003.3, 611.7, 240.0)  # reduced by 4.018 to 336 x 448
    image = sphere_shadow(shape, cx, cy, r)
    work = working_shape(shape)
    small = resample(image, work)
    to_px = ToImagePx(shape, work)
    weights = (200.0 - small).clip(0)  # the shadow's depth: its centroid is the sphere's centre
    v, u = np.mgrid[:work[0], :work[1]]
    centroid = np.array([(u * weights).sum(), (v * weights).sum()]) / weights.sum()
    assert np.allclose(to_px.xy(centroid), (cx, cy), atol=0.05)
    radius_w = np.sqrt((small < 199.0).sum() / np.pi)  # the shadow's area in working px
    circle = to_px.circle({"cx": centroid[0], "cy": centroid[1], "r": radius_w, "unsnapped": {"cx": 0, "cy": 0,
                                                                                             "r": 1.0}})
    assert abs(circle["r"] - r) < 0.01 * r
    assert circle["unsnapped"]["r"] == pytest.approx(to_px.length) and to_px.length == pytest.approx(1800 / 448)


@pytest.mark.parametrize("fit", ["pipeline", "fit_logic"])
@pytest.mark.parametrize("shape, circle", [((1500, 1200), (640.0, 560.0, 190.0)), ((150, 120), (64.0, 56.0, 19.0))])
def test_an_image_is_fitted_at_448_px_and_reported_in_its_own_px(fit, shape, circle):
    cx, cy, r = circle
    net = ShadowHead()
    image = sphere_shadow(shape, cx, cy, r)
    if fit == "pipeline":
        res = pipeline.fit_image(image, "head", predictor=net, polarity="bone-dark", refine=False, femur_check=False,
                                 head_fallback=False, keep_unconfirmed_head=True)
        got = res.circle["cx"], res.circle["cy"], res.circle["r"]
        assert res.to_dict()["fit_scale"] == pytest.approx(shape[0] / 448, rel=0.01)
        assert res.circle["unsnapped"]["r"] > 0.5 * r  # nested circles are mapped too
        assert "resample_ms" in res.timings_ms
    else:
        res = fit_logic.fit_image(image, "head", polarity="bone-dark", predict=net)
        got = res.circle
        assert res.to_dict()["image_size_px"] == [shape[1], shape[0]]
    assert net.shapes and all(max(s) == WORKING_SIZE_PX for s in net.shapes)
    assert res.detected and res.image_shape == shape and res.confidence.shape == shape
    assert np.hypot(got[0] - cx, got[1] - cy) < 0.01 * r and abs(got[2] - r) < 0.02 * r


def test_the_shipped_head_model_finds_the_same_head_on_a_3x_larger_image():
    from DeepMorphLib.commands.bench_pipeline import bench_image

    image = bench_image()  # 448 x 448 DRR of phantom 0
    base = pipeline.fit_image(image, "head")
    big = pipeline.fit_image(resample(image, (1344, 1344)), "head")
    assert base.detected and big.detected and big.fit_scale == pytest.approx(3.0)
    scaled = [(big.circle["cx"] + 0.5) / 3 - 0.5, (big.circle["cy"] + 0.5) / 3 - 0.5, big.circle["r"] / 3]
    assert np.allclose(scaled, [base.circle[k] for k in ("cx", "cy", "r")], atol=1.0)
