"""X-ray files as ``fit`` reads them: the pixel spacing a file states (DICOM tags, NRRD header; none for PNG), results
in mm, multi-frame DICOM files (fluoroscopy runs) fitted frame by frame. Files are written with SimpleITK here."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from DeepMorphLib.cli import main
from DeepMorphLib.xray_file import frame_count, read_xray, result_in_mm


def _dicom(path, array, spacing=None, tags=None):
    image = sitk.GetImageFromArray(np.asarray(array, np.uint16))
    if spacing is not None:
        image.SetSpacing(spacing if image.GetDimension() == 2 else (*spacing, 1.0))
    for key, value in (tags or {}).items():
        image.SetMetaData(key, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keeps the SOP class given in tags
    writer.SetFileName(str(path))
    writer.Execute(image)
    return path


def _frames(n=3, h=40, w=48):
    """n frames told apart by their grey level (frame k: 40 k + stripes)."""
    frames = np.zeros((n, h, w), np.uint16)
    for k in range(n):
        frames[k] = 40 * (k + 1)
        frames[k, ::2] += 10
    return frames


def test_the_spacing_is_what_the_file_says(tmp_path):
    ct = _dicom(tmp_path / "ct.dcm", np.full((40, 48), 7), (0.3, 0.4),
                {"0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0060": "CT"})  # PixelSpacing
    rf = _dicom(tmp_path / "rf.dcm", np.full((40, 48), 7), (0.25, 0.25),
                {"0008|0016": "1.2.840.10008.5.1.4.1.1.12.2", "0008|0060": "RF"})  # ImagerPixelSpacing
    dx = _dicom(tmp_path / "dx.dcm", np.full((40, 48), 7), (0.14, 0.14),
                {"0008|0016": "1.2.840.10008.5.1.4.1.1.1.1", "0008|0060": "DX", "0018|1114": "1.25"})
    x = read_xray(ct)
    assert x.spacing_mm == pytest.approx((0.3, 0.4)) and "PixelSpacing" in x.spacing_source
    assert x.frames.shape == (1, 40, 48)
    x = read_xray(rf)
    assert x.spacing_mm == pytest.approx((0.25, 0.25)) and "at the detector" in x.spacing_source
    x = read_xray(dx)  # corrected by the magnification factor to the hip's plane
    assert x.spacing_mm == pytest.approx((0.14 / 1.25, 0.14 / 1.25)) and "1.25: at the hip" in x.spacing_source
    nrrd = tmp_path / "x.nrrd"
    image = sitk.GetImageFromArray(np.full((40, 48), 7, np.float32))
    image.SetSpacing((0.2, 0.3))
    sitk.WriteImage(image, str(nrrd))
    assert read_xray(nrrd).spacing_mm == pytest.approx((0.2, 0.3)) and read_xray(nrrd).spacing_source == "file header"
    png = tmp_path / "x.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((40, 48), 7, np.uint8)), str(png))
    assert read_xray(png).spacing_mm is None and read_xray(png).spacing_source is None  # dpi is not the patient


def test_a_volume_is_refused_and_a_multi_frame_dicom_gives_its_frames(tmp_path):
    volume = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 40, 48), np.float32)), str(volume))
    with pytest.raises(ValueError, match="a volume, not an X-ray"):
        read_xray(volume)
    run = _dicom(tmp_path / "run.dcm", _frames())
    assert frame_count(run) == 3 and frame_count(volume) == 1
    frames = read_xray(run).frames
    assert frames.shape == (3, 40, 48) and [int(f.min()) for f in frames] == [40, 80, 120]  # in order


def test_results_in_mm():
    d = {"circle": {"cx": 100.0, "cy": 50.0, "r": 20.0}, "contour": [[10.0, 20.0], [30.0, 40.0]],
         "landmarks": {"head_center": [100.0, 50.0]}}
    mm = result_in_mm(d, (0.5, 0.25))
    assert mm["circle"] == pytest.approx({"cx": 50.0, "cy": 12.5, "r": 7.5, "diameter": 15.0})
    assert mm["contour"] == [[5.0, 5.0], [15.0, 10.0]] and mm["landmarks"] == {"head_center": [50.0, 12.5]}
    assert result_in_mm(d, None) is None


def test_fit_takes_each_frame_of_a_fluoroscopy_run_and_says_mm(fits, tmp_path):
    """3 frames -> x_f0001..3 fitted from their own frame (the stand-in's cx is the frame's mean grey); --frames picks;
    a second run reuses them; the CSV says the frame and r in mm."""
    run = _dicom(tmp_path / "x.dcm", _frames(), (0.5, 0.5), {"0008|0016": "1.2.840.10008.5.1.4.1.1.12.2",
                                                             "0008|0060": "RF"})
    out = tmp_path / "R"
    assert main(["fit", "--task", "head", str(run), "--out", str(out), "--frames", "2-3"]) == 0
    assert sorted(p.name for p in out.glob("x_f*.json")) == ["x_f0002.json", "x_f0003.json"]
    assert main(["fit", "--task", "head", str(run), "--out", str(out), "--report"]) == 0
    assert len(fits) == 3  # frames 2 and 3 reused, frame 1 fitted
    for k in (1, 2, 3):
        d = json.loads((out / f"x_f{k:04d}.json").read_text())
        assert d["circle"]["cx"] == pytest.approx(float(_frames()[k - 1].mean()))
        assert d["provenance"]["input"]["frame"] == k and d["pixel_spacing_mm"] == [0.5, 0.5]
        assert d["in_mm"]["circle"]["r"] == pytest.approx(0.5 * d["circle"]["r"])
    rows = {r["file"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["x_f0002"]["frame"] == "2" and float(rows["x_f0002"]["r_mm"]) == pytest.approx(2.5)
    record = json.loads((out / "fit_outputs.json").read_text())["outputs"]
    assert record["x_f0003"] == f"{run.resolve()}#frame=3"
    assert main(["fit", "--task", "head", str(run), "--out", str(tmp_path / "S"), "--frames", "7-9"]) == 1  # none
    assert len(fits) == 3


@pytest.mark.parametrize("frames", ["0", "3-1", "x", "1,,2"])
def test_bad_frame_selections_are_refused_up_front(frames, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--task", "head", str(tmp_path / "x.dcm"), "--out", str(tmp_path / "R"), "--frames", frames])
    assert stop.value.code == 2 and "--frames" in capsys.readouterr().err


def test_grey_with_alpha_is_read_as_its_grey_and_colour_as_the_mean_of_rgb(tmp_path):
    from PIL import Image

    from DeepMorphSimulatorLib.files import read_image_2d

    grey = np.tile(np.arange(48, dtype=np.uint8) * 5, (40, 1))
    alpha = np.full_like(grey, 255)
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "la.png")
    rgba = np.dstack([grey, grey // 2, grey // 4, alpha])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    for read in (read_image_2d, lambda p: read_xray(p).frames[0]):
        assert np.array_equal(read(tmp_path / "la.png"), grey.astype(np.float32))  # the alpha is not averaged in
        assert np.allclose(read(tmp_path / "rgba.png"), rgba[..., :3].mean(axis=-1))
