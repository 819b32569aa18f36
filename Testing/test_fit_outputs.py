"""``deepmorph fit``: which output belongs to which image (stable across runs), one task per output folder, no stale
results, the folder's own products not fitted, the device and the option ranges checked once up front, extensionless
DICOM files in folders."""
import csv
import json
import os

import numpy as np
import pytest

from DeepMorphLib.cli import main
from DeepMorphSimulatorLib.files import write_png


def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((32, 32), value, np.uint8)
    image[::2] += 10
    write_png(path, image)
    return path


def _cx(path):
    return json.loads(path.read_text())["circle"]["cx"]


def test_an_output_name_stays_with_its_image_across_runs(fits, tmp_path):
    """a/x.png and b/x.png get x and x_2; a later run with b/x.png alone writes x_2 again, never a's x; results.csv
    says which image each row is."""
    a, b = _image(tmp_path / "a" / "x.png", 50), _image(tmp_path / "b" / "x.png", 150)
    out = tmp_path / "R"
    assert main(["fit", "--task", "head", str(a), str(b), "--out", str(out)]) == 0
    mine_a, mine_b = _cx(out / "x.json"), _cx(out / "x_2.json")
    assert mine_a < 100 < mine_b
    b.write_bytes(_image(tmp_path / "c.png", 200).read_bytes())  # b changed: fitted again, into its own name
    assert main(["fit", "--task", "head", str(b), "--out", str(out), "--report"]) == 0
    assert _cx(out / "x.json") == mine_a and _cx(out / "x_2.json") > mine_b
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["file"], r["source"]) for r in rows] == [("x_2", str(b.resolve()))]
    assert main(["fit", "--task", "head", str(b), str(a), "--out", str(out)]) == 0  # order does not matter
    assert _cx(out / "x.json") == mine_a and len(fits) == 3  # both reused


