"""Procedural hip phantom: CT (HU), femur label map, femur surface meshes and landmarks, from a seed.

``make_phantom(seed)`` builds an adult pelvis/hip CT on a fixed LPS grid centred on the patient (the world
origin lies near the midpoint of the two hip-joint centres): x -200..200 mm (right to left), y -130..140 mm
(anterior to posterior), z -200..120 mm (inferior to superior), int16 HU, identity direction. Content:

* body: skin, subcutaneous fat (-100 HU), muscle (~50 HU) marbled with fat, bowel loops with gas and fat,
  bladder, rectum; two thighs below the hips; air (-1000 HU) outside;
* pelvis (phantom_pelvis.py): ilium wings and crests, acetabula cupping the femoral heads with a joint
  space of 2-4.5 mm, pubis, ischium around the obturator foramina, sacrum with foramina, L5;
* both proximal femurs (phantom_femur.py) with cortex 1200-1800 HU (thin proximally, 3.5-7.5 mm in the
  shaft), cancellous bone 180-400 HU with texture and a denser compressive trabecular band, fatty marrow in
  the shaft; mild white noise (8 HU) everywhere.

Everything (size, placement, pelvic tilt, femoral shape and pose) varies with the seed and nothing else:
the same seed gives identical files at a given spacing, and the same anatomy at any spacing.

The exported femurs (``sides``) get label values 1 (right) and 2 (left), a surface mesh and landmarks.
Label and mesh end at the shaft cut ``cut_mm`` (150 mm) below the head centre, perpendicular to the
shaft axis; in the CT the bone continues to the volume's lower border (as in a real CT).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from . import sdf
from .femur import Femur
from .phantom_femur import SHAFT_CUT_MM, FemurModel, FemurParams
from .phantom_pelvis import PelvisParams, body_hu, pelvis_box, pelvis_field
from .volume import Volume

GENERATOR_VERSION = "deepmorph-phantom-1"
EXTENT_MM = ((-200.0, 200.0), (-130.0, 140.0), (-200.0, 120.0))  # x, y, z (LPS) of the CT grid
LABELS = {"right": 1, "left": 2}

__all__ = ["Phantom", "Femur", "make_phantom", "save_phantom", "LABELS", "EXTENT_MM"]


@dataclasses.dataclass
class Phantom:
    """``ct``: int16 HU; ``femur_label``: uint8 (1 right, 2 left); ``femurs``: side -> Femur (LPS mm)."""

    ct: Volume
    femur_label: Volume
    femurs: dict
    seed: int
    params: dict  # anatomical parameters drawn for this seed (JSON-ready)


def _axis(lo: float, hi: float, spacing: float, multiple: int) -> np.ndarray:
    """Centred axis over [lo, hi] with (n - 1) a multiple of ``multiple`` (so coarse grids nest)."""
    n = int(np.floor((hi - lo) / spacing + 1e-9))
    n = (n // multiple) * multiple + 1
    c = 0.5 * (lo + hi)
    return c + (np.arange(n) - (n - 1) / 2.0) * spacing


def _check_args(seed, sides, spacing_mm):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if isinstance(sides, str):
        sides = tuple(s.strip() for s in sides.split(",") if s.strip())
    sides = tuple(sides)
    bad = [s for s in sides if s not in LABELS]
    if bad or not sides or len(set(sides)) != len(sides):
        raise ValueError(f"sides must be a non-empty selection of 'right' and 'left', got {sides!r}.")
    if not (np.isfinite(spacing_mm) and 0.5 <= spacing_mm <= 4.0):
        raise ValueError(f"spacing_mm must lie in [0.5, 4] mm, got {spacing_mm}.")
    return int(seed), sides, float(spacing_mm)


def _window(axes, lo, hi):
    """Index slices (k, j, i) of the grid points of ``axes`` (x, y, z) inside the LPS box [lo, hi]."""
    xs, ys, zs = axes
    return tuple(slice(int(np.searchsorted(a, l)), int(np.searchsorted(a, h, side="right")))
                 for a, l, h in ((zs, lo[2], hi[2]), (ys, lo[1], hi[1]), (xs, lo[0], hi[0])))


def _sub_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def make_phantom(seed: int, sides=("right", "left"), spacing_mm: float = 1.0, cut_mm: float = SHAFT_CUT_MM,
                 target_triangles: int = 5000) -> Phantom:
    """Build the hip phantom of ``seed`` on an isotropic grid of ``spacing_mm`` (see module docstring).

    ``sides``: femurs to export (label, mesh, landmarks); the CT always contains both hips.
    Smooth fields are computed on coarse grids and interpolated: soft tissue at ~4 mm, bone signed
    distances at ~2 mm (the SDF is smooth, so its zero level moves < 0.1 mm). The femur mesh is the zero
    isosurface of that same ~2 mm SDF (vtkFlyingEdges3D), decimated to ``target_triangles``.
    """
    from .phantom_kernels import composite_bone, upsample_with_noise

    seed, sides, spacing = _check_args(seed, sides, spacing_mm)
    streams = np.random.SeedSequence([seed, 20261]).spawn(5)
    rng_shape, rng_body, rng_bone, rng_noise, rng_pose = (np.random.default_rng(s) for s in streams)

    # --- anatomy parameters (independent of the spacing) ---
    scale = float(np.clip(rng_shape.normal(1.0, 0.05), 0.88, 1.12))
    fp = {"right": FemurParams.random(rng_shape, "right", scale)}
    fp["left"] = fp["right"].other_side(rng_shape, "left")
    pp = PelvisParams.random(rng_shape, {s: fp[s].head_radius for s in fp}, scale)
    tilt = float(np.clip(rng_pose.normal(0.0, 4.0), -10, 10))
    obliq = float(np.clip(rng_pose.normal(0.0, 1.5), -4, 4))
    yaw = float(np.clip(rng_pose.normal(0.0, 2.0), -5, 5))
    shift = np.clip(rng_pose.normal(0.0, 5.0, 3), -12, 12)
    rot_p = sdf.rotation((0, 0, 1), yaw) @ sdf.rotation((0, 1, 0), obliq) @ sdf.rotation((1, 0, 0), tilt)
    pelvis_from_world = rot_p.T

    # --- grids: CT (fine), bone fields (~2 mm), soft tissue (~4 mm); coarse points are fine points ---
    f_bone = max(1, int(round(2.0 / spacing)))
    f_body = 2 * f_bone
    fine = [_axis(lo, hi, spacing, f_body) for lo, hi in EXTENT_MM]
    bone_axes = [a[::f_bone] for a in fine]
    body_axes = [a[::f_body] for a in fine]
    shape = (len(fine[2]), len(fine[1]), len(fine[0]))

    # --- body (soft tissue) on the coarse grid, interpolated onto the CT grid with white noise (8 HU) ---
    gx, gy, gz = (a.astype(np.float32) for a in np.meshgrid(*(a - o for a, o in zip(body_axes, shift)), indexing="ij"))
    r = pelvis_from_world.astype(np.float32)
    pts = [(r[n, 0] * gx + r[n, 1] * gy + r[n, 2] * gz).transpose(2, 1, 0) for n in range(3)]
    del gx, gy, gz
    body = body_hu(pp, *pts, rng_body, spacing * f_body)
    del pts
    ct = np.empty(shape, np.float32)
    upsample_with_noise(np.ascontiguousarray(body, np.float32), f_body, ct, 8.0, _sub_seed(rng_noise))
    label = np.zeros(shape, np.uint8)
    no_plane = np.zeros(4)

    # --- pelvis: SDF on the bone grid inside its box, cortex/cancellous by depth ---
    lo, hi = pelvis_box(pp)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world = corners @ pelvis_from_world + shift
    w = _window(bone_axes, world.min(axis=0), world.max(axis=0))
    field = pelvis_field(pp, bone_axes[0][w[2]], bone_axes[1][w[1]], bone_axes[2][w[0]], origin=shift,
                         rot=pelvis_from_world)
    d = np.ascontiguousarray(field.d)
    composite_bone(ct, label, w[0].start * f_bone, w[1].start * f_bone, w[2].start * f_bone, d,
                   np.full(d.shape, pp.cortex, np.float32), np.full(d.shape, pp.hu_cancellous, np.float32),
                   f_bone, spacing, pp.hu_cortex, 35.0, no_plane, 0, _sub_seed(rng_bone))
    del field, d

    # --- femurs ---
    femurs = {}
    hjc_world = {s: rot_p @ pp.hip_centre(s) + shift for s in ("right", "left")}
    origin = np.array([fine[0][0], fine[1][0], fine[2][0]])
    for side in ("right", "left"):
        model = FemurModel(fp[side], hjc_world[side], cut_mm=cut_mm)
        blo, bhi = model.world_box()
        w = _window(bone_axes, blo, bhi)
        f = model.field(bone_axes[0][w[2]], bone_axes[1][w[1]], bone_axes[2][w[0]])
        t = model.cortex_thickness(f.local)
        hu = model.interior_hu(f.local, np.zeros(1, np.float32))
        # cut plane in fine indices: value = -(z_canonical + cut) (> 0 distal of the cut)
        wz = model.world_from_canon[:, 2]
        plane = np.concatenate([[-(wz @ (origin - model.head_center_lps) + cut_mm)], -spacing * wz])
        composite_bone(ct, label, w[0].start * f_bone, w[1].start * f_bone, w[2].start * f_bone,
                       np.ascontiguousarray(f.d), np.ascontiguousarray(t), np.ascontiguousarray(hu, np.float32),
                       f_bone, spacing, fp[side].hu_cortex, 60.0, plane,
                       LABELS[side] if side in sides else 0, _sub_seed(rng_bone))
        if side in sides:
            d_cut = np.maximum(f.d, model.cut_distance(f.local))
            femurs[side] = _femur_export(model, d_cut, [bone_axes[a][w[2 - a]][0] for a in range(3)],
                                         spacing * f_bone, target_triangles)
        del f, t, hu

    np.clip(ct, -1024, 3071, out=ct)
    ct_i16 = np.rint(ct).astype(np.int16)
    del ct
    vol = Volume(ct_i16, np.full(3, spacing), origin, np.eye(3))
    lab_vol = Volume(label, np.full(3, spacing), origin, np.eye(3))
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "spacing_mm": spacing,
        "cut_mm": float(cut_mm),
        "scale": scale,
        "pelvis_pose": {"tilt_deg": tilt, "obliquity_deg": obliq, "yaw_deg": yaw, "shift_mm": shift.tolist()},
        "pelvis": _jsonable(dataclasses.asdict(pp)),
        "femurs": {s: _jsonable(dataclasses.asdict(fp[s])) for s in ("right", "left")},
        "hip_centres_lps": {s: hjc_world[s].tolist() for s in ("right", "left")},
    }
    return Phantom(ct=vol, femur_label=lab_vol, femurs=femurs, seed=seed, params=params)


def _femur_export(model: FemurModel, d_cut: np.ndarray, origin, spacing: float, target_triangles: int) -> Femur:
    from .mesh import isosurface

    vol = Volume(d_cut, np.full(3, spacing), origin)
    mesh = isosurface(vol, 0.0, smooth_iterations=0, target_triangles=target_triangles)
    return Femur(mesh=mesh, landmarks=model.landmarks(), head_radius_mm=float(model.p.head_radius),
                 side=model.p.side)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_phantom(ph: Phantom, out_dir: str | os.PathLike) -> dict:
    """Write ``ct.nrrd``, ``femur-label.nrrd``, ``femur-<side>.vtp`` per exported side, ``femur.vtp`` (a copy
    of the right femur's mesh, or the only exported side's), ``landmarks.mrk.json`` (Slicer markups, LPS) and
    ``phantom.json`` (seed and drawn parameters). Returns {name: path}."""
    from .files import atomic_write_json
    from .landmarks import femur_markups, write_markups
    from .mesh import write_mesh
    from .volume import write_volume

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ct": out / "ct.nrrd", "femur_label": out / "femur-label.nrrd", "landmarks": out / "landmarks.mrk.json",
             "params": out / "phantom.json"}
    write_volume(ph.ct, paths["ct"])
    write_volume(ph.femur_label, paths["femur_label"])
    for side, fem in ph.femurs.items():
        paths[f"femur_{side}"] = out / f"femur-{side}.vtp"
        write_mesh(fem.mesh, paths[f"femur_{side}"])
    main_side = "right" if "right" in ph.femurs else next(iter(ph.femurs))
    paths["femur"] = out / "femur.vtp"
    write_mesh(ph.femurs[main_side].mesh, paths["femur"])
    write_markups(paths["landmarks"], femur_markups(ph.femurs), name="FemurLandmarks")
    atomic_write_json(paths["params"], ph.params)
    return {k: str(v) for k, v in paths.items()}


def phantom_summary(ph: Phantom) -> str:
    lines = [f"phantom seed {ph.seed}: CT {ph.ct.data.shape[::-1]} voxels at {ph.ct.spacing[0]:g} mm"]
    for side, fem in ph.femurs.items():
        p = ph.params["femurs"][side]
        lines.append(
            f"  {side} femur: head radius {fem.head_radius_mm:.1f} mm, neck-shaft {p['neck_shaft_deg']:.1f} deg, "
            f"anteversion {p['anteversion_deg']:.1f} deg, mesh {fem.mesh.GetNumberOfPolys()} triangles"
        )
    return "\n".join(lines)


def _dumps(obj) -> str:
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True)
