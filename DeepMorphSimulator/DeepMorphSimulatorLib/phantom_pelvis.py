"""Procedural pelvis (SDF) and soft-tissue body (HU) for the hip phantom.

Both are written in the *pelvis frame*: origin midway between the hip-joint centres, axes LPS (x left,
y posterior, z superior) before the pelvis is tilted. Coordinates below are those of an average adult with
half the inter-hip distance ``h`` = 88 mm; they scale with the drawn ``h``. The pelvis is a smooth union of
capsules, round cones and ellipsoids (acetabulum, supra-acetabular ilium, posterior column, ischial
tuberosity and spine, ischio-pubic ramus, pubic body, superior ramus, pelvic brim, iliac crest, iliac wing as
a curved plate, sacrum of five tapering segments with foramina and canal, L5), with the acetabular socket
(head radius + joint space) and its opening carved out so the femoral head sits in the cup.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import sdf
from .sdf import SDFField

REF_H = 88.0  # mm, reference half inter-hip distance of the coordinates below


def _n(rng, mean, sd, lo, hi):
    return float(np.clip(rng.normal(mean, sd), lo, hi))


@dataclasses.dataclass
class PelvisParams:
    half_width: float  # h: hip-joint centre to mid-sagittal plane (mm)
    head_radius: dict  # side -> femoral head radius (mm), for the socket
    joint_space: float  # socket radius - head radius (mm)
    cup_wall: float
    cup_inclination_deg: float
    cup_anteversion_deg: float
    wing_thickness: float
    jitter: dict  # side -> (3,) mm offset applied to that side's structures (asymmetry)
    hu_cortex: float
    hu_cancellous: float
    cortex: float  # cortical thickness (mm)
    # body
    fat: float  # subcutaneous fat thickness (mm)
    body_half_width: float
    body_half_depth: float
    thigh_radius: float
    bladder_fill: float
    hu_muscle: float
    hu_fat: float

    @classmethod
    def random(cls, rng: np.random.Generator, head_radius: dict, scale: float) -> "PelvisParams":
        h = _n(rng, 88.0 * scale, 3.0, 76.0, 100.0)
        fat = _n(rng, 20.0, 8.0, 6.0, 42.0)
        return cls(
            half_width=h,
            head_radius=dict(head_radius),
            joint_space=_n(rng, 3.2, 0.5, 2.2, 4.5),
            cup_wall=_n(rng, 9.0, 1.0, 7.0, 12.0),
            cup_inclination_deg=_n(rng, 44.0, 4.0, 35.0, 55.0),
            cup_anteversion_deg=_n(rng, 18.0, 4.0, 8.0, 28.0),
            wing_thickness=_n(rng, 5.0, 0.6, 4.0, 6.5),
            jitter={s: rng.normal(0.0, 1.5, 3) for s in ("right", "left")},
            hu_cortex=_n(rng, 1350.0, 120.0, 1000.0, 1700.0),
            hu_cancellous=_n(rng, 260.0, 40.0, 160.0, 380.0),
            cortex=_n(rng, 1.8, 0.3, 1.2, 2.6),
            fat=fat,
            body_half_width=min(h + 62.0 + 20.0 + fat, 192.0),
            body_half_depth=_n(rng, 108.0, 8.0, 90.0, 125.0) + 0.4 * fat,
            thigh_radius=_n(rng, 62.0, 5.0, 52.0, 74.0) + fat,
            bladder_fill=_n(rng, 0.8, 0.25, 0.3, 1.2),
            hu_muscle=_n(rng, 48.0, 6.0, 35.0, 60.0),
            hu_fat=_n(rng, -100.0, 10.0, -120.0, -80.0),
        )

    def hip_centre(self, side: str) -> np.ndarray:
        """Hip-joint centre in the pelvis frame (mm)."""
        return np.array([-self.half_width if side == "right" else self.half_width, 0.0, 0.0])


def _side_points(params: PelvisParams, side: str):
    """Scaled, mirrored, jittered mapping of reference right-side coordinates into the pelvis frame."""
    s = params.half_width / REF_H
    sign = 1.0 if side == "right" else -1.0
    jit = params.jitter[side]

    def P(x, y, z, jitter=True):
        q = np.array([sign * x * s, y * s, z * s])
        return q + (jit if jitter else 0.0)

    return P, s, sign


def cup_axis(params: PelvisParams, side: str) -> np.ndarray:
    """Unit vector out of the acetabulum's opening (lateral, inferior, anterior), pelvis frame."""
    inc, av = np.deg2rad(params.cup_inclination_deg), np.deg2rad(params.cup_anteversion_deg)
    sign = 1.0 if side == "right" else -1.0
    a = np.array([-sign * np.sin(inc) * np.cos(av), -np.sin(inc) * np.sin(av), -np.cos(inc)])
    return a / np.linalg.norm(a)


