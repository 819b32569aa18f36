"""C-arm projection geometry.

Coordinate conventions (stated once, used everywhere in DeepMorph):

* **World frame = LPS, millimetres.** Patient coordinates as ITK, SimpleITK, NRRD and DICOM store them:
  +x towards the patient's Left, +y towards Posterior, +z towards Superior. Slicer's RAS frame differs
  by flipping x and y; the conversion happens only in :func:`ras_from_lps` / :func:`lps_from_ras`
  (used by the MRML glue), nowhere else.
* **Detector pixels (u, v)**: u = column (increasing to the image's right), v = row (increasing
  downwards), 0-based, pixel centres at integer coordinates. Arrays are indexed ``image[v, u]``.
* **C-arm at rest** (all angles 0): a PA beam as in hip surgery. The source lies posterior of the
  isocentre (+y), the detector anterior (-y). The image is displayed in the radiological convention
  (as a viewer in front of the patient sees it): patient's right on the image's left (u grows towards
  +x, Left) and the head at the top (v grows towards -z, inferior).
* **Angles (degrees)**: ``orbital`` rotates the C-arm about the patient's long (S) axis, positive = LAO
  (detector moves towards the patient's left); ``angular`` rotates about the patient's L-R axis,
  positive = cranial (detector tilts towards the head); ``inplane`` rotates the detector image about the
  beam axis, positive = counter-clockwise as displayed.

The 3x4 projection matrix ``P`` maps homogeneous LPS points to ``w * (u, v, 1)``, where ``w`` is the
point's depth (mm) from the source along the central beam axis.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_from_ras(points_ras: np.ndarray) -> np.ndarray:
    """RAS (Slicer) -> LPS (ITK/NRRD) points, shape (..., 3), mm. The only RAS/LPS conversion."""
    return np.asarray(points_ras, dtype=float) * np.array([-1.0, -1.0, 1.0])


def ras_from_lps(points_lps: np.ndarray) -> np.ndarray:
    """LPS (ITK/NRRD) -> RAS (Slicer) points, shape (..., 3), mm. The same flip as :func:`lps_from_ras`."""
    return lps_from_ras(points_lps)


def rotation_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclasses.dataclass(frozen=True)
class CArmGeometry:
    """A C-arm pose and detector. Lengths in mm, angles in degrees, detector sizes in px.

    ``principal_point`` (u, v) px is where the central beam hits the detector; ``None`` means the
    detector centre ((width - 1) / 2, (height - 1) / 2).
    """

    sid_mm: float = 1000.0  # source-to-image (detector) distance
    sod_mm: float = 600.0  # source-to-isocentre (object) distance
    width_px: int = 448  # detector columns
    height_px: int = 448  # detector rows
    pixel_mm: float = 0.6  # detector pixel pitch
    principal_point: tuple[float, float] | None = None
    orbital_deg: float = 0.0  # LAO(+)/RAO(-), about the patient's S axis
    angular_deg: float = 0.0  # cranial(+)/caudal(-), about the patient's L axis
    inplane_deg: float = 0.0  # image rotation about the beam axis, counter-clockwise as displayed
    isocenter_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)  # mm, LPS world frame

    def __post_init__(self):
        problems = []
        if not (np.isfinite(self.sid_mm) and self.sid_mm > 0):
            problems.append(f"sid_mm must be > 0, got {self.sid_mm}")
        if not (np.isfinite(self.sod_mm) and 0 < self.sod_mm < self.sid_mm):
            problems.append(f"sod_mm must lie in (0, sid_mm={self.sid_mm}), got {self.sod_mm}")
        if int(self.width_px) < 1 or int(self.height_px) < 1:
            problems.append(f"detector size must be >= 1 px, got {self.width_px} x {self.height_px}")
        if not (np.isfinite(self.pixel_mm) and self.pixel_mm > 0):
            problems.append(f"pixel_mm must be > 0, got {self.pixel_mm}")
        if not np.all(np.isfinite(self.isocenter_lps)) or len(self.isocenter_lps) != 3:
            problems.append(f"isocenter_lps must be 3 finite numbers, got {self.isocenter_lps}")
        for name in ("orbital_deg", "angular_deg", "inplane_deg"):
            if not np.isfinite(getattr(self, name)):
                problems.append(f"{name} must be a finite angle in degrees, got {getattr(self, name)}")
        if self.principal_point is not None and (len(self.principal_point) != 2
                                                 or not np.all(np.isfinite(self.principal_point))):
            problems.append(f"principal_point must be 2 finite numbers (u, v px), got {self.principal_point}")
        if problems:
            raise ValueError("Invalid C-arm geometry: " + "; ".join(problems))

    # --- derived quantities -------------------------------------------------------------------
    @property
    def magnification(self) -> float:
        """Magnification of an object at the isocentre: SID / SOD."""
        return self.sid_mm / self.sod_mm

    @property
    def field_of_view_mm(self) -> tuple[float, float]:
        """Width and height (mm) of the detector's view, measured at the isocentre."""
        return (self.width_px * self.pixel_mm / self.magnification, self.height_px * self.pixel_mm / self.magnification)

    @property
    def principal_point_px(self) -> np.ndarray:
        if self.principal_point is None:
            return np.array([(self.width_px - 1) / 2.0, (self.height_px - 1) / 2.0])
        return np.asarray(self.principal_point, dtype=float)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit vectors (LPS) of the detector u axis, v axis and the beam direction (source -> detector)."""
        arm = rotation_z(self.orbital_deg) @ rotation_x(-self.angular_deg)
        beam = arm @ np.array([0.0, -1.0, 0.0])  # at rest: posterior source -> anterior detector
        e_u = arm @ np.array([1.0, 0.0, 0.0])
        e_v = arm @ np.array([0.0, 0.0, -1.0])
        # counter-clockwise image rotation as displayed (v points down, so the sense flips)
        a = np.deg2rad(self.inplane_deg)
        c, s = np.cos(a), np.sin(a)
        e_u, e_v = c * e_u + s * e_v, -s * e_u + c * e_v
        return e_u, e_v, beam

    @property
    def source_lps(self) -> np.ndarray:
        """Focal spot position (mm, LPS)."""
        _, _, beam = self.axes()
        return np.asarray(self.isocenter_lps, dtype=float) - self.sod_mm * beam

    @property
    def detector_center_lps(self) -> np.ndarray:
        """Point where the central beam meets the detector (mm, LPS)."""
        _, _, beam = self.axes()
        return self.source_lps + self.sid_mm * beam

    def projection_matrix(self) -> np.ndarray:
        """3x4 matrix mapping homogeneous LPS points (mm) to ``depth * (u, v, 1)``."""
        e_u, e_v, beam = self.axes()
        rot = np.stack([e_u, e_v, beam])  # world -> camera (rows are camera axes)
        f = self.sid_mm / self.pixel_mm
        cu, cv = self.principal_point_px
        intrinsic = np.array([[f, 0.0, cu], [0.0, f, cv], [0.0, 0.0, 1.0]])
        extrinsic = np.hstack([rot, -(rot @ self.source_lps)[:, None]])
        return intrinsic @ extrinsic

    # --- helpers ------------------------------------------------------------------------------
    def project(self, points_lps: np.ndarray) -> np.ndarray:
        """Project LPS points (N, 3) mm to detector pixels (N, 2) as (u, v).

        Points at or behind the source (depth <= 0) cannot be projected and raise ValueError.
        """
        pts = _as_points(points_lps)
        h = np.hstack([pts, np.ones((len(pts), 1))]) @ self.projection_matrix().T
        if np.any(h[:, 2] <= 0):
            raise ValueError("Some points lie at or behind the X-ray source (depth <= 0 mm): they do not project.")
        return h[:, :2] / h[:, 2:3]

    def depth(self, points_lps: np.ndarray) -> np.ndarray:
        """Distance (mm) of LPS points (N, 3) from the source, measured along the central beam axis."""
        _, _, beam = self.axes()
        return (_as_points(points_lps) - self.source_lps) @ beam

    def pixel_positions_lps(self, u: np.ndarray | None = None, v: np.ndarray | None = None) -> np.ndarray:
        """LPS positions (mm) of detector pixel centres; default: all pixels, shape (height, width, 3)."""
        if u is None or v is None:
            v, u = np.mgrid[0 : self.height_px, 0 : self.width_px].astype(float)
        e_u, e_v, _ = self.axes()
        cu, cv = self.principal_point_px
        du = (np.asarray(u, dtype=float) - cu) * self.pixel_mm
        dv = (np.asarray(v, dtype=float) - cv) * self.pixel_mm
        return self.detector_center_lps + du[..., None] * e_u + dv[..., None] * e_v

    def backproject(self, uv: np.ndarray, depth_mm: np.ndarray | float) -> np.ndarray:
        """LPS points (N, 3) on the rays of pixels ``uv`` (N, 2) at the given depth(s) along the beam axis."""
        uv = np.atleast_2d(np.asarray(uv, dtype=float))
        det = self.pixel_positions_lps(uv[:, 0], uv[:, 1])
        src = self.source_lps
        return src + (det - src) * (np.asarray(depth_mm, dtype=float).reshape(-1, 1) / self.sid_mm)

    def with_(self, **changes) -> "CArmGeometry":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready description: every parameter plus the projection matrix and source position."""
        d = dataclasses.asdict(self)
        d["principal_point"] = [float(x) for x in self.principal_point_px]
        d["isocenter_lps"] = [float(x) for x in self.isocenter_lps]
        d["projection_matrix"] = self.projection_matrix().tolist()
        d["source_lps"] = self.source_lps.tolist()
        d["frame"] = "LPS mm; detector (u, v) px = (column, row), pixel centres at integers"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CArmGeometry":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("principal_point") is not None:
            kwargs["principal_point"] = tuple(kwargs["principal_point"])
        if "isocenter_lps" in kwargs:
            kwargs["isocenter_lps"] = tuple(kwargs["isocenter_lps"])
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _as_points(points) -> np.ndarray:
    pts = np.asarray(points, dtype=float)
    if pts.ndim == 1:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"Expected 3D points of shape (N, 3), got shape {pts.shape}.")
    if not np.all(np.isfinite(pts)):
        raise ValueError("3D points contain NaN or infinite coordinates.")
    return pts
