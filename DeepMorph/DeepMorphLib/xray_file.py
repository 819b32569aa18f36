"""An X-ray file as ``fit`` reads it: its frames, and the pixel spacing in mm where the file states one.

Frames: (N, H, W) float32, grey (colour averaged). N > 1 only for a multi-frame DICOM file (a fluoroscopy run:
NumberOfFrames (0028,0008) > 1); a 3-D volume of another format is not an X-ray and is refused.

Pixel spacing ``(sx, sy)``: mm per px along x (columns) and y (rows), as SimpleITK (GDCM) reads it from the DICOM
tags in ``SPACING_TAGS`` (or a multi-frame file's Pixel Measures), or from the header of NRRD / MetaImage / NIfTI
files. None for PNG, JPEG, TIFF and BMP (their resolution is print dpi, not the patient) and for DICOM files without
a spacing: then results stay in px.
A radiograph's ImagerPixelSpacing is at the detector, where the hip is magnified (~1.1-1.3x); the file's
EstimatedRadiographicMagnificationFactor (0018,1114), when given, corrects it to the hip's plane.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPACING_TAGS = {  # DICOM tag (SimpleITK key) -> what its spacing means
    "0028|0030": "PixelSpacing (0028,0030)",
    "0018|1164": "ImagerPixelSpacing (0018,1164), at the detector: the hip is magnified (~1.1-1.3x) in it",
    "0018|2010": "NominalScannedPixelSpacing (0018,2010), of the scanned film",
}
MAGNIFICATION_TAG = "0018|1114"  # EstimatedRadiographicMagnificationFactor
FRAMES_TAG = "0028|0008"  # NumberOfFrames
HEADER_SPACING_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".nii.gz")


@dataclass(frozen=True)
class XRayFile:
    """``frames`` (N, H, W) float32; ``spacing_mm`` (sx, sy) mm/px or None; ``spacing_source``: where it came from."""

    frames: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str | None = None


def _reader(path: Path):
    import SimpleITK as sitk

    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.SetImageIO(reader.GetImageIOFromFileName(str(path)))  # probed once: ``_is_dicom`` asks the reader
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"Cannot read image {path}: not a readable PNG/JPEG/TIFF/DICOM/NRRD file ({exc}).") from None
    return reader


def _is_dicom(reader) -> bool:
    return reader.GetImageIO() == "GDCMImageIO"


def _tag(reader, key: str) -> str | None:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None


def frame_count(path: str | os.PathLike) -> int:
    """Frames in the file (its header only): NumberOfFrames of a multi-frame DICOM file, else 1."""
    return _frames(_reader(Path(path)))


def _frames(reader) -> int:
    """``frame_count`` of the file whose header ``reader`` has read."""
    frames = _tag(reader, FRAMES_TAG) if _is_dicom(reader) else None
    try:
        return max(1, int(float(frames))) if frames else 1
    except ValueError:
        return 1


def read_xray(path: str | os.PathLike) -> XRayFile:
    """The file's frames and pixel spacing (module docstring). ValueError for an unreadable file, a 3-D volume
    that is not a multi-frame DICOM file, or NaN/infinite pixels."""
    import SimpleITK as sitk

    from DeepMorphSimulatorLib.files import check_finite, grey_of, read_with_pillow

    path = Path(path)
    try:
        reader = _reader(path)
        image = reader.Execute()
    except (ValueError, RuntimeError) as exc:
        pixels = read_with_pillow(path) if path.is_file() else None  # a PNG of grey + alpha
        if pixels is None or pixels.ndim != 2:
            raise ValueError(str(exc) if isinstance(exc, ValueError) else
                             f"Cannot read image {path}: its pixel data is unreadable ({exc}).") from None
        check_finite(pixels, f"Image {path}")
        return XRayFile(pixels[None])
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    arr = grey_of(arr, image.GetNumberOfComponentsPerPixel())
    multi_frame = _frames(reader) > 1
    if not multi_frame:
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise ValueError(f"Image {path} is not 2-D after squeezing (shape {arr.shape}): a volume, not an X-ray; "
                             "give one X-ray frame (a 2-D image, or a multi-frame DICOM file of a fluoroscopy run).")
        arr = arr[None]
    check_finite(arr, f"Image {path}")
    spacing, source = _spacing(reader, path, image.GetSpacing()[:2])
    return XRayFile(arr, spacing, source)


def _spacing(reader, path: Path, sitk_spacing) -> tuple[tuple[float, float] | None, str | None]:
    """(sx, sy) mm and its source, or (None, None) where the file states no spacing of the patient."""
    spacing = (float(sitk_spacing[0]), float(sitk_spacing[1]))
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        return None, None
    if _is_dicom(reader):
        present = [key for key in SPACING_TAGS if _tag(reader, key)]
        if not present:  # a multi-frame file keeps it in its functional groups; 1 x 1 there is GDCM's default
            return (spacing, "DICOM Pixel Measures (0028,9110)") if spacing != (1.0, 1.0) else (None, None)
        used = next((key for key in present if _matches(_tag(reader, key), spacing)), present[0])
        source = f"DICOM {SPACING_TAGS[used]}"
        factor = _number(_tag(reader, MAGNIFICATION_TAG))
        if used == "0018|1164" and factor and factor > 0:
            spacing = (spacing[0] / factor, spacing[1] / factor)
            source = (f"DICOM ImagerPixelSpacing (0018,1164) / EstimatedRadiographicMagnificationFactor "
                      f"(0018,1114) {factor:g}: at the hip")
        return spacing, source
    if path.name.lower().endswith(HEADER_SPACING_SUFFIXES):
        return spacing, "file header"
    return None, None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _matches(tag_value: str, spacing: tuple[float, float]) -> bool:
    """Whether a DICOM spacing value "row\\column" (= sy\\sx, mm) is ``spacing`` (sx, sy)."""
    try:
        sy, sx = (float(v) for v in tag_value.split("\\")[:2])
    except ValueError:
        return False
    return bool(np.allclose((sx, sy), spacing, rtol=1e-4))


def result_in_mm(d: dict, spacing_mm) -> dict | None:
    """A fit result's geometry (``FitResult.to_dict``: px of the image) in mm: {"circle": {cx, cy, r, diameter},
    "contour": [[x, y], ...], "landmarks": {name: [x, y]}}, x and y from the first pixel's centre (x = x_px * sx).
    Radii use the mean of sx and sy (X-ray pixels are square). None without a spacing."""
    if spacing_mm is None:
        return None
    sx, sy = (float(v) for v in spacing_mm)
    s = 0.5 * (sx + sy)
    out = {}
    circle = d.get("circle")
    if circle:
        out["circle"] = {"cx": circle["cx"] * sx, "cy": circle["cy"] * sy, "r": circle["r"] * s,
                         "diameter": 2 * circle["r"] * s}
    if d.get("contour"):
        out["contour"] = (np.asarray(d["contour"], dtype=float) * [sx, sy]).tolist()
    if d.get("landmarks"):
        out["landmarks"] = {name: [float(p[0]) * sx, float(p[1]) * sy] for name, p in d["landmarks"].items()}
    return out