def test_an_output_folder_holds_one_task(fits, tmp_path, capsys):
    x = _image(tmp_path / "x.png", 50)
    out = tmp_path / "R"
    assert main(["fit", "--task", "head", str(x), "--out", str(out)]) == 0
    head = (out / "x.json").read_bytes()
    capsys.readouterr()
    assert main(["fit", "--task", "femur", str(x), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds head results" in err and "another --out" in err and len(err.splitlines()) == 1
    assert (out / "x.json").read_bytes() == head and len(fits) == 1


def test_an_output_folder_of_an_earlier_version_is_recognised(fits, tmp_path, capsys):
    """Results written before the folder kept its record of names: their task and their images are respected."""
    a, b = _image(tmp_path / "a" / "x.png", 50), _image(tmp_path / "b" / "x.png", 150)
    out = tmp_path / "R"
    assert main(["fit", "--task", "head", str(a), "--out", str(out)]) == 0
    next(out.glob("*fit*.json")).unlink()  # no record: as an earlier version left it
    assert main(["fit", "--task", "head", str(b), "--out", str(out)]) == 0
    assert _cx(out / "x.json") < 100 < _cx(out / "x_2.json")
    next(out.glob("*fit*.json")).unlink()
    assert main(["fit", "--task", "femur", str(b), "--out", str(out)]) == 2
    assert "holds head results" in capsys.readouterr().err


def test_an_image_that_fails_leaves_no_earlier_result_looking_current(fits, tmp_path, capsys):
    p1 = _image(tmp_path / "st" / "p1.png", 50)
    out = tmp_path / "R"
    assert main(["fit", "--task", "head", str(p1), "--out", str(out)]) == 0
    assert (out / "p1.json").is_file() and (out / "p1_overlay.png").is_file()
    p1.write_bytes(b"junk, not an image")
    assert main(["fit", "--task", "head", str(p1), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 skipped" in err and "earlier result" in err
    assert not (out / "p1.json").exists() and not (out / "p1_overlay.png").exists()


def test_a_folder_fitted_into_itself_does_not_fit_its_own_products(fits, tmp_path):
    folder = tmp_path / "inout"
    _image(folder / "x.png", 50)
    assert main(["fit", "--task", "head", str(folder), "--out", str(folder), "--report"]) == 0
    assert main(["fit", "--task", "head", str(folder), "--out", str(folder), "--report"]) == 0
    assert len(fits) == 1  # the second run reuses x, and x_overlay.png is not taken for an X-ray
    assert sorted(p.name for p in folder.glob("*.png")) == ["x.png", "x_overlay.png"]


def test_the_device_is_checked_once_before_any_image(fits, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    images = [str(_image(tmp_path / f"{k}.png", 50 + k)) for k in range(3)]
    for device in ("cuda", "foo"):
        assert main(["fit", "--task", "head", *images, "--out", str(tmp_path / "R"), "--device", device]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("deepmorph fit: error: --device") and device in err
    assert fits == [] and not (tmp_path / "R").exists()


@pytest.mark.parametrize("option, bad, good", [
    ("--threshold", ["0", "1", "-0.5", "nan", "high"], ["0.3"]),
    ("--min-pixels", ["0", "-5", "2.5"], ["1"]),
    ("--upright-max-deg", ["-10", "nan"], ["0", "none"]),
    ("--second-opinion-below", ["-0.1", "1.5", "nan"], ["0", "1"]),
    ("--femur-min-quality", ["-0.1", "1.5"], ["0", "1"]),
    ("--polish-px", ["-1"], ["0"]),
    ("--coverage-weight", ["-1"], ["0"]),
])
def test_fit_options_out_of_range_are_refused_by_name(fits, tmp_path, capsys, option, bad, good):
    x = str(_image(tmp_path / "x.png", 50))
    args = ["fit", "--task", "femur", x, "--out", str(tmp_path / "R")]
    for value in bad:
        try:
            code = main(args + [option, value])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and f"argument {option}" in err and value in err, (option, value, err)
        assert "Traceback" not in err
    for value in good:
        assert main(args + [option, value]) == 0


def test_a_folder_of_extensionless_dicom_files_is_fitted(fits, tmp_path, capsys):
    import SimpleITK as sitk

    folder = tmp_path / "pacs"
    folder.mkdir()
    for k, name in enumerate(("IM0001", "1.2.840.113619.2.55.3.4")):  # names as PACS exports write them
        sitk.WriteImage(sitk.GetImageFromArray(np.full((32, 32), 40 + 20 * k, np.int16)), str(tmp_path / "x.dcm"))
        (tmp_path / "x.dcm").rename(folder / name)
    (folder / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # the index: no image
    (folder / "README").write_text("exported by a PACS")
    assert main(["fit", "--task", "head", str(folder), "--out", str(tmp_path / "R")]) == 0
    assert sorted(c.rsplit("/", 1)[-1] for c in fits) == ["1.2.840.113619.2.55.3.4", "IM0001"]


def test_two_runs_never_write_one_output_folder_at_once(fits, tmp_path, capsys):
    from DeepMorphSimulatorLib.files import lock_folder

    x = str(_image(tmp_path / "x.png", 50))
    out = tmp_path / "R"
    out.mkdir()
    other = lock_folder(out, "deepmorph fit")  # another run holds R
    assert main(["fit", "--task", "head", x, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another deepmorph fit" in err and str(os.getpid()) in err and fits == []
    other.close()  # that run ended
    assert main(["fit", "--task", "head", x, "--out", str(out)]) == 0 and len(fits) == 1


def test_on_windows_the_lock_is_a_locked_byte_past_the_process_id(tmp_path, monkeypatch):
    """No fcntl (Windows): msvcrt.locking of one byte at LOCK_BYTE, so the holder's process id stays readable. A stand-in
    msvcrt keeps Windows' rule: a byte locked through one handle cannot be locked through another."""
    import sys
    import types

    from DeepMorphSimulatorLib import files

    held = {}

    def locking(fd, mode, nbytes):
        key = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR), nbytes)
        assert mode == fake.LK_NBLCK and key[1] == files.LOCK_BYTE
        if held.setdefault(key, fd) != fd:
            raise OSError(36, "Resource deadlock avoided")

    fake = types.SimpleNamespace(LK_NBLCK=2, locking=locking)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl -> ImportError
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    first = files.lock_folder(tmp_path, "deepmorph fit")
    assert (tmp_path / ".deepmorph.lock").read_text() == str(os.getpid())
    with pytest.raises(ValueError, match=f"another deepmorph fit \\(process {os.getpid()}\\)"):
        files.lock_folder(tmp_path, "deepmorph fit")
    first.close()
