"""CT volumes with their physical frame, read and written through SimpleITK.

A :class:`Volume` holds the voxel array in SimpleITK/NumPy order ``data[k, j, i]`` (slice, row,
column) and the ITK geometry: ``spacing`` (mm, along i, j, k), ``origin`` (LPS mm of voxel (0, 0, 0)'s
centre) and ``direction`` (3x3, column n = LPS direction of index axis n). See geometry.py for frames.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class Volume:
    data: np.ndarray  # (K, J, I) voxels, e.g. HU
    spacing: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(3))  # mm along (i, j, k)
    origin: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))  # LPS mm of voxel (0,0,0)
    direction: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))  # columns: i, j, k axes in LPS

    def __post_init__(self):
        self.data = np.asarray(self.data)
        self.spacing = np.asarray(self.spacing, dtype=float).reshape(3)
        self.origin = np.asarray(self.origin, dtype=float).reshape(3)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the problem for volumes no renderer should accept."""
        if self.data.ndim != 3:
            raise ValueError(
                f"A CT volume must be a 3-D array (slices, rows, columns); got {self.data.ndim}-D shape "
                f"{self.data.shape}. For a single slice, add a leading axis of length 1."
            )
        if self.data.size == 0 or min(self.data.shape) < 1:
            raise ValueError(f"The CT volume is empty (shape {self.data.shape}).")
        if not np.issubdtype(self.data.dtype, np.number) or np.issubdtype(self.data.dtype, np.complexfloating):
            raise ValueError(f"CT voxels must be real numbers, got dtype {self.data.dtype}.")
        if np.issubdtype(self.data.dtype, np.floating) and not np.all(np.isfinite(self.data)):
            n_bad = int(np.size(self.data) - np.count_nonzero(np.isfinite(self.data)))
            raise ValueError(
                f"The CT volume contains {n_bad} NaN/infinite voxels; replace them (e.g. with -1024 HU, air) first."
            )
        if not np.all(np.isfinite(self.spacing)) or np.any(self.spacing <= 0):
            raise ValueError(f"Voxel spacing must be positive mm values, got {self.spacing.tolist()}.")
        if not np.all(np.isfinite(self.origin)):
            raise ValueError(f"Volume origin must be finite, got {self.origin.tolist()}.")
        if abs(abs(np.linalg.det(self.direction)) - 1.0) > 1e-3:
            raise ValueError(
                f"The direction matrix must be orthonormal (|det| = 1), got det {np.linalg.det(self.direction):.4f}."
            )

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.data.shape
        return i, j, k

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix: continuous voxel index (i, j, k, 1) -> LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def lps_to_ijk(self) -> np.ndarray:
        """4x4 matrix: LPS mm -> continuous voxel index (i, j, k)."""
        return np.linalg.inv(self.ijk_to_lps())

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ self.ijk_to_lps()[:3, :3].T + self.origin

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        lps = np.atleast_2d(np.asarray(lps, dtype=float))
        m = self.lps_to_ijk()
        return lps @ m[:3, :3].T + m[:3, 3]

    def corners_lps(self) -> np.ndarray:
        """The 8 corners (LPS mm) of the box spanned by voxel centres."""
        i, j, k = (np.array(self.shape_ijk) - 1).tolist()
        ijk = np.array([[a, b, c] for a in (0, i) for b in (0, j) for c in (0, k)], dtype=float)
        return self.index_to_lps(ijk)

    def center_lps(self) -> np.ndarray:
        return self.index_to_lps((np.array(self.shape_ijk) - 1) / 2.0)[0]

    def with_data(self, data: np.ndarray) -> "Volume":
        """Same frame, other voxels (same shape)."""
        if np.shape(data) != self.data.shape:
            raise ValueError(f"New data shape {np.shape(data)} differs from the volume's {self.data.shape}.")
        return Volume(data, self.spacing.copy(), self.origin.copy(), self.direction.copy())

    # --- SimpleITK ----------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image) -> "Volume":
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise ValueError(f"Expected a 3-D image, got {image.GetDimension()}-D.")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("Expected a scalar (single-component) CT image.")
        return cls(
            sitk.GetArrayFromImage(image),
            np.array(image.GetSpacing()),
            np.array(image.GetOrigin()),
            np.array(image.GetDirection()).reshape(3, 3),
        )

    def to_sitk(self):
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.data)
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(o) for o in self.origin])
        image.SetDirection([float(d) for d in self.direction.ravel()])
        return image


def hu_warning(volume: Volume, name) -> str | None:
    """A sentence when ``volume`` does not look like a CT in Hounsfield units (its lowest voxel above -500 HU, where
    air is about -1000 and any scan holds some air or fat), else None."""
    lowest = float(np.nanmin(volume.data))
    if lowest <= -500.0:
        return None
    return (f"{name}: the lowest voxel value is {lowest:.0f}, but a CT in Hounsfield units has air at about -1000; "
            "if it stores raw values, convert them to HU first (HU = value x rescale slope + intercept), or the "
            "X-ray contrast will be wrong.")


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a CT (NRRD, NIfTI, MHA, ... or a DICOM series folder) with SimpleITK, in LPS mm."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CT file or folder not found: {path}")
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's multi-line warnings; the problems are raised below
    try:
        image = read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as exc:  # SimpleITK's message: source file and line, then "sitk::ERROR: ..." on the last line
        detail = (str(exc).strip().splitlines() or ["unknown error"])[-1].replace("sitk::ERROR: ", "")
        raise ValueError(f"Cannot read {path} as a medical image ({detail}). Use NRRD, NIfTI, MHA or a DICOM "
                         "folder.") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    return Volume.from_sitk(image)


def read_dicom_series(folder: Path):
    """The CT series of a DICOM folder as a SimpleITK image: the series with the most slices (a localizer or a
    smaller reconstruction in the same folder is passed over). ValueError when its slices are unevenly spaced."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = [reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in reader.GetGDCMSeriesIDs(str(folder))]
    if not any(series):
        raise ValueError(f"No DICOM series found in folder {folder}.")
    reader.SetFileNames(max(series, key=len))
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    check_slice_spacing(reader, image, folder)
    return image


def check_slice_spacing(reader, image, folder, tolerance: float = 0.1) -> None:
    """Raise ValueError when the slice positions (DICOM Image Position Patient, mm along the slice normal) of a
    read series step unevenly by more than ``tolerance`` of the median step: missing slices, which ITK would spread
    evenly over the volume (the anatomy stretched, positions off by up to the gap)."""
    n = len(reader.GetFileNames())
    try:
        positions = np.array([[float(x) for x in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)])
    except (RuntimeError, ValueError):
        return  # no positions to check
    if n < 3 or positions.shape != (n, 3):
        return
    depth = positions @ np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    gaps = np.diff(depth)
    step = float(np.median(gaps))
    uneven = np.nonzero(np.abs(gaps - step) > tolerance * abs(step) + 1e-3)[0]
    if len(uneven):
        first = int(uneven[0])
        raise ValueError(
            f"The DICOM series in {folder} has unevenly spaced slices: the step is {abs(step):.2f} mm, but "
            f"{len(uneven)} gap(s) differ (first {abs(gaps[first]):.2f} mm between slices {first} and {first + 1} "
            f"of {n}), so slices are missing; read as it is, the anatomy would be stretched. Export the complete "
            "series again, or resample it to even spacing (e.g. in 3D Slicer) and save it as NRRD.")


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> None:
    """Write atomically (temporary file + rename) with SimpleITK; format from the extension."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{''.join(path.suffixes)}")
    sitk.WriteImage(volume.to_sitk(), str(tmp), compress)
    os.replace(tmp, path)
