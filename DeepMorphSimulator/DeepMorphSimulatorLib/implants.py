"""Metal implants and surgical tools as analytic primitives, projected as exact line integrals.

Each object is a union of simple solids (cylinders, optionally hollow, threaded or with rounded ends,
and oriented boxes) in the LPS world frame (mm). For every detector ray (focal spot -> pixel centre)
the exact chord length (mm) through each solid is computed in closed form and multiplied by the
metal's linear attenuation coefficient mu (1/mm); the sum is a dimensionless line integral that is
simply *added* to the CT's line integrals ``A`` from ``drr.line_integrals``. The CT itself and the
ground truth are never changed (metal covers bone in the image, the bone's outline stays the truth).

Attenuation (assumption, stated once): an effective photon energy of 40-60 keV for a filtered
fluoroscopy beam (60-80 kVp) behind the patient, drawn per image. Mass attenuation coefficients (cm^2/g) from the NIST
XCOM / Hubbell & Seltzer tables (NISTIR 5632), interpolated log-log:

=========  ======  ======  ======  ======  =========
keV        40      50      60      80      density
=========  ======  ======  ======  ======  =========
water      0.2683  0.2269  0.2059  0.1837  1.00 g/cm3
iron       3.629   1.958   1.205   0.5952  7.874
titanium   2.214   1.213   0.7661  0.4052  4.506
=========  ======  ======  ======  ======  =========

Stainless steel (316L, ~8.0 g/cm^3, Fe with Cr/Ni/Mo) is taken as iron's mass coefficient x 1.04 at
8.0 g/cm^3, which gives 1.0-2.3 /mm over 60-40 keV; titanium alloy (Ti-6Al-4V, 4.43 g/cm^3)
0.34-0.75 /mm (with water at 0.0206 /mm). To stay
consistent with the DRR's water coefficient, :func:`metal_mu` returns ``mu_water * (mu_metal/mu_water)``
at the sampled energy, i.e. the ratio is physical and the absolute scale follows the renderer.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# --- attenuation --------------------------------------------------------------------------------
_ENERGIES_KEV = np.array([40.0, 50.0, 60.0, 80.0])
_MASS_ATT = {  # cm^2/g, NIST XCOM
    "water": np.array([0.2683, 0.2269, 0.2059, 0.1837]),
    "iron": np.array([3.629, 1.958, 1.205, 0.5952]),
    "titanium": np.array([2.214, 1.213, 0.7661, 0.4052]),
}
_MATERIALS = {  # name -> (mass attenuation table, factor, density g/cm^3)
    "steel": ("iron", 1.04, 8.0),
    "titanium": ("titanium", 1.0, 4.43),  # Ti-6Al-4V
}
MU_WATER_DEFAULT_PER_MM = 0.0206  # water at ~60 keV; used only when the DRR module gives none


def _mass_att(name: str, energy_kev: float) -> float:
    table = _MASS_ATT[name]
    return float(np.exp(np.interp(np.log(energy_kev), np.log(_ENERGIES_KEV), np.log(table))))


def metal_mu(material: str, energy_kev: float = 55.0, mu_water: float | None = None) -> float:
    """Linear attenuation coefficient (1/mm) of ``material`` ('steel' or 'titanium') at ``energy_kev``.

    Scaled so that ``mu_metal / mu_water`` is the physical ratio at that energy; ``mu_water`` (1/mm)
    defaults to the DRR module's water coefficient (eq. 8), so metal and tissue share one energy model.
    """
    if material not in _MATERIALS:
        raise ValueError(f"Unknown implant material {material!r}; choose one of {sorted(_MATERIALS)}.")
    if not 40.0 <= energy_kev <= 80.0:
        raise ValueError(f"Effective energy must lie in 40-80 keV, got {energy_kev}.")
    if mu_water is None:
        mu_water = default_mu_water()
    table, factor, density = _MATERIALS[material]
    ratio = _mass_att(table, energy_kev) * factor * density / (_mass_att("water", energy_kev) * 1.0)
    return float(mu_water * ratio)


def default_mu_water() -> float:
    """Water's attenuation (1/mm) used by the DRR renderer (``drr.MU_WATER_PER_MM`` when available)."""
    try:
        from . import drr

        return float(drr.MU_WATER_PER_MM)
    except (ImportError, AttributeError):
        return MU_WATER_DEFAULT_PER_MM


