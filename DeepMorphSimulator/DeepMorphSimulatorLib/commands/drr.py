"""``deepmorph drr``: render one DRR of a CT (PNG + raw line integrals + JSON sidecar).

Example::

    deepmorph drr --ct pelvis.nrrd --orbital 20 --angular -10 --size 448 --out drr.png

writes ``drr.png`` (8-bit, bone dark), ``drr.npy`` (float32 line integrals A, dimensionless) and
``drr.json`` (full geometry incl. projection matrix, and every parameter used). With ``--mesh FEMUR``
(and optionally ``--landmarks L.mrk.json``) it also writes the femur ground truth: ``drr_femur.png`` and
``drr_head.png`` (outline target masks, 0/255), ``drr_silhouette.png``, and in the JSON the head circle,
the contour polygon, the corresponding points with visibility and the projected landmarks::

    deepmorph drr --ct ct.nrrd --mesh femur-right.vtp --landmarks landmarks.mrk.json --out drr.png
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

HELP = "render a DRR of a CT (PNG, raw line integrals .npy, JSON sidecar with the geometry)"


def add_geometry_arguments(parser: argparse.ArgumentParser) -> None:
    """C-arm pose and detector options shared by the commands that render DRRs."""
    from ..geometry import CArmGeometry

    d = CArmGeometry()
    g = parser.add_argument_group("C-arm geometry (LPS mm, degrees)")
    g.add_argument("--orbital", type=float, default=d.orbital_deg, metavar="DEG",
                   help="orbital rotation about the patient's long axis, + = LAO (default %(default)s)")
    g.add_argument("--angular", type=float, default=d.angular_deg, metavar="DEG",
                   help="angular rotation about the left-right axis, + = cranial (default %(default)s)")
    g.add_argument("--inplane", type=float, default=d.inplane_deg, metavar="DEG",
                   help="image rotation about the beam, + = counter-clockwise (default %(default)s)")
    g.add_argument("--sid", type=float, default=d.sid_mm, metavar="MM",
                   help="source-to-detector distance (default %(default)s)")
    g.add_argument("--sod", type=float, default=d.sod_mm, metavar="MM",
                   help="source-to-isocentre distance (default %(default)s)")
    g.add_argument("--pixel-mm", type=float, default=d.pixel_mm, metavar="MM",
                   help="detector pixel pitch (default %(default)s)")
    g.add_argument("--size", type=int, nargs="+", default=[d.width_px], metavar="PX",
                   help="detector size: N (square) or WIDTH HEIGHT (default %(default)s)")
    g.add_argument("--isocenter", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="isocentre in LPS mm (default: the CT volume's centre)")
    g.add_argument("--principal-point", type=float, nargs=2, default=None, metavar=("U", "V"),
                   help="where the central beam hits the detector, px (default: detector centre)")


def geometry_from_args(args: argparse.Namespace, volume=None):
    """The :class:`CArmGeometry` described by :func:`add_geometry_arguments` options.

    Without ``--isocenter`` the isocentre is ``volume``'s centre (or the origin when no volume is given).
    """
    from ..geometry import CArmGeometry

    if len(args.size) not in (1, 2):
        raise ValueError(f"--size takes N or WIDTH HEIGHT (pixels), got {len(args.size)} values.")
    width, height = (args.size[0], args.size[0]) if len(args.size) == 1 else args.size
    if args.isocenter is not None:
        iso = tuple(float(c) for c in args.isocenter)
    elif volume is not None:
        iso = tuple(float(c) for c in volume.center_lps())
    else:
        iso = (0.0, 0.0, 0.0)
    return CArmGeometry(
        sid_mm=args.sid,
        sod_mm=args.sod,
        width_px=int(width),
        height_px=int(height),
        pixel_mm=args.pixel_mm,
        principal_point=None if args.principal_point is None else tuple(args.principal_point),
        orbital_deg=args.orbital,
        angular_deg=args.angular,
        inplane_deg=args.inplane,
        isocenter_lps=iso,
    )


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """X-ray model options (eq. 8-10)."""
    from ..drr import DEFAULT_STEP_MM, METHODS, MU_WATER_PER_MM

    r = parser.add_argument_group("X-ray model")
    r.add_argument("--mu-water", type=float, default=MU_WATER_PER_MM, metavar="PER_MM",
                   help="attenuation of water, 1/mm (default %(default)s, about 70 keV)")
    r.add_argument("--step", type=float, default=DEFAULT_STEP_MM, metavar="MM",
                   help="sampling step of --method trilinear (default %(default)s)")
    r.add_argument("--method", choices=METHODS, default="auto",
                   help="line integral method: joseph (fast, default via auto) or trilinear (the paper's sampler)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or torch-cpu (default %(default)s)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, help="CT in HU: NRRD, NIfTI, MHA file or a DICOM series folder")
    parser.add_argument("--out", required=True, help="output PNG; the .npy and .json are written next to it")
    add_geometry_arguments(parser)
    add_render_arguments(parser)
    add_ground_truth_arguments(parser)


def add_ground_truth_arguments(parser: argparse.ArgumentParser) -> None:
    """Femur ground truth options (projected outline, head circle, corresponding points, target masks)."""
    g = parser.add_argument_group("femur ground truth (written when --mesh is given)")
    g.add_argument("--mesh", default=None, metavar="FILE",
                   help="femur surface (.vtp/.vtk/.stl/.ply/.obj, LPS mm) or label map (.nrrd/.nii.gz ...)")
    g.add_argument("--landmarks", default=None, metavar="MRK_JSON",
                   help="Slicer markups with femur landmarks (head_center, ...); missing ones are estimated")
    g.add_argument("--side", choices=("right", "left"), default=None,
                   help="which femur (checked against the anatomy; picks label 1/2 of a two-femur label map)")
    g.add_argument("--mesh-space", choices=("LPS", "RAS"), default=None,
                   help="coordinate system of the mesh file (default LPS, as Slicer writes since 4.11)")
    g.add_argument("--points", type=int, default=64, metavar="N", help="corresponding contour points (default 64)")
    g.add_argument("--band-px", type=float, default=3.0, metavar="PX",
                   help="width of the outline target bands (default %(default)s)")
    g.add_argument("--cut-mm", type=float, default=150.0, metavar="MM",
                   help="shorten the femur to this distance below the head centre (0: keep it whole)")


def output_paths(out: str | Path) -> dict:
    """``{"image": x.png, "line_integrals": x.npy, "sidecar": x.json}`` for ``--out x.png``."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out}.")
    return {"image": out, "line_integrals": out.with_suffix(".npy"), "sidecar": out.with_suffix(".json")}


