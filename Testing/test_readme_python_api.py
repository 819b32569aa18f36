"""The README's *Python API* block, run as written on a DRR saved as a DICOM file with a pixel spacing: it must keep
working, and its results must be the ones ``deepmorph fit`` writes for the same file."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_block() -> str:
    section = README.read_text().split("### Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_api_block_runs_and_agrees_with_deepmorph_fit(tmp_path, monkeypatch, capsys):
    from DeepMorphLib.cli import main
    from DeepMorphLib.commands.bench_pipeline import bench_image

    img = bench_image()
    image = sitk.GetImageFromArray(((img - img.min()) / np.ptp(img) * 4000).astype(np.uint16))
    image.SetSpacing((0.25, 0.25))
    for key, value in {"0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0060": "CT"}.items():  # PixelSpacing
        image.SetMetaData(key, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(tmp_path / "hip.dcm"))
    writer.Execute(image)
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(python_api_block(), str(README), "exec"), names)  # noqa: S102 - the README's own code
    head, femur, record = names["head"], names["femur"], names["record"]
    assert head.detected and femur.detected and len(record["contour"]) == len(femur.contour)
    in_mm = names["result_in_mm"](head.to_dict(), names["xray"].spacing_mm)
    assert in_mm["circle"]["r"] == pytest.approx(0.25 * head.circle["r"])
    assert main(["fit", "--task", "head", "hip.dcm", "--out", "R"]) == 0
    written = json.loads(Path("R/hip.json").read_text())
    assert [written["circle"][k] for k in ("cx", "cy", "r")] == pytest.approx(
        [head.circle[k] for k in ("cx", "cy", "r")], abs=1e-6)
    assert written["in_mm"]["circle"] == pytest.approx(in_mm["circle"])
    assert os.path.basename(written["source"]) == "hip.dcm"
