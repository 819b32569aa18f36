"""Our DRR line integrals agree with plastimatch's exact (Siddon) ray tracer on the same volume and pose."""
import shutil

import numpy as np
import pytest
from DeepMorphSimulatorLib import drr
from DeepMorphSimulatorLib.commands.bench_drr import run_plastimatch
from DeepMorphSimulatorLib.drr_testing import hip_like_ct
from DeepMorphSimulatorLib.geometry import CArmGeometry

pytestmark = pytest.mark.skipif(shutil.which("plastimatch") is None, reason="plastimatch not installed")


@pytest.mark.parametrize("pose", [dict(), dict(orbital_deg=30.0, angular_deg=15.0, inplane_deg=20.0)])
def test_line_integrals_agree_with_plastimatch(tmp_path, pose):
    ct = hip_like_ct((60, 96, 96), (4.2, 4.2, 5.0))
    mu = drr.hu_to_mu(ct)
    g = CArmGeometry(width_px=96, height_px=80, pixel_mm=2.0, isocenter_lps=(-30.0, 0.0, 20.0), **pose)
    ours = drr.line_integrals(mu, g, device="cpu")
    _, theirs = run_plastimatch(mu, g, threads=2, workdir=tmp_path)
    assert theirs.shape == ours.shape
    substantial = ours >= 1.0  # about 50 mm of water or more
    assert substantial.mean() > 0.5
    rel = np.abs(ours - theirs)[substantial] / theirs[substantial]
    assert np.median(rel) < 0.01
    assert np.percentile(rel, 90) < 0.05  # edges of bones differ (trilinear vs piecewise constant voxels)
    # the same picture, not a mirrored or shifted one
    def corr(a, b):
        return np.corrcoef(a[2:-2, 2:-2].ravel(), b[2:-2, 2:-2].ravel())[0, 1]

    aligned = corr(ours, theirs)
    assert aligned > 0.95
    assert aligned > corr(ours, theirs[:, ::-1]) + 0.05 and aligned > corr(ours, theirs[::-1]) + 0.05
    for shift in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        assert aligned > corr(ours, np.roll(theirs, shift, axis=(0, 1)))
