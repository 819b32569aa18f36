"""Procedural proximal femur: a randomised implicit shape (SDF), its CT values and anatomical landmarks.

The femur is built in a *canonical frame* (mm): origin at the femoral-head centre, +x medial, +y posterior,
+z superior along the shaft axis (i.e. LPS axes for a right femur before it is posed). It is a smooth union
(smooth-min of signed distances) of: a sphere (head), an elliptical round cone (neck, from the head to the
neck base), a round-cone metaphysis and shaft, an ellipsoid greater trochanter, a capsule lesser trochanter
and an intertrochanteric crest. Shape parameters (head radius, neck-shaft angle, anteversion, neck length,
trochanter sizes and positions, shaft width, cortical thickness, bone density) are drawn from a seeded
random generator within adult ranges. The pose (adduction of the anatomical axis, flexion, rotation) maps
the canonical frame into LPS about the head centre; a left femur is the mirror image (x -> -x).

The exported femur (label, mesh, landmarks) ends at a **shaft cut**: a plane perpendicular to the shaft
axis ``cut_mm`` (default 150 mm) below the head centre. In the CT the shaft continues past the cut.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import sdf
from .sdf import SDFField

SHAFT_CUT_MM = 150.0  # default distance of the shaft cut below the head centre, along the shaft axis

# Landmark names (LPS mm) every femur provides; see Femur in femur.py.
LANDMARK_NAMES = (
    "head_center",
    "head_apex",
    "neck_axis_point",
    "neck_superior",
    "neck_inferior",
    "greater_trochanter",
    "lesser_trochanter",
    "shaft_axis_proximal",
    "shaft_axis_distal",
    "shaft_cut_lateral",
    "shaft_cut_medial",
)


def _clipped_normal(rng, mean, sd, lo, hi):
    return float(np.clip(rng.normal(mean, sd), lo, hi))


@dataclasses.dataclass
class FemurParams:
    """Shape, density and pose of one femur. Lengths mm, angles degrees, densities HU."""

    side: str
    head_radius: float
    neck_shaft_deg: float
    anteversion_deg: float
    neck_length: float  # head centre -> intersection of neck and shaft axes
    neck_radius: float  # narrowest neck, superior-inferior semi-axis
    neck_ap_ratio: float  # neck antero-posterior / superior-inferior width
    neck_base_ratio: float  # neck radius at its base / narrowest
    gt_tip_drop: float  # greater-trochanter tip below the head centre (negative: above)
    gt_lateral: float  # GT centre lateral of the shaft axis
    gt_posterior: float
    gt_radii: tuple  # (medio-lateral, antero-posterior, supero-inferior) semi-axes
    meta_radius: float  # metaphysis radius at the neck base
    shaft_radius: float  # diaphysis radius
    lt_drop: float  # lesser trochanter below the neck/shaft axes intersection
    lt_protrusion: float  # how far the LT stands off the shaft surface
    lt_radius: float
    lt_angle_deg: float  # direction of the LT from medial (0) towards posterior (90)
    adduction_deg: float  # distal shaft tilted medially (anatomical axis vs. vertical)
    flexion_deg: float
    rotation_deg: float  # internal (+) / external (-) rotation about the vertical through the head centre
    cortex_shaft: float  # cortical thickness of the diaphysis
    cortex_proximal: float  # cortical shell of head, neck, trochanters
    hu_cortex: float
    hu_cancellous: float
    hu_marrow: float

    @classmethod
    def random(cls, rng: np.random.Generator, side: str, scale: float = 1.0) -> "FemurParams":
        """Draw an adult femur; ``scale`` ~ 1 (body size) correlates head, neck and shaft sizes."""
        r_h = _clipped_normal(rng, 23.8 * scale, 1.0, 20.0, 28.0)
        return cls(
            side=side,
            head_radius=r_h,
            neck_shaft_deg=_clipped_normal(rng, 129.0, 4.5, 120.0, 140.0),
            anteversion_deg=_clipped_normal(rng, 13.0, 6.0, -2.0, 30.0),
            neck_length=r_h * _clipped_normal(rng, 2.35, 0.15, 2.0, 2.75),
            neck_radius=r_h * _clipped_normal(rng, 0.66, 0.04, 0.56, 0.76),
            neck_ap_ratio=_clipped_normal(rng, 0.82, 0.05, 0.7, 0.95),
            neck_base_ratio=_clipped_normal(rng, 1.15, 0.06, 1.0, 1.3),
            gt_tip_drop=_clipped_normal(rng, -3.0, 5.0, -14.0, 10.0),
            gt_lateral=_clipped_normal(rng, 8.0, 2.5, 3.0, 14.0),
            gt_posterior=_clipped_normal(rng, 6.0, 3.0, -2.0, 14.0),
            gt_radii=(
                _clipped_normal(rng, 14.0, 1.8, 10.0, 18.0),
                _clipped_normal(rng, 21.0, 2.2, 16.0, 26.0),
                _clipped_normal(rng, 27.0, 3.0, 20.0, 34.0),
            ),
            meta_radius=r_h * _clipped_normal(rng, 0.80, 0.05, 0.70, 0.92),
            shaft_radius=r_h * _clipped_normal(rng, 0.56, 0.04, 0.47, 0.66),
            lt_drop=_clipped_normal(rng, 30.0, 4.0, 20.0, 40.0),
            lt_protrusion=_clipped_normal(rng, 8.0, 2.0, 4.0, 13.0),
            lt_radius=_clipped_normal(rng, 8.5, 1.0, 6.5, 11.0),
            lt_angle_deg=_clipped_normal(rng, 50.0, 10.0, 25.0, 75.0),
            adduction_deg=_clipped_normal(rng, 3.0, 3.0, -3.0, 10.0),
            flexion_deg=_clipped_normal(rng, 0.0, 4.0, -10.0, 10.0),
            rotation_deg=_clipped_normal(rng, 0.0, 6.0, -15.0, 15.0),
            cortex_shaft=_clipped_normal(rng, 5.5, 0.8, 3.5, 7.5),
            cortex_proximal=_clipped_normal(rng, 1.6, 0.25, 1.0, 2.4),
            hu_cortex=_clipped_normal(rng, 1500.0, 120.0, 1200.0, 1800.0),
            hu_cancellous=_clipped_normal(rng, 300.0, 45.0, 180.0, 400.0),
            hu_marrow=_clipped_normal(rng, 20.0, 20.0, -40.0, 60.0),
        )

    def other_side(self, rng: np.random.Generator, side: str) -> "FemurParams":
        """The contralateral femur of the same person: same shape within ~2 % / 1.5 degrees, own pose."""
        angles = {"neck_shaft_deg": (120.0, 140.0), "anteversion_deg": (-2.0, 30.0), "lt_angle_deg": (25.0, 75.0)}
        pose = {"adduction_deg": (3.0, 3.0, -3.0, 10.0), "flexion_deg": (0.0, 4.0, -10.0, 10.0),
                "rotation_deg": (0.0, 6.0, -15.0, 15.0)}
        hu = ("hu_cortex", "hu_cancellous", "hu_marrow", "cortex_shaft", "cortex_proximal")
        changes = {"side": side}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "side" or f.name in hu:
                continue
            if f.name in angles:
                changes[f.name] = float(np.clip(v + rng.normal(0.0, 1.5), *angles[f.name]))
            elif f.name in pose:
                changes[f.name] = _clipped_normal(rng, *pose[f.name])
            elif f.name == "gt_radii":
                changes[f.name] = tuple(float(r * (1 + rng.normal(0.0, 0.02))) for r in v)
            elif f.name == "gt_tip_drop":
                changes[f.name] = float(v + rng.normal(0.0, 1.5))
            else:
                changes[f.name] = float(v * (1 + rng.normal(0.0, 0.02)))
        changes["head_radius"] = float(np.clip(changes["head_radius"], 20.0, 28.0))
        return dataclasses.replace(self, **changes)


class FemurModel:
    """A posed femur: SDF in its canonical frame, the canonical->LPS map, CT values, landmarks."""

    def __init__(self, params: FemurParams, head_center_lps, cut_mm: float = SHAFT_CUT_MM):
        if params.side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {params.side!r}")
        self.p = params
        self.cut_mm = float(cut_mm)
        self.head_center_lps = np.asarray(head_center_lps, float)
        mirror = np.diag([1.0, 1.0, 1.0]) if params.side == "right" else np.diag([-1.0, 1.0, 1.0])
        # pose of the canonical frame: adduction about the AP axis, flexion about the LR axis, rotation about z
        pose = (
            sdf.rotation((0, 0, 1), params.rotation_deg)
            @ sdf.rotation((1, 0, 0), -params.flexion_deg)
            @ sdf.rotation((0, 1, 0), -params.adduction_deg)
        )
        self.world_from_canon = mirror @ pose  # LPS direction = world_from_canon @ canonical direction
        self._build()

    # --- geometry in the canonical frame -------------------------------------------------------
    def _build(self) -> None:
        p = self.p
        a, t = np.deg2rad(p.neck_shaft_deg), np.deg2rad(p.anteversion_deg)
        n = np.array([np.sin(a) * np.cos(t), -np.sin(a) * np.sin(t), -np.cos(a)])  # neck axis, base -> head
        self.neck_dir = n
        self.q = -p.neck_length * n  # neck/shaft axes intersection
        qx, qy, qz = self.q
        up = np.array([0.0, 0.0, 1.0])
        e_s = up - up.dot(n) * n
        self.neck_sup = e_s / np.linalg.norm(e_s)  # superior direction perpendicular to the neck axis
        self.neck_ant = np.cross(self.neck_sup, n)
        r_h = p.head_radius
        self.neck_a = -0.45 * r_h * n  # inside the head
        self.neck_b = self.q + 0.12 * p.neck_length * n
        self.gt_center = np.array(
            [qx - p.gt_lateral, qy + p.gt_posterior, -p.gt_tip_drop - p.gt_radii[2]]
        )
        self.meta_a = np.array([qx - 6.0, qy + 2.0, qz - 2.0])
        self.meta_b = np.array([qx, qy, qz - 45.0])
        self.shaft_b = np.array([qx, qy, -max(self.cut_mm + 130.0, 280.0)])
        lt_base = np.array([qx, qy, qz - p.lt_drop])
        la = np.deg2rad(p.lt_angle_deg)
        lt_dir = np.array([np.cos(la), np.sin(la), -0.3])
        self.lt_dir = lt_dir / np.linalg.norm(lt_dir)
        frac = np.clip((p.lt_drop + 8.0) / 53.0, 0.0, 1.0)
        r_local = (1 - frac) * p.meta_radius + frac * (p.shaft_radius + 1.5)
        self.lt_base = lt_base
        self.lt_end = lt_base + (r_local + p.lt_protrusion - p.lt_radius) * self.lt_dir
        self.crest_a = self.gt_center + np.array([4.0, p.gt_radii[1] * 0.55, -p.gt_radii[2] * 0.45])
        self.crest_b = lt_base + np.array([2.0, 10.0, 2.0])
        self.calcar = self.q + np.array([0.0, 0.0, 0.0]) - 0.8 * p.meta_radius * self.neck_sup

    def operations(self) -> list:
        """CSG list [(op, fn(points), lo, hi, k)] in canonical coordinates (without the shaft cut)."""
        p = self.p
        r_h = p.head_radius
        r_nb = p.neck_radius * p.neck_base_ratio
        n, es, ea = self.neck_dir, self.neck_sup, self.neck_ant
        na = self.neck_a
        neck_len = float(np.linalg.norm(self.neck_b - na))
        ap = p.neck_ap_ratio

        def neck(pt):
            d = (pt[0] - na[0], pt[1] - na[1], pt[2] - na[2])
            u = d[0] * -n[0] + d[1] * -n[1] + d[2] * -n[2]  # along the neck, head -> base
            s = d[0] * es[0] + d[1] * es[1] + d[2] * es[2]
            w = (d[0] * ea[0] + d[1] * ea[1] + d[2] * ea[2]) / np.float32(ap)
            return sdf.round_cone((u, s, w), (0, 0, 0), (neck_len, 0, 0), p.neck_radius, r_nb) * np.float32(
                0.5 * (1 + ap)
            )

        gt_axes = np.eye(3)
        gr = p.gt_radii
        meta_ap = 0.85

        def meta(pt):
            q = (pt[0], (pt[1] - np.float32(self.meta_a[1])) / np.float32(meta_ap) + np.float32(self.meta_a[1]), pt[2])
            return sdf.round_cone(q, self.meta_a, self.meta_b, p.meta_radius, p.shaft_radius + 1.5) * np.float32(
                0.5 * (1 + meta_ap)
            )

        big = max(gr) + 2
        nb_lo = np.minimum(na, self.neck_b) - r_nb
        nb_hi = np.maximum(na, self.neck_b) + r_nb
        return [
            ("union", lambda pt: sdf.sphere(pt, (0, 0, 0), r_h), *sdf.sphere_box((0, 0, 0), r_h), 0.0),
            ("union", neck, nb_lo, nb_hi, 5.0),
            ("union", meta, *sdf.segment_box(self.meta_a, self.meta_b, p.meta_radius), 9.0),
            (
                "union",
                lambda pt: sdf.round_cone(pt, self.meta_b, self.shaft_b, p.shaft_radius + 1.5, p.shaft_radius - 0.5),
                *sdf.segment_box(self.meta_b, self.shaft_b, p.shaft_radius + 3),
                6.0,
            ),
            (
                "union",
                lambda pt: sdf.ellipsoid(pt, self.gt_center, gt_axes, gr),
                self.gt_center - big,
                self.gt_center + big,
                9.0,
            ),
            (
                "union",
                lambda pt: sdf.capsule(pt, self.lt_base, self.lt_end, p.lt_radius),
                *sdf.segment_box(self.lt_base, self.lt_end, p.lt_radius),
                9.0,
            ),
            (
                "union",
                lambda pt: sdf.capsule(pt, self.crest_a, self.crest_b, 5.0),
                *sdf.segment_box(self.crest_a, self.crest_b, 5.0),
                6.0,
            ),
        ]

    def canonical_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Canonical bounding box of the bone (mm), without margin."""
        pts = [
            np.full(3, -self.p.head_radius),
            np.full(3, self.p.head_radius),
            self.gt_center - max(self.p.gt_radii),
            self.gt_center + max(self.p.gt_radii),
            self.lt_end + self.p.lt_radius,
            self.lt_end - self.p.lt_radius,
            self.meta_a - self.p.meta_radius,
            self.meta_a + self.p.meta_radius,
            self.shaft_b - self.p.shaft_radius - 3,
            self.shaft_b + self.p.shaft_radius + 3,
        ]
        pts = np.array(pts)
        return pts.min(axis=0), pts.max(axis=0)

    # --- frames ---------------------------------------------------------------------------------
    def to_world(self, pts_canon: np.ndarray) -> np.ndarray:
        return np.atleast_2d(pts_canon) @ self.world_from_canon.T + self.head_center_lps

    def to_canon(self, pts_world: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(pts_world) - self.head_center_lps) @ self.world_from_canon

    @property
    def canon_from_world(self) -> np.ndarray:
        return self.world_from_canon.T

    def cut_distance(self, pt) -> np.ndarray:
        """Signed distance to the shaft cut plane, positive distal of it (outside the exported femur)."""
        return -(pt[2] + np.float32(self.cut_mm))

    # --- evaluation -----------------------------------------------------------------------------
    def sdf_points(self, pts_canon: np.ndarray, cut: bool = True) -> np.ndarray:
        """Signed distance (mm) at canonical points (N, 3), without culling."""
        pt = tuple(np.asarray(pts_canon, np.float32)[:, i] for i in range(3))
        d = np.full(len(pts_canon), sdf.BIG, np.float32)
        for op, fn, _lo, _hi, k in self.operations():
            v = np.asarray(fn(pt), np.float32)
            d = sdf.smooth_min(d, v, k) if op == "union" else sdf.smooth_max(d, -v, k)
        if cut:
            d = np.maximum(d, self.cut_distance(pt))
        return d

    def field(self, xs, ys, zs) -> SDFField:
        """SDF of the uncut femur on the LPS grid (xs, ys, zs), culled per primitive."""
        f = SDFField(xs, ys, zs, origin=self.head_center_lps, rot=self.canon_from_world, margin=10.0)
        for op, fn, lo, hi, k in self.operations():
            getattr(f, op)(fn, lo, hi, k)
        return f

    def world_box(self, margin: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.canonical_box()
        lo, hi = lo - margin, hi + margin
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        w = self.to_world(corners)
        return w.min(axis=0), w.max(axis=0)

    def cortex_thickness(self, local: tuple) -> np.ndarray:
        """Cortical thickness (mm) at canonical points: thin proximally, thick in the diaphysis."""
        p = self.p
        z = local[2]
        z0 = self.q[2] - p.lt_drop - 5.0
        w = np.clip((z0 - z) / 55.0, 0.0, 1.0)
        w = w * w * (3 - 2 * w)
        t = np.float32(p.cortex_proximal) + w * np.float32(p.cortex_shaft - p.cortex_proximal)
        # thicker calcar (medial neck base)
        dc = sdf.sphere(local, self.calcar, 0.0)
        t = t + np.float32(2.5) * np.exp(-(dc * dc) / np.float32(2 * 12.0**2))
        return t.astype(np.float32)

    def interior_hu(self, local: tuple, texture: np.ndarray) -> np.ndarray:
        """CT value (HU) inside the cortex: cancellous bone proximally, fatty marrow in the shaft."""
        p = self.p
        z = local[2]
        z0 = self.q[2] - p.lt_drop
        w = np.clip((z0 - z) / 45.0, 0.0, 1.0)
        canc = np.float32(p.hu_cancellous) + np.float32(70.0) * texture
        # denser head and principal compressive trabeculae (head dome -> calcar)
        dh = sdf.sphere(local, (0, 0, 0), 0.0)
        canc = canc + np.float32(90.0) * np.clip(1.0 - dh / np.float32(p.head_radius), 0, 1)
        top = 0.55 * p.head_radius * (self.neck_sup + np.array([0.4, 0, 0]))
        dcomp = sdf.capsule(local, top, self.calcar, 0.0)
        canc = canc + np.float32(120.0) * np.exp(-(dcomp * dcomp) / np.float32(2 * 5.0**2))
        return (canc * (1 - w) + np.float32(p.hu_marrow) * w).astype(np.float32)

    # --- landmarks ------------------------------------------------------------------------------
    def _surface_along(self, start, direction, max_mm: float = 90.0) -> np.ndarray:
        """First point where the ray start + t * direction leaves the bone (canonical, mm)."""
        direction = np.asarray(direction, float) / np.linalg.norm(direction)
        t = np.arange(0.0, max_mm, 0.05)
        pts = np.asarray(start, float) + t[:, None] * direction
        d = self.sdf_points(pts, cut=False)
        out = np.nonzero(d > 0)[0]
        if len(out) == 0 or out[0] == 0:
            raise RuntimeError("landmark ray did not start inside the bone")
        i = out[0]
        f = d[i - 1] / (d[i - 1] - d[i])
        return pts[i - 1] + f * (pts[i] - pts[i - 1])

    def landmarks_canonical(self) -> dict:
        p = self.p
        n = self.neck_dir
        mid = -0.5 * p.neck_length * n
        cut_c = np.array([self.q[0], self.q[1], -self.cut_mm])
        rim_start = cut_c + np.array([0, 0, 0.5])
        lat = self._surface_along(rim_start, (-1, 0, 0))
        med = self._surface_along(rim_start, (1, 0, 0))
        lat[2] = med[2] = -self.cut_mm
        gt_start = self.gt_center + np.array([0, 0, 0.0])
        return {
            "head_center": np.zeros(3),
            "head_apex": self._surface_along(np.zeros(3), n),
            "neck_axis_point": mid,
            "neck_superior": self._surface_along(mid, self.neck_sup),
            "neck_inferior": self._surface_along(mid, -self.neck_sup),
            "greater_trochanter": self._surface_along(gt_start, (0, 0, 1)),
            "lesser_trochanter": self._surface_along(self.lt_base, self.lt_dir),
            "shaft_axis_proximal": np.array([self.q[0], self.q[1], self.lt_base[2]]),
            "shaft_axis_distal": cut_c,
            "shaft_cut_lateral": lat,
            "shaft_cut_medial": med,
        }

    def landmarks(self) -> dict:
        """Named landmarks in LPS mm (see LANDMARK_NAMES)."""
        return {k: self.to_world(v)[0] for k, v in self.landmarks_canonical().items()}