def run(args: argparse.Namespace) -> int:
    from .. import drr
    from ..files import atomic_write_bytes, atomic_write_json, check_output_path, write_png
    from ..volume import hu_warning, read_volume

    paths = output_paths(args.out)
    check_output_path(paths["image"], "--out", folder=False)  # before rendering
    start = time.perf_counter()
    ct = read_volume(args.ct)
    if warning := hu_warning(ct, args.ct):
        print(f"deepmorph drr: warning: {warning}", file=sys.stderr)
    geometry = geometry_from_args(args, ct)
    result = drr.render_drr(ct, geometry, mu_water=args.mu_water, step_mm=args.step, method=args.method,
                            device=args.device)
    gt_record = ground_truth(args, ct, geometry, paths) if getattr(args, "mesh", None) else None
    write_png(paths["image"], result.image)
    buf = io.BytesIO()
    np.save(buf, result.line_integrals.astype(np.float32), allow_pickle=False)
    atomic_write_bytes(paths["line_integrals"], buf.getvalue())
    record = sidecar(args, ct, geometry, paths)
    if gt_record is not None:
        record.update(gt_record)
    atomic_write_json(paths["sidecar"], record)
    print(
        f"deepmorph drr: wrote {paths['image']} ({geometry.width_px}x{geometry.height_px} px), "
        f"{paths['line_integrals'].name}, {paths['sidecar'].name} in {time.perf_counter() - start:.1f} s"
    )
    return 0