# --- primitives ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cylinder:
    """Solid or hollow circular cylinder from ``p0`` to ``p1`` (LPS mm), radius ``radius`` mm.

    ``inner_radius`` > 0 makes it a tube (cannulated screw, barrel). ``thread`` = (pitch_mm, land_mm)
    keeps only rings of axial width ``land_mm`` every ``pitch_mm`` (a screw thread approximated by
    rings; combine with a solid core cylinder). ``rounded`` adds hemispherical ends (a capsule; solid
    cylinders only). ``mu`` (1/mm) may be negative for a hole cut out of an enclosing solid.
    """

    p0: tuple
    p1: tuple
    radius: float
    mu: float
    inner_radius: float = 0.0
    thread: tuple | None = None
    rounded: bool = False

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        p0, p1 = np.asarray(self.p0, float), np.asarray(self.p1, float)
        return np.minimum(p0, p1) - self.radius, np.maximum(p0, p1) + self.radius

    def chord(self, src: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Chord length (mm) of rays ``src + t d`` (``d`` (M, 3) unit vectors) through this solid."""
        p0, p1 = np.asarray(self.p0, float), np.asarray(self.p1, float)
        axis = p1 - p0
        length = float(np.linalg.norm(axis))
        if length <= 0 or self.radius <= 0:
            return np.zeros(len(d))
        a = axis / length
        w = src - p0
        t0, t1 = _cylinder_interval(w, d, a, length, self.radius)
        if self.rounded and self.inner_radius <= 0 and self.thread is None:
            for centre in (p0, p1):
                s0, s1 = _sphere_interval(src - centre, d, self.radius)
                hit = s1 > s0
                empty = t1 <= t0
                t0 = np.where(hit, np.where(empty, s0, np.minimum(t0, s0)), t0)
                t1 = np.where(hit, np.where(empty, s1, np.maximum(t1, s1)), t1)
        if self.thread is None:
            outer = np.maximum(t1 - t0, 0.0)
            if self.inner_radius > 0:
                i0, i1 = _cylinder_interval(w, d, a, length, self.inner_radius)
                outer = outer - np.maximum(i1 - i0, 0.0)
            return outer
        # Threaded annulus: (outer minus inner) intersected with periodic rings along the axis.
        pitch, land = (float(x) for x in self.thread)
        i0, i1 = _cylinder_interval(w, d, a, length, max(self.inner_radius, 0.0)) if self.inner_radius > 0 else (t0, t0)
        i0 = np.where(i1 > i0, i0, t0)
        i1 = np.where(i1 > i0, i1, t0)
        wa, da = w @ a, d @ a
        total = _ring_measure(wa, da, t0, np.clip(i0, t0, t1), pitch, land)
        total += _ring_measure(wa, da, np.clip(i1, t0, t1), t1, pitch, land)
        return np.where(t1 > t0, total, 0.0)


@dataclasses.dataclass(frozen=True)
class Box:
    """Oriented box: ``center`` (LPS mm), ``axes`` 3x3 (rows = unit edge directions), ``half`` (3,) mm."""

    center: tuple
    axes: tuple
    half: tuple
    mu: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        ax = np.asarray(self.axes, float)
        ext = np.abs(ax.T) @ np.asarray(self.half, float)
        c = np.asarray(self.center, float)
        return c - ext, c + ext

    def chord(self, src: np.ndarray, d: np.ndarray) -> np.ndarray:
        ax = np.asarray(self.axes, float)
        half = np.asarray(self.half, float)
        o = ax @ (src - np.asarray(self.center, float))  # (3,)
        dl = d @ ax.T  # (M, 3)
        t0 = np.full(len(d), -np.inf)
        t1 = np.full(len(d), np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            for k in range(3):
                dk = dl[:, k]
                parallel = np.abs(dk) < 1e-12
                a = (-half[k] - o[k]) / dk
                b = (half[k] - o[k]) / dk
                lo, hi = np.minimum(a, b), np.maximum(a, b)
                inside = abs(o[k]) <= half[k]
                lo = np.where(parallel, -np.inf if inside else np.inf, lo)
                hi = np.where(parallel, np.inf if inside else -np.inf, hi)
                t0 = np.maximum(t0, lo)
                t1 = np.minimum(t1, hi)
        t0 = np.maximum(t0, 0.0)
        return np.where(t1 > t0, t1 - t0, 0.0)


def _cylinder_interval(w, d, a, length, radius):
    """Ray parameter interval inside a finite cylinder (axis a through origin offset -w, [0, length])."""
    wa = w @ a
    da = d @ a
    dp = d - da[:, None] * a
    wp = w - wa * a
    qa = np.einsum("ij,ij->i", dp, dp)
    qb = dp @ wp
    qc = wp @ wp - radius * radius
    disc = qb * qb - qa * qc
    with np.errstate(divide="ignore", invalid="ignore"):
        sq = np.sqrt(np.maximum(disc, 0.0))
        c0 = (-qb - sq) / qa
        c1 = (-qb + sq) / qa
        parallel = qa < 1e-14
        c0 = np.where(parallel, np.where(qc <= 0, -np.inf, np.inf), np.where(disc > 0, c0, np.inf))
        c1 = np.where(parallel, np.where(qc <= 0, np.inf, -np.inf), np.where(disc > 0, c1, -np.inf))
        s0 = (0.0 - wa) / da
        s1 = (length - wa) / da
        perp = np.abs(da) < 1e-14
        inside = (wa >= 0) & (wa <= length)
        lo = np.where(perp, -np.inf if inside else np.inf, np.minimum(s0, s1))
        hi = np.where(perp, np.inf if inside else -np.inf, np.maximum(s0, s1))
    t0 = np.maximum(np.maximum(c0, lo), 0.0)
    t1 = np.minimum(c1, hi)
    hit = t1 > t0
    return np.where(hit, t0, 0.0), np.where(hit, t1, 0.0)


def _sphere_interval(w, d, radius):
    b = d @ w
    c = w @ w - radius * radius
    disc = b * b - c
    sq = np.sqrt(np.maximum(disc, 0.0))
    t0 = np.maximum(-b - sq, 0.0)
    t1 = np.where(disc > 0, -b + sq, t0)
    return t0, np.maximum(t1, t0)


def _ring_measure(wa, da, ta, tb, pitch, land):
    """Length (mm) of ray pieces [ta, tb] whose axial coordinate s = wa + t da falls on a ring."""
    sa = wa + ta * da
    sb = wa + tb * da
    comb = lambda s: np.floor(s / pitch) * land + np.minimum(np.mod(s, pitch), land)  # noqa: E731
    seg = np.maximum(tb - ta, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.abs(comb(sb) - comb(sa)) / np.abs(da)
        on_ring = np.mod(sa, pitch) < land
    return np.where(np.abs(da) < 1e-9, np.where(on_ring, seg, 0.0), np.minimum(frac, seg))


# --- implants ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Implant:
    """One object (implant or tool): its primitives plus a JSON-ready description."""

    kind: str  # e.g. "dynamic_hip_screw", "kwire"
    material: str  # "steel" | "titanium"
    mu_per_mm: float
    primitives: list
    params: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"type": self.kind, "material": self.material, "mu_per_mm": round(float(self.mu_per_mm), 5)}
        d.update({k: _round(v) for k, v in self.params.items()})
        return d


def _round(v):
    if isinstance(v, (float, np.floating)):
        return round(float(v), 3)
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_round(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    return v


def metal_line_integrals(objects, geometry, margin_px: float = 2.0) -> np.ndarray:
    """Sum of mu * chord length over all primitives of ``objects`` for every detector pixel.

    ``objects``: Implant objects or bare primitives (LPS mm). Returns float32 (height, width), the
    dimensionless line integral to add to the CT's. Each primitive is evaluated only on the pixels near
    the projection of its enclosing capsule (a conservative bound: elsewhere the chord is exactly zero).
    """
    h, w = int(geometry.height_px), int(geometry.width_px)
    out = np.zeros(h * w, dtype=np.float64)
    prims = []
    for obj in objects:
        prims.extend(obj.primitives if isinstance(obj, Implant) else [obj])
    if not prims:
        return out.reshape(h, w).astype(np.float32)
    src = np.asarray(geometry.source_lps, float)
    dirs = ray_directions(geometry)
    f_px = geometry.sid_mm / geometry.pixel_mm
    pmat = geometry.projection_matrix()
    for prim in prims:
        idx = _candidate_pixels(prim, pmat, f_px, margin_px, h, w)
        if idx is None:
            idx = np.arange(h * w)
        if len(idx) == 0:
            continue
        out[idx] += prim.mu * prim.chord(src, dirs[idx])
    return np.maximum(out, 0.0).reshape(h, w).astype(np.float32)


def ray_directions(geometry) -> np.ndarray:
    """Unit vectors (H * W, 3), LPS, from the focal spot to every pixel centre (row-major, [v, u])."""
    e_u, e_v, _ = geometry.axes()
    cu, cv = geometry.principal_point_px
    px = float(geometry.pixel_mm)
    base = geometry.detector_center_lps - geometry.source_lps - cu * px * e_u - cv * px * e_v
    cols = (np.arange(geometry.width_px) * px)[:, None] * e_u  # (W, 3)
    rows = base + (np.arange(geometry.height_px) * px)[:, None] * e_v  # (H, 3)
    d = (rows[:, None, :] + cols[None, :, :]).reshape(-1, 3)
    d *= (1.0 / np.sqrt(np.einsum("ij,ij->i", d, d)))[:, None]
    return d


def _capsule(prim) -> tuple[np.ndarray, np.ndarray, float]:
    """A segment (p0, p1) and radius whose capsule encloses the primitive (mm)."""
    if isinstance(prim, Cylinder):
        return np.asarray(prim.p0, float), np.asarray(prim.p1, float), float(prim.radius)
    ax = np.asarray(prim.axes, float)
    half = np.asarray(prim.half, float)
    k = int(np.argmax(half))
    others = np.delete(half, k)
    c = np.asarray(prim.center, float)
    return c - ax[k] * half[k], c + ax[k] * half[k], float(np.hypot(*others))


def _candidate_pixels(prim, pmat, f_px, margin_px, h, w):
    """Flat pixel indices whose rays may hit ``prim``; None = all (primitive reaches behind the source)."""
    p0, p1, r = _capsule(prim)
    hom = np.stack([p0, p1]) @ pmat[:, :3].T + pmat[:, 3]  # depth * (u, v, 1)
    d_min = float(hom[:, 2].min()) - r
    if d_min <= 1.0:
        return None
    uv = hom[:, :2] / hom[:, 2:3]
    # projected radius bound: f r / d, times 1.5 for the perspective of off-axis points
    r_px = 1.5 * f_px * r / d_min + margin_px
    u0 = max(int(np.floor(uv[:, 0].min() - r_px)), 0)
    u1 = min(int(np.ceil(uv[:, 0].max() + r_px)), w - 1)
    v0 = max(int(np.floor(uv[:, 1].min() - r_px)), 0)
    v1 = min(int(np.ceil(uv[:, 1].max() + r_px)), h - 1)
    if u1 < u0 or v1 < v0:
        return np.zeros(0, dtype=np.int64)
    vv, uu = np.mgrid[v0 : v1 + 1, u0 : u1 + 1]
    seg = uv[1] - uv[0]
    seg2 = float(seg @ seg)
    du, dv = uu - uv[0, 0], vv - uv[0, 1]
    t = np.clip((du * seg[0] + dv * seg[1]) / seg2, 0.0, 1.0) if seg2 > 1e-12 else 0.0
    dist2 = (du - t * seg[0]) ** 2 + (dv - t * seg[1]) ** 2
    keep = dist2 <= r_px * r_px
    return (vv[keep] * w + uu[keep]).astype(np.int64)


# --- anatomy frame from landmarks ------------------------------------------------------------------
REQUIRED_LANDMARKS = ("head_center", "neck_axis_point", "greater_trochanter", "shaft_axis_proximal", "shaft_axis_distal")


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    n = np.linalg.norm(v)
    if n < 1e-9:
        raise ValueError("Degenerate landmark geometry: two landmarks that define an axis coincide.")
    return v / n


@dataclasses.dataclass
class FemurFrame:
    """Proximal-femur axes (LPS mm, unit vectors) derived from landmarks, for placing implants."""

    head_center: np.ndarray
    head_radius: float
    neck_dir: np.ndarray  # unit, from lateral towards the head centre along the neck axis
    shaft_dir: np.ndarray  # unit, from distal to proximal along the shaft axis
    shaft_point: np.ndarray  # a point on the shaft axis
    lateral: np.ndarray  # unit, perpendicular to the shaft, towards the lateral cortex
    shaft_radius: float  # outer radius of the shaft (mm)
    greater_trochanter: np.ndarray

    def shaft_axis_point(self, p: np.ndarray) -> np.ndarray:
        """Foot of the perpendicular from ``p`` onto the shaft axis."""
        return self.shaft_point + ((np.asarray(p, float) - self.shaft_point) @ self.shaft_dir) * self.shaft_dir

    def lateral_exit(self, tip: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Where the line through ``tip`` along ``-direction`` leaves the lateral shaft cortex."""
        u = -_unit(direction)
        # minimise |perp distance to shaft axis| along p(t) = tip + t u; then walk on to the cortex.
        w = np.asarray(tip, float) - self.shaft_point
        up = u - (u @ self.shaft_dir) * self.shaft_dir
        wp = w - (w @ self.shaft_dir) * self.shaft_dir
        qa = up @ up
        if qa < 1e-9:
            raise ValueError("The neck axis is parallel to the shaft axis: landmarks are inconsistent.")
        t_close = -(up @ wp) / qa
        r_close2 = max(wp @ wp - (up @ wp) ** 2 / qa, 0.0)
        dt = math.sqrt(max(self.shaft_radius**2 - r_close2, 0.0) / qa)
        return np.asarray(tip, float) + (t_close + dt) * u


def femur_frame(landmarks: dict, head_radius_mm: float, shaft_radius_mm: float | None = None) -> FemurFrame:
    """Build a :class:`FemurFrame` from named LPS landmarks (see ``REQUIRED_LANDMARKS``)."""
    missing = [k for k in REQUIRED_LANDMARKS if k not in landmarks]
    if missing:
        raise ValueError(
            f"Placing implants needs the landmarks {', '.join(REQUIRED_LANDMARKS)}; missing {', '.join(missing)}. "
            "Add them to the landmarks file or run without implants (--implants 0)."
        )
    lm = {k: np.asarray(v, float).reshape(3) for k, v in landmarks.items() if k in REQUIRED_LANDMARKS}
    c = lm["head_center"]
    shaft_dir = _unit(lm["shaft_axis_proximal"] - lm["shaft_axis_distal"])
    neck_dir = _unit(c - lm["neck_axis_point"])
    lateral = -(neck_dir - (neck_dir @ shaft_dir) * shaft_dir)
    lateral = _unit(lateral)
    r_s = float(shaft_radius_mm) if shaft_radius_mm else 0.55 * float(head_radius_mm)
    return FemurFrame(c, float(head_radius_mm), neck_dir, shaft_dir, lm["shaft_axis_distal"], lateral, r_s, lm["greater_trochanter"])


def estimate_shaft_radius(points: np.ndarray, landmarks: dict, default: float | None = None) -> float | None:
    """Median distance (mm) of femur-surface points (N, 3) from the shaft axis between the shaft landmarks."""
    try:
        p = np.asarray(landmarks["shaft_axis_proximal"], float)
        q = np.asarray(landmarks["shaft_axis_distal"], float)
    except KeyError:
        return default
    axis = p - q
    length = np.linalg.norm(axis)
    if length < 1e-6 or points is None or len(points) == 0:
        return default
    a = axis / length
    rel = np.asarray(points, float) - q
    s = rel @ a
    sel = (s > 0.1 * length) & (s < 0.9 * length)
    if sel.sum() < 20:
        return default
    r = np.linalg.norm(rel[sel] - s[sel, None] * a, axis=1)
    return float(np.median(r))


def _perp_basis(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(np.cross(a, ref))
    return e1, np.cross(a, e1)


def _tilt(rng, v: np.ndarray, max_deg: float) -> np.ndarray:
    """``v`` rotated by a random angle up to ``max_deg`` in a random direction."""
    e1, e2 = _perp_basis(v)
    ang = np.deg2rad(max_deg) * math.sqrt(rng.uniform())
    phi = rng.uniform(0, 2 * math.pi)
    return _unit(math.cos(ang) * v + math.sin(ang) * (math.cos(phi) * e1 + math.sin(phi) * e2))


def _t(p) -> tuple:
    return tuple(float(x) for x in p)


def _screw(p_tip, p_back, r_outer, r_core, mu, thread_len, pitch, cannula=0.0, shaft_r=None):
    """A lag/cancellous screw: threaded part of ``thread_len`` at the tip, smooth shank behind it."""
    p_tip, p_back = np.asarray(p_tip, float), np.asarray(p_back, float)
    a = _unit(p_back - p_tip)
    length = float(np.linalg.norm(p_back - p_tip))
    thread_len = min(thread_len, length)
    p_thr = p_tip + a * thread_len
    shaft_r = r_core if shaft_r is None else shaft_r
    prims = [
        Cylinder(_t(p_tip), _t(p_thr), r_core, mu, inner_radius=cannula),
        Cylinder(_t(p_tip + a * 0.5), _t(p_thr), r_outer, mu, inner_radius=r_core, thread=(pitch, 0.45 * pitch)),
    ]
    if length - thread_len > 0.5:
        prims.append(Cylinder(_t(p_thr), _t(p_back), shaft_r, mu, inner_radius=cannula))
    return prims


def _mat(rng, material: str, mu_water: float, energy_kev: float) -> float:
    return metal_mu(material, energy_kev, mu_water)


# --- constructs (implants inside the bone) ---------------------------------------------------------
def dynamic_hip_screw(rng, fr: FemurFrame, mu: float) -> tuple[list, dict]:
    """Sliding hip screw: lag screw along the neck into the head, barrel, side plate, cortical screws."""
    direction = _tilt(rng, fr.neck_dir, 4.0)
    e1, e2 = _perp_basis(direction)
    off = rng.normal(0, 2.0, 2)
    tip_depth = rng.uniform(6.0, 14.0)  # mm from the head surface (tip-apex distance ~ 2x this)
    tip = fr.head_center + direction * (fr.head_radius - tip_depth) + off[0] * e1 + off[1] * e2
    entry = fr.lateral_exit(tip, direction)
    barrel_len = float(rng.choice([25.0, 38.0]))
    plate_t, plate_w = 5.8, 19.0
    back = entry - direction * rng.uniform(2.0, 12.0)  # lag-screw end inside the barrel
    prims = _screw(tip, back, 6.25, 4.0, mu, rng.uniform(20.0, 28.0), 3.0, cannula=1.6)
    barrel_out = entry - direction * 4.0
    prims.append(Cylinder(_t(barrel_out), _t(barrel_out + direction * barrel_len), 6.5, mu, inner_radius=4.2))
    # side plate on the lateral cortex, from the barrel junction distally
    n_holes = int(rng.integers(2, 7))
    plate_len = 30.0 + 16.0 * n_holes
    foot = fr.shaft_axis_point(entry)
    top = foot + fr.lateral * (fr.shaft_radius + plate_t / 2) + fr.shaft_dir * 8.0
    width_dir = _unit(np.cross(fr.shaft_dir, fr.lateral))
    centre = top - fr.shaft_dir * plate_len / 2
    prims.append(Box(_t(centre), (_t(-fr.shaft_dir), _t(width_dir), _t(fr.lateral)), (plate_len / 2, plate_w / 2, plate_t / 2), mu))
    # barrel-plate junction block
    prims.append(Box(_t(barrel_out + fr.lateral * 1.0), (_t(-fr.shaft_dir), _t(width_dir), _t(fr.lateral)), (11.0, plate_w / 2, 4.0), mu))
    n_screws = 0
    for k in range(n_holes):
        level = top - fr.shaft_dir * (30.0 + 16.0 * k + 8.0)
        stagger = (1.5 if k % 2 else -1.5) * width_dir
        head_pt = level + stagger + fr.lateral * plate_t / 2
        if rng.uniform() < 0.9:
            sdir = _tilt(rng, -fr.lateral, 6.0)
            length = 2 * fr.shaft_radius + plate_t + rng.uniform(0.0, 4.0)
            prims += _screw(head_pt + sdir * length, head_pt, 2.25, 1.6, mu, length - plate_t - 1.0, 1.75)
            prims.append(Cylinder(_t(head_pt - sdir * 1.0), _t(head_pt + sdir * 2.5), 4.0, mu))
            n_screws += 1
        else:  # empty hole through the plate
            prims.append(Cylinder(_t(head_pt + fr.lateral * 0.01), _t(head_pt - fr.lateral * plate_t), 2.6, -mu))
    return prims, {"plate_holes": n_holes, "cortical_screws": n_screws, "barrel_mm": barrel_len, "tip_depth_mm": tip_depth}


def cephalomedullary_nail(rng, fr: FemurFrame, mu: float) -> tuple[list, dict]:
    """Intramedullary nail from the trochanter tip down the shaft, lag screw into the head, distal lock."""
    foot_gt = fr.shaft_axis_point(fr.greater_trochanter)
    entry = foot_gt + 0.35 * (fr.greater_trochanter - foot_gt) + fr.shaft_dir * rng.uniform(0.0, 12.0)
    prox_len = rng.uniform(50.0, 70.0)
    bend = fr.shaft_axis_point(entry) - fr.shaft_dir * prox_len
    total = float(rng.choice([180.0, 200.0, 240.0, 340.0]))
    r_prox = rng.uniform(7.75, 8.5)
    r_dist = rng.uniform(5.0, 6.0)
    cannula = 2.4
    axis_p = _unit(bend - entry)
    prims = [
        Cylinder(_t(entry), _t(bend), r_prox, mu, inner_radius=cannula),
        Cylinder(_t(bend - axis_p * 0.01), _t(bend + axis_p * 20.0), 0.5 * (r_prox + r_dist), mu, inner_radius=cannula),
        Cylinder(_t(bend), _t(bend - fr.shaft_dir * (total - prox_len)), r_dist, mu, inner_radius=cannula, rounded=False),
        Cylinder(_t(entry + fr.shaft_dir * 3.0), _t(entry), r_prox - 0.5, mu),  # end cap
    ]
    # lag screw or blade through the nail's proximal part along the neck
    direction = _tilt(rng, fr.neck_dir, 4.0)
    e1, e2 = _perp_basis(direction)
    off = rng.normal(0, 2.0, 2)
    tip_depth = rng.uniform(6.0, 14.0)
    tip = fr.head_center + direction * (fr.head_radius - tip_depth) + off[0] * e1 + off[1] * e2
    back = fr.lateral_exit(tip, direction) - direction * rng.uniform(3.0, 12.0)
    blade = rng.uniform() < 0.35
    if blade:  # helical blade: wide flat thread
        prims += _screw(tip, back, 5.5, 3.3, mu, rng.uniform(15.0, 25.0), 6.0, cannula=1.6, shaft_r=5.0)
    else:
        prims += _screw(tip, back, 5.25, 3.6, mu, rng.uniform(20.0, 28.0), 3.2, cannula=1.6, shaft_r=4.25)
    # distal locking screw(s), medio-lateral through the nail
    n_lock = int(rng.integers(0, 3))
    for k in range(n_lock):
        at = bend - fr.shaft_dir * (total - prox_len - 20.0 - 12.0 * k)
        sdir = _tilt(rng, -fr.lateral, 5.0)
        half = fr.shaft_radius + 2.0
        prims += _screw(at + sdir * half, at - sdir * (half + 2.0), 2.5, 1.9, mu, 2 * half, 1.75)
        prims.append(Cylinder(_t(at - sdir * (half + 2.0)), _t(at - sdir * (half + 4.5)), 4.0, mu))
    return prims, {"nail_length_mm": total, "helical_blade": bool(blade), "distal_locks": n_lock, "tip_depth_mm": tip_depth}


def cannulated_screws(rng, fr: FemurFrame, mu: float) -> tuple[list, dict]:
    """2-3 parallel cannulated cancellous screws along the neck (inverted triangle), optional washers."""
    n = 3 if rng.uniform() < 0.7 else 2
    direction = _tilt(rng, fr.neck_dir, 5.0)
    up = fr.shaft_dir - (fr.shaft_dir @ direction) * direction
    up = _unit(up)
    side = np.cross(direction, up)
    spread = rng.uniform(6.0, 9.0)
    if n == 3:
        offsets = [(-spread, 0.0), (0.5 * spread, -spread * 0.85), (0.5 * spread, spread * 0.85)]
    else:
        offsets = [(-spread * 0.7, 0.0), (spread * 0.7, 0.0)]
    rot = rng.uniform(-0.4, 0.4)
    r_outer = float(rng.choice([3.25, 3.5, 3.65]))
    thread_len = float(rng.choice([16.0, 32.0]))
    washers = rng.uniform() < 0.4
    prims = []
    for a, b in offsets:
        ca, sa = math.cos(rot), math.sin(rot)
        off = (ca * a - sa * b) * up + (sa * a + ca * b) * side
        inside = math.sqrt(max(fr.head_radius**2 - (a * a + b * b), 25.0))
        tip = fr.head_center + off + direction * (inside - rng.uniform(4.0, 9.0))
        exit_pt = fr.lateral_exit(tip, direction)
        back = exit_pt - direction * rng.uniform(1.0, 6.0)
        prims += _screw(tip, back, r_outer, 0.68 * r_outer, mu, thread_len, 2.75, cannula=1.35)
        prims.append(Cylinder(_t(back), _t(back - direction * 3.5), r_outer + 1.6, mu, inner_radius=1.35))
        if washers:
            prims.append(Cylinder(_t(back + direction * 0.2), _t(back + direction * 1.8), 6.5, mu, inner_radius=r_outer + 0.2))
    return prims, {"count": n, "diameter_mm": 2 * r_outer, "thread_mm": thread_len, "washers": bool(washers)}


def kwires(rng, fr: FemurFrame, mu: float) -> tuple[list, dict]:
    """1-3 Kirschner / guide wires into the head or trochanter, running out laterally through skin."""
    n = int(rng.integers(1, 4))
    prims = []
    for _ in range(n):
        r = float(rng.choice([0.8, 1.0, 1.25, 1.6]))
        if rng.uniform() < 0.7:
            direction = _tilt(rng, fr.neck_dir, 10.0)
            tip = fr.head_center + direction * (fr.head_radius - rng.uniform(3.0, 12.0)) + rng.normal(0, 4.0, 3)
        else:
            direction = _tilt(rng, _unit(fr.neck_dir + 0.5 * fr.shaft_dir), 25.0)
            tip = fr.greater_trochanter + rng.normal(0, 8.0, 3)
        length = rng.uniform(150.0, 260.0)
        prims.append(Cylinder(_t(tip), _t(tip - direction * length), r, mu, rounded=True))
    return prims, {"count": n}


# --- tools (outside the bone) -------------------------------------------------------------------------
def retractor(rng, fr: FemurFrame, mu: float) -> tuple[list, dict]:
    """Hohmann-type retractor: bent tip hooked around the neck/trochanter, blade, long handle."""
    around = fr.head_center - fr.neck_dir * rng.uniform(10.0, 45.0)
    e1, e2 = _perp_basis(fr.neck_dir)
    phi = rng.uniform(0, 2 * math.pi)
    radial = math.cos(phi) * e1 + math.sin(phi) * e2
    tip = around + radial * rng.uniform(16.0, 24.0)
    out_dir = _tilt(rng, _unit(radial + 0.6 * fr.lateral), 35.0)
    width = rng.uniform(14.0, 24.0)
    blade_len = rng.uniform(60.0, 90.0)
    thick = rng.uniform(1.5, 2.5)
    wdir = _unit(np.cross(out_dir, fr.neck_dir) + 1e-3)
    tdir = np.cross(out_dir, wdir)
    blade_c = tip + out_dir * blade_len / 2
    prims = [Box(_t(blade_c), (_t(out_dir), _t(wdir), _t(tdir)), (blade_len / 2, width / 2, thick / 2), mu)]
    hook_dir = _unit(-radial * 0.8 + out_dir * 0.2)
    hook_len = rng.uniform(8.0, 15.0)
    prims.append(Box(_t(tip + hook_dir * hook_len / 2), (_t(hook_dir), _t(wdir), _t(np.cross(hook_dir, wdir))), (hook_len / 2, width / 3, thick / 2), mu))
    handle_dir = _tilt(rng, out_dir, 20.0)
    h0 = tip + out_dir * blade_len
    handle_len = rng.uniform(100.0, 150.0)
    hw = _unit(np.cross(handle_dir, tdir) + 1e-3)
    prims.append(Box(_t(h0 + handle_dir * handle_len / 2), (_t(handle_dir), _t(hw), _t(np.cross(handle_dir, hw))), (handle_len / 2, 9.0, 2.5), mu))
    return prims, {"blade_width_mm": width}


def clamp(rng, fr: FemurFrame, mu: float) -> tuple[list, dict]:
    """Scissor-type clamp or forceps lying near the hip: two crossing jaws, a box lock, finger rings."""
    centre = fr.greater_trochanter + fr.lateral * rng.uniform(15.0, 80.0) + rng.normal(0, 25.0, 3)
    axis = _unit(rng.normal(size=3))
    normal = _unit(np.cross(axis, _unit(rng.normal(size=3))))
    across = np.cross(normal, axis)
    jaw_len = rng.uniform(40.0, 70.0)
    handle_len = rng.uniform(70.0, 110.0)
    spread = rng.uniform(0.05, 0.25)
    r = rng.uniform(1.8, 3.0)
    prims = [Box(_t(centre), (_t(axis), _t(across), _t(normal)), (5.0, 4.5, 3.0), mu)]
    for sgn in (-1.0, 1.0):
        jaw_end = centre + axis * jaw_len + across * sgn * spread * jaw_len * 0.3
        prims.append(Cylinder(_t(centre), _t(jaw_end), r * 0.8, mu, rounded=True))
        handle_end = centre - axis * handle_len + across * sgn * (spread * handle_len + 12.0)
        prims.append(Cylinder(_t(centre), _t(handle_end), r, mu, rounded=True))
        ring_c = handle_end - axis * 11.0 + across * sgn * 4.0
        ring_r = rng.uniform(9.0, 12.0)
        pts = [ring_c + ring_r * (math.cos(a) * axis + math.sin(a) * across) for a in np.linspace(0, 2 * math.pi, 9)]
        for p, q in zip(pts[:-1], pts[1:]):
            prims.append(Cylinder(_t(p), _t(q), r * 0.8, mu, rounded=True))
    return prims, {"length_mm": jaw_len + handle_len + 20.0}


FIXATIONS = {
    "dynamic_hip_screw": dynamic_hip_screw,
    "cephalomedullary_nail": cephalomedullary_nail,
    "cannulated_screws": cannulated_screws,
    "kwires": kwires,
}
TOOLS = {"retractor": retractor, "clamp": clamp, "kwire_outside": None}


def sample_implants(
    rng: np.random.Generator,
    landmarks: dict,
    head_radius_mm: float,
    probability: float = 0.5,
    shaft_radius_mm: float | None = None,
    mu_water: float | None = None,
    tool_probability: float | None = None,
) -> list[Implant]:
    """Random implants/tools for one image, placed from the femur's landmarks (LPS mm).

    With ``probability`` one fixation construct (sliding hip screw, cephalomedullary nail, cannulated
    screws or K-wires) goes into the femur; independently, with ``tool_probability`` (default
    ``probability / 2``) 1-2 tools (retractors, clamps, loose K-wires) lie around it. Materials:
    steel or titanium; the effective energy (40-60 keV) is drawn once per image.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"Implant probability must lie in [0, 1], got {probability}.")
    tool_probability = probability / 2 if tool_probability is None else tool_probability
    mu_water = default_mu_water() if mu_water is None else mu_water
    out: list[Implant] = []
    with_fix = rng.uniform() < probability
    with_tool = rng.uniform() < tool_probability
    if not (with_fix or with_tool):
        return out
    fr = femur_frame(landmarks, head_radius_mm, shaft_radius_mm)
    energy = rng.uniform(40.0, 60.0)
    if with_fix:
        kind = str(rng.choice(list(FIXATIONS), p=[0.3, 0.3, 0.25, 0.15]))
        material = "titanium" if (kind == "cephalomedullary_nail" and rng.uniform() < 0.6) or rng.uniform() < 0.15 else "steel"
        if kind == "kwires":
            material = "steel"
        mu = metal_mu(material, energy, mu_water)
        prims, params = FIXATIONS[kind](rng, fr, mu)
        out.append(Implant(kind, material, mu, prims, params))
    if with_tool:
        for _ in range(int(rng.integers(1, 3))):
            kind = str(rng.choice(["retractor", "clamp", "kwire_outside"], p=[0.45, 0.35, 0.2]))
            mu = metal_mu("steel", energy, mu_water)
            if kind == "kwire_outside":
                prims, params = kwires(rng, fr, mu)
            else:
                prims, params = TOOLS[kind](rng, fr, mu)
            out.append(Implant(kind, "steel", mu, prims, params))
    return out