def pelvis_operations(params: PelvisParams) -> list:
    """CSG list [(op, fn, lo, hi, k)] of the pelvis in the pelvis frame."""
    ops = []

    def U(fn, box, k):
        ops.append(("union", fn, box[0], box[1], k))

    def S(fn, box, k=0.0):
        ops.append(("subtract", fn, box[0], box[1], k))

    def capsule(a, b, r, k):
        U(lambda p, a=a, b=b, r=r: sdf.capsule(p, a, b, r), sdf.segment_box(a, b, r), k)

    def cone(a, b, ra, rb, k):
        U(lambda p, a=a, b=b, ra=ra, rb=rb: sdf.round_cone(p, a, b, ra, rb), sdf.segment_box(a, b, max(ra, rb)), k)

    def chain(points, r, k):
        for a, b in zip(points[:-1], points[1:]):
            capsule(a, b, r, k)

    def ellipsoid(c, axes, radii, k):
        m = max(radii)
        U(lambda p, c=c, ax=axes, r=radii: sdf.ellipsoid(p, c, ax, r), (c - m, c + m), k)

    sockets = []
    for side in ("right", "left"):
        P, s, sign = _side_points(params, side)
        hjc = params.hip_centre(side)
        r_sock = params.head_radius[side] + params.joint_space
        r_cup = r_sock + params.cup_wall
        ax = cup_axis(params, side)
        cup_c = hjc + np.array([sign * 3.0, 2.0, 4.0])
        U(lambda p, c=cup_c, r=r_cup: sdf.sphere(p, c, r), sdf.sphere_box(cup_c, r_cup), 0.0)
        # supra-acetabular ilium towards the sacro-iliac joint; posterior column down to the ischium
        cone(P(-86, 6, 16), P(-58, 44, 58), 19 * s, 15 * s, 10.0)
        cone(P(-84, 16, -6), P(-66, 20, -56), 16 * s, 13 * s, 8.0)
        ellipsoid(P(-64, 18, -66), np.eye(3), (16 * s, 19 * s, 14 * s), 8.0)
        capsule(P(-70, 30, -24), P(-50, 44, -28), 4.5, 5.0)  # ischial spine
        # ischio-pubic ramus, pubic body, superior pubic ramus (they enclose the obturator foramen)
        chain([P(-60, 14, -74), P(-40, -16, -74), P(-18, -42, -56)], 7.5 * s, 5.0)
        ellipsoid(P(-14, -48, -38), np.eye(3), (11 * s, 12 * s, 21 * s), 6.0)
        cone(P(-78, -18, -6), P(-22, -48, -22), 13 * s, 9 * s, 6.0)
        # pelvic brim (ilio-pectineal line) from the sacro-iliac joint to the pubic tubercle
        chain([P(-44, 58, 58), P(-62, 30, 38), P(-72, -2, 18), P(-58, -32, 2), P(-26, -50, -16)], 6.0 * s, 6.0)
        # iliac wing: curved plate through its outline, thick crest along the rim
        outline = np.array(
            [P(*q) for q in [(-118, -50, 60), (-132, -22, 90), (-122, 12, 108), (-98, 42, 110),
                             (-72, 62, 100), (-50, 74, 72), (-52, 66, 50), (-62, 50, 30), (-82, 18, 24),
                             (-100, -14, 30), (-108, -34, 38)]]
        )
        # shell: a large sphere (radius 180 mm) on the medial side of the outline's plane, so the iliac
        # fossa is gently concave medially
        cent = outline.mean(axis=0)
        nrm = np.linalg.svd(outline - cent)[2][2]
        if nrm[0] * sign < 0:
            nrm = -nrm
        R = 180.0 * s
        c = cent + R * nrm
        nrm = -nrm  # outward (lateral) normal of the shell at the centroid
        e1 = np.cross(nrm, [0.0, 0.0, 1.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(nrm, e1)
        on_shell = c + (outline - c) * (R / np.linalg.norm(outline - c, axis=1))[:, None]
        poly2 = np.stack([(on_shell - cent) @ e1, (on_shell - cent) @ e2], axis=1)
        half_t = 0.5 * params.wing_thickness

        def wing(p, c=c, R=R, cent=cent, e1=e1, e2=e2, poly2=poly2, half_t=half_t):
            shell = np.abs(sdf.sphere(p, c, R)) - np.float32(half_t)
            d = (p[0] - np.float32(cent[0]), p[1] - np.float32(cent[1]), p[2] - np.float32(cent[2]))
            u = d[0] * np.float32(e1[0]) + d[1] * np.float32(e1[1]) + d[2] * np.float32(e1[2])
            v = d[0] * np.float32(e2[0]) + d[1] * np.float32(e2[1]) + d[2] * np.float32(e2[2])
            return np.maximum(shell, sdf.polygon_2d(u, v, poly2))

        U(wing, (on_shell.min(axis=0) - 8, on_shell.max(axis=0) + 8), 6.0)
        crest = on_shell[:7]
        for a, b, r in zip(crest[:-1], crest[1:], (7.0, 6.0, 5.5, 5.5, 6.5, 7.0)):
            capsule(a, b, r * s, 6.0)
        capsule(on_shell[-1], P(-96, -18, 12), 7.0 * s, 6.0)  # AIIS to the acetabular rim
        sockets.append((hjc, r_sock, r_cup, ax))

    # sacrum: five tapering segments along a curve concave anteriorly, with foramina and canal; L5 above
    P, s, _ = _side_points(params, "right")
    centre = [P(0, 38, 84, False), P(0, 48, 56, False), P(0, 62, 30, False), P(0, 75, 6, False),
              P(0, 84, -16, False), P(0, 84, -36, False)]
    half_w = (50, 40, 30, 21, 13, 7)
    half_ap = (20, 16, 12, 10, 8, 6)
    for i, cpt in enumerate(centre):
        tang = centre[min(i + 1, 5)] - centre[max(i - 1, 0)]
        tang /= np.linalg.norm(tang)
        ex = np.array([1.0, 0.0, 0.0])
        ey = np.cross(tang, ex)
        axes = np.stack([ex, ey, tang])
        ellipsoid(cpt, axes, (half_w[i] * s, half_ap[i] * s, 18 * s), 9.0)
    for i in range(4):
        mid = 0.5 * (centre[i] + centre[i + 1])
        for sx in (-1, 1):
            off = np.array([sx * (17 - 1.5 * i) * s, 0, 0])
            a, b = mid + off + np.array([0, -30, 8]), mid + off + np.array([0, 30, -8])
            r = (5.0 - 0.5 * i) * s
            S(lambda p, a=a, b=b, r=r: sdf.capsule(p, a, b, r), sdf.segment_box(a, b, r), 1.5)
    canal = [P(0, 62, 92, False), P(0, 70, 50, False), P(0, 84, 10, False)]
    for a, b in zip(canal[:-1], canal[1:]):
        S(lambda p, a=a, b=b: sdf.capsule(p, a, b, 7.0 * s), sdf.segment_box(a, b, 7.0 * s), 2.0)
    cone(P(0, 26, 106, False), P(0, 24, 136, False), 25 * s, 25 * s, 3.0)  # L5 body
    capsule(P(0, 58, 116, False), P(0, 86, 110, False), 6.0 * s, 6.0)  # spinous process
    capsule(P(-46, 38, 118, False), P(46, 38, 118, False), 6.5 * s, 6.0)  # transverse processes
    capsule(P(-14, 44, 112, False), P(-10, 60, 116, False), 6.5 * s, 6.0)
    capsule(P(14, 44, 112, False), P(10, 60, 116, False), 6.5 * s, 6.0)

    # sockets and openings last, so nothing blocks the femoral head and neck
    for hjc, r_sock, r_cup, ax in sockets:
        S(lambda p, c=hjc, r=r_sock: sdf.sphere(p, c, r), sdf.sphere_box(hjc, r_sock), 1.0)
        rr = r_cup + 14.0
        rim = hjc + 1.5 * ax

        def opening(p, c=hjc, rr=rr, rim=rim, ax=ax):
            return np.maximum(sdf.sphere(p, c, rr), -sdf.halfspace(p, rim, ax))

        S(opening, sdf.sphere_box(hjc, rr), 2.0)
    return ops


def pelvis_box(params: PelvisParams) -> tuple[np.ndarray, np.ndarray]:
    s = params.half_width / REF_H
    return np.array([-150.0, -80.0, -95.0]) * s - 10, np.array([150.0, 110.0, 140.0]) * s + 10


def pelvis_field(params: PelvisParams, xs, ys, zs, origin, rot) -> SDFField:
    """Pelvis SDF on an LPS grid; ``origin``/``rot`` map world to the pelvis frame (see SDFField)."""
    f = SDFField(xs, ys, zs, origin=origin, rot=rot, margin=10.0)
    for op, fn, lo, hi, k in pelvis_operations(params):
        getattr(f, op)(fn, lo, hi, k)
    return f


# --- soft tissue --------------------------------------------------------------------------------------
def _ellipse_sdf(x, y, cx, cy, a, b):
    """Approximate signed distance (mm) to an axis-aligned ellipse (exact on the axes)."""
    a = np.maximum(a, 1e-3)
    b = np.maximum(b, 1e-3)
    u, v = (x - cx) / a, (y - cy) / b
    k0 = np.sqrt(u * u + v * v)
    k1 = np.sqrt(u * u / (a * a) + v * v / (b * b))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def body_hu(params: PelvisParams, px, py, pz, rng: np.random.Generator, spacing: float) -> np.ndarray:
    """Soft-tissue CT values (HU, float32) at pelvis-frame points (arrays of one shape): air outside the
    skin, skin, subcutaneous fat, muscle marbled with fat, bowel with gas and fat, bladder, rectum."""
    from scipy import ndimage

    s = params.half_width / REF_H
    z = pz
    # trunk ellipse, narrowing to the waist above the iliac crests and fading out below the buttocks
    A = params.body_half_width * (1 - 0.16 * _smoothstep(30 * s, 140 * s, z))
    fade = np.sqrt(np.clip(1 - ((np.minimum(z, -30 * s) + 30 * s) / (80 * s)) ** 2, 0, 1))
    B = params.body_half_depth * (0.3 + 0.7 * fade)
    A = A * (0.3 + 0.7 * fade)
    d = _ellipse_sdf(px, py, 0.0, 12.0 * s, A, B) + 40.0 * (1 - fade)
    # thighs below the hip joints
    tr = params.thigh_radius * np.clip(1.0 - 0.001 * (-z - 80), 0.85, 1.0)
    thigh_on = _smoothstep(20 * s, -40 * s, z)
    for sx in (-1, 1):
        dt = _ellipse_sdf(px, py, sx * (params.half_width + 10 * s), -4.0 * s, tr, 0.92 * tr) + 60.0 * (1 - thigh_on)
        d = sdf.smooth_min(d, dt.astype(np.float32), 30.0)
    # buttocks
    prof = np.sqrt(np.clip(1 - ((z + 30 * s) / (75 * s)) ** 2, 0, 1))
    for sx in (-1, 1):
        rb = (62 * s + 0.8 * params.fat) * prof
        db = _ellipse_sdf(px, py, sx * 50 * s, 55 * s, rb, 0.95 * rb) + 50.0 * (1 - prof)
        d = sdf.smooth_min(d, db.astype(np.float32), 25.0)
    d = d.astype(np.float32)

    fat_t = params.fat * (1.0 + 0.5 * np.clip(py / (100 * s), 0, 1))
    n1 = ndimage.gaussian_filter(rng.standard_normal(d.shape, dtype=np.float32), 4.0 / spacing)
    n1 /= max(float(n1.std()), 1e-6)
    n2 = ndimage.gaussian_filter(rng.standard_normal(d.shape, dtype=np.float32), 5.0 / spacing)
    n2 /= max(float(n2.std()), 1e-6)

    hu = np.full(d.shape, np.float32(params.hu_muscle))
    hu += np.float32(6.0) * n2
    hu = np.where(n1 > 1.3, np.float32(params.hu_fat), hu)  # intermuscular fat
    # pelvic cavity: bowel loops with fat and gas, bladder, rectum
    cav = sdf.ellipsoid((px, py, pz), (0, 8 * s, 48 * s), np.eye(3), (78 * s, 60 * s, 88 * s))
    cav = np.maximum(cav, -(pz + 20 * s))
    bowel = np.float32(28.0) + np.float32(10.0) * n1
    bowel = np.where(n2 > 0.6, np.float32(params.hu_fat), bowel)
    bowel = np.where(n1 < -1.6, np.float32(-880.0), bowel)  # gas
    hu = np.where(cav < 0, bowel, hu)
    f = params.bladder_fill
    blad = sdf.ellipsoid((px, py, pz), (0, -30 * s, -10 * s + 8 * f), np.eye(3), (36 * s * f + 6, 28 * s * f + 6, 30 * s * f + 6))
    hu = np.where(blad < 0, np.float32(12.0), hu)
    rect = sdf.capsule((px, py, pz), (0, 66 * s, 6 * s), (0, 56 * s, -44 * s), 13 * s)
    rect_hu = np.where(n2 > 0.3, np.float32(-850.0), np.float32(10.0))
    hu = np.where(rect < 0, rect_hu, hu)
    hu = np.where(d > -fat_t, np.float32(params.hu_fat) + np.float32(8.0) * n2, hu)
    hu = np.where(d > -1.8, np.float32(25.0), hu)  # skin
    cover = np.clip(0.5 - d / np.float32(spacing), 0.0, 1.0)
    return (np.float32(-1000.0) * (1 - cover) + hu * cover).astype(np.float32)
