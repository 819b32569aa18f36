"""CT files as ``drr`` and ``dataset`` read them (volume.read_volume): DICOM series folders written with SimpleITK
(stored values + rescale intercept, as scanners write them), checked against the volume they were written from."""
import locale

import numpy as np
import pytest
import SimpleITK as sitk

from DeepMorphSimulatorLib.volume import read_volume


def _ct(shape=(12, 10, 14), spacing=(0.8, 0.9, 2.5), origin=(-5.0, 7.0, -30.0)):
    """A small int16 CT (HU, air to bone) with a distinct value in every voxel; data[k, j, i]."""
    k, j, i = np.indices(shape)
    image = sitk.GetImageFromArray((-1000 + 20 * k + 3 * j + i).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _write_series(image, folder, series_uid):
    """One file per slice, with the position, orientation and rescale tags a scanner writes (stored value =
    HU + 1024, RescaleIntercept -1024). The process locale is restored afterwards: GDCM's writer leaves LC_CTYPE at
    "C", after which later tests' ``read_text()`` decode as ASCII."""
    saved = locale.setlocale(locale.LC_ALL, None)
    try:
        return _write_slices(image, folder, series_uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(image, folder, series_uid):
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        s = image[:, :, z]
        for tag, value in (("0020|000e", series_uid), ("0008|0060", "CT"), ("0020|0013", str(z + 1)),
                           ("0020|0037", "\\".join(str(x) for x in (d[0], d[3], d[6], d[1], d[4], d[7]))),
                           ("0020|0032", "\\".join(str(x) for x in image.TransformIndexToPhysicalPoint((0, 0, z)))),
                           ("0028|1052", "-1024"), ("0028|1053", "1")):
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid[-3:]}-{z:03d}.dcm"))
        writer.Execute(s)
    return folder


def test_a_dicom_series_reads_back_in_hu_with_its_geometry(tmp_path):
    image = _ct()
    ct = read_volume(_write_series(image, tmp_path / "ct", "1.2.826.0.1.3680043.2.1125.7.100"))
    assert np.array_equal(ct.data, sitk.GetArrayFromImage(image))
    assert np.allclose(ct.spacing, image.GetSpacing()) and np.allclose(ct.origin, image.GetOrigin())


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    """ITK spreads the remaining slices evenly (one warning on the console): every slice above the gap would sit
    up to one slice step off, the anatomy stretched. Refused, naming the gap."""
    folder = _write_series(_ct(), tmp_path / "ct", "1.2.826.0.1.3680043.2.1125.7.100")
    (folder / "100-006.dcm").unlink()
    with pytest.raises(ValueError, match=r"unevenly spaced slices.*5\.00 mm between slices 5 and 6"):
        read_volume(folder)


def test_the_ct_series_is_read_from_a_folder_that_also_holds_a_localizer(tmp_path):
    """A PACS export folder: a 2-slice localizer series (whose series UID sorts first) beside the CT series."""
    image = _ct()
    folder = _write_series(image, tmp_path / "export", "1.2.826.0.1.3680043.2.1125.7.200")
    _write_series(_ct(shape=(2, 10, 14), spacing=(0.8, 0.9, 40.0)), folder, "1.2.826.0.1.3680043.2.1125.7.100")
    ct = read_volume(folder)
    assert ct.data.shape == (12, 10, 14) and np.array_equal(ct.data, sitk.GetArrayFromImage(image))


def test_an_unreadable_ct_file_is_one_line_naming_the_file(tmp_path):
    """SimpleITK's message spans lines (its source file and line first); the error keeps its last line only."""
    bad = tmp_path / "notes.nrrd"
    bad.write_text("not an image")
    with pytest.raises(ValueError) as err:
        read_volume(bad)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and "Cannot read" in message and ".cxx" not in message


def test_running_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """A detector too large for the memory (``--size 100000``: a 37 GiB array) ended in a traceback."""
    from DeepMorphLib.cli import main
    from DeepMorphSimulatorLib import drr

    def too_large(*args, **kwargs):
        raise MemoryError("Unable to allocate 37.3 GiB for an array with shape (100000, 100000) and data type float32")

    monkeypatch.setattr(drr, "render_drr", too_large)
    sitk.WriteImage(_ct(), str(tmp_path / "ct.nrrd"))
    assert main(["drr", "--ct", str(tmp_path / "ct.nrrd"), "--size", "100000", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not enough memory" in err and "37.3 GiB" in err and "--size" in err
    assert "--workers" not in err  # the advice names only the command's options: drr has no --workers, fit no --size
    from DeepMorphLib.commands import fit

    monkeypatch.setattr(fit, "run", too_large)
    assert main(["fit", "--task", "head", str(tmp_path / "x.png"), "--out", str(tmp_path / "fit")]) == 2
    err = capsys.readouterr().err
    assert "not enough memory" in err and "--workers" in err and "--size" not in err

