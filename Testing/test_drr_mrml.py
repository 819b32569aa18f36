"""A CT loaded by Slicer's own volumes logic (real MRML node, its IJKToRAS) renders the same DRR as the file."""
import numpy as np
import pytest
from DeepMorphSimulatorLib import mrml_glue as glue
from DeepMorphSimulatorLib import simulator_logic
from DeepMorphSimulatorLib.drr import render_drr
from DeepMorphSimulatorLib.drr_testing import hip_like_ct
from DeepMorphSimulatorLib.geometry import CArmGeometry
from DeepMorphSimulatorLib.volume import Volume, read_volume, write_volume


@pytest.fixture(scope="module")
def app():
    return glue.create_headless_slicer()


def test_mrml_volume_node_renders_the_same_drr_as_the_nrrd(app, tmp_path):
    base = hip_like_ct(shape_kji=(40, 64, 64), spacing=(6.0, 5.0, 7.5))
    # an oblique direction matrix and an off-centre origin, so IJKToRAS is far from identity
    a = np.deg2rad(20)
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    ct = Volume(base.data, base.spacing, base.origin + [7.0, -11.0, 3.0], direction)
    write_volume(ct, tmp_path / "ct.nrrd")
    node = glue.load_volume(app, tmp_path / "ct.nrrd", name="CT")
    geometry = CArmGeometry(width_px=96, height_px=80, pixel_mm=2.0, orbital_deg=15, angular_deg=-10,
                            isocenter_lps=tuple(ct.center_lps()))
    from_file = render_drr(read_volume(tmp_path / "ct.nrrd"), geometry)
    drr_node = simulator_logic.render_drr_node(app.scene, node, geometry)
    from_node = glue.node_to_image(drr_node)
    assert from_file.line_integrals.max() > 1.0  # the rays cross real content
    np.testing.assert_array_equal(from_node, from_file.image)
    # and the node's volume frame is exactly the file's
    np.testing.assert_allclose(glue.node_to_volume(node).ijk_to_lps(), ct.ijk_to_lps(), atol=1e-6)