def ground_truth(args, ct, geometry, paths) -> dict:
    """Load the femur (--mesh, --landmarks), project it, write the mask PNGs; returns the JSON fields."""
    from ..femur import load_femur
    from ..projection import ground_truth_record, mask_paths, project_ground_truth, write_ground_truth_masks

    if not (np.isfinite(args.cut_mm) and args.cut_mm >= 0):
        raise ValueError(f"--cut-mm must be >= 0 (0 keeps the whole femur), got {args.cut_mm}.")
    femur = load_femur(args.mesh, landmarks=args.landmarks, side=args.side, ct=ct, coordinate_system=args.mesh_space,
                       cut_mm=args.cut_mm or None)
    gt = project_ground_truth(femur.mesh, femur.landmarks, femur.head_radius_mm, geometry, n_points=args.points,
                              band_px=args.band_px)
    if warning := out_of_view_warning(gt, femur, geometry):
        print(f"deepmorph drr: warning: {warning}", file=sys.stderr)
    masks = write_ground_truth_masks(gt, paths["image"])
    record = ground_truth_record(gt, femur, args.band_px)
    record["ground_truth"]["files"] = {k: v.name for k, v in masks.items()}
    record["ground_truth"]["mesh"] = str(args.mesh)
    record["ground_truth"]["landmarks_file"] = None if args.landmarks is None else str(args.landmarks)
    return record


def out_of_view_warning(gt, femur, geometry, min_fraction: float = 0.1) -> str | None:
    """A sentence when the femur is mostly out of the image (its head centre outside, or fewer than
    ``min_fraction`` of its contour points inside), naming the isocentre that centres the head; None when in view."""
    w, h = geometry.width_px, geometry.height_px
    pts = np.asarray(gt.points, dtype=float)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    head = gt.head_circle
    head_in = head is not None and 0 <= head[0] <= w - 1 and 0 <= head[1] <= h - 1
    if head_in and inside.mean() >= min_fraction:
        return None
    centre = np.asarray(femur.landmarks.get("head_center", ()), dtype=float)
    fix = (f"centre the view on the femoral head with --isocenter {centre[0]:.1f} {centre[1]:.1f} {centre[2]:.1f} "
           "(its centre in LPS mm)" if centre.size == 3 else "move the view with --isocenter X Y Z (LPS mm)")
    where = "outside" if not head_in else "inside"
    return (f"the femur is mostly out of view: {int(inside.sum())} of {len(pts)} contour points and the head centre "
            f"{where} the {w}x{h} px image, so the ground truth is mostly empty; {fix}.")


def sidecar(args, ct, geometry, paths) -> dict:
    """JSON description of a rendered DRR: inputs, X-ray model parameters and the full geometry."""
    from .. import drr

    return {
        "generator": "deepmorph drr",
        "ct": str(args.ct),
        "ct_volume": {
            "shape_ijk": list(ct.shape_ijk),
            "spacing_mm": ct.spacing.tolist(),
            "origin_lps": ct.origin.tolist(),
            "direction": ct.direction.tolist(),
        },
        "geometry": geometry.to_dict(),
        "model": {
            "mu_water_per_mm": args.mu_water,
            "hu_clip": [drr.HU_MIN, drr.HU_MAX],
            "method": "joseph" if args.method == "auto" else args.method,
            "step_mm": args.step,
            "device": args.device,
            "display": {"saturate_fraction": 0.025, "low": 20, "high": 255, "intensity": "exp(-A)"},
            "ray_clipping": "voxel-centre box of the CT",
        },
        "files": {
            "image": paths["image"].name,
            "line_integrals": paths["line_integrals"].name,
            "line_integrals_units": "dimensionless A = sum mu dx (1/mm * mm), float32 [v, u]",
        },
    }
