"""Training-set generation: DRR + implants + detector effects + projected ground truth, per sample.

Sample ``i`` is a pure function of (settings, i): its random numbers come from
``np.random.SeedSequence([seed, i])`` (split into independent streams for side, pose, implants and
detector, so switching implants off leaves the pose and the ground truth unchanged), and with
``--phantom`` its anatomy from phantom number ``i // group`` (seed derived from (seed, i // group)).
So the output never depends on the number of workers, the order of work or interruptions.

Directory format (read by the network trainer)::

    DIR/manifest.json               {"generator_version", "settings", "n", "format", ...}
    DIR/samples/000123.png          uint8 image (H, W)
    DIR/samples/000123_head.png     uint8 femoral-head outline target, 0 or 255
    DIR/samples/000123_femur.png    uint8 proximal-femur outline target, 0 or 255
    DIR/samples/000123.json         geometry, head_circle, contour, points, visible, side, other_femurs,
                                    implants, polarity, detector, seed (written LAST: the completion marker)

Crash safety: every file is written to a temporary name and renamed; the JSON goes last. A sample is
complete when all its files exist and its JSON parses. A re-run with the same arguments skips complete
samples and re-renders the rest (a deleted or damaged file included), byte-identical to an uninterrupted
run (deterministic rendering and PNG encoding).

Scaling out: because a sample is a pure function of (settings, i), a distributed engine only has to map
:func:`generate_range` (or :func:`render_and_write`) over index ranges, e.g. ``dask.bag.from_sequence(
chunks).map(...)`` or ``ray.remote(generate_range)``, all writing into one shared directory (or object
store prefix); no coordination is needed beyond the manifest written once up front.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import files

GENERATOR_VERSION = "deepmorph-dataset/1"
TARGETS = ("annotated", "all")  # whose head/femur masks a sample's targets hold (``DatasetSettings.targets``)
FORMAT = {
    "image": "samples/{i:06d}.png",
    "head_mask": "samples/{i:06d}_head.png",
    "femur_mask": "samples/{i:06d}_femur.png",
    "annotation": "samples/{i:06d}.json",
    "frames": "geometry in LPS mm; image points (u, v) = (column, row) px, pixel centres at integers",
}
SIDES = ("right", "left")
MAX_CUT_FRACTION = 0.01  # poses whose rays cross the CT's axial end faces inside the body more often are redrawn


@dataclasses.dataclass
class DatasetSettings:
    """Everything that determines the samples' content (not ``n``, not ``workers``)."""

    source: str = "phantom"  # "phantom" | "ct"
    ct: str | None = None  # user CT (NRRD/NIfTI/MHA/DICOM folder)
    mesh: str | None = None  # femur surface mesh (LPS mm) or label map
    mesh_space: str | None = None  # the mesh file's frame: "LPS" | "RAS" (None: LPS, or a legacy .vtk's SPACE header)
    landmarks: str | None = None  # Slicer markups JSON with the femur's named landmarks
    side: str | None = None  # femur side of a user CT; None = inferred
    size: int = 256  # detector width = height (px)
    implants: float = 0.5  # probability of an implant construct per sample (tools: half of it)
    seed: int = 0
    group: int = 48  # samples per phantom (--phantom)
    phantom_spacing_mm: float = 1.5  # voxel size of generated phantoms
    detector: str = "realistic"  # "realistic" | "plain" (the paper's display, no noise)
    p_bone_bright: float = 0.25  # share of bone-bright (radiograph-like) images
    display_window: str = "centre"  # "centre" (C-arm brightness control) | "anatomy" (also covers the whole body)
    targets: str = "annotated"  # head/femur masks of the annotated femur only, or of every femur in view ("all")
    n_points: int = 64  # corresponding contour points
    band_px: float = 2.0  # outline target band width (px)
    device: str = "auto"  # DRR device: "auto" | "cpu" | "cuda" (results agree to float tolerance, not bytes)
    input_digest: str | None = None  # sha256 over the user input files (filled in by prepare)

    def validate(self) -> None:
        if self.source not in ("phantom", "ct"):
            raise ValueError(f"source must be 'phantom' or 'ct', got {self.source!r}.")
        if self.source == "ct" and not (self.ct and self.mesh):
            raise ValueError("A CT dataset needs both --ct CT and --mesh MESH (the femur surface or label map).")
        if not 32 <= int(self.size) <= 2048:
            raise ValueError(f"--size must lie in 32-2048 px, got {self.size}.")
        if not 0.0 <= float(self.implants) <= 1.0:
            raise ValueError(f"--implants is a probability in [0, 1], got {self.implants}.")
        if not 0.0 <= float(self.p_bone_bright) <= 1.0:
            raise ValueError(f"--p-bone-bright is a share in [0, 1], got {self.p_bone_bright}.")
        from .detector import DISPLAY_WINDOWS

        if self.display_window not in DISPLAY_WINDOWS:
            raise ValueError(f"--display-window must be one of {', '.join(DISPLAY_WINDOWS)}, "
                             f"got {self.display_window!r}.")
        if self.targets not in TARGETS:
            raise ValueError(f"--targets must be one of {', '.join(TARGETS)}, got {self.targets!r}.")
        if int(self.group) < 1:
            raise ValueError(f"--group must be >= 1, got {self.group}.")
        if self.detector not in ("realistic", "plain"):
            raise ValueError(f"--detector must be 'realistic' or 'plain', got {self.detector!r}.")
        if self.mesh_space not in (None, "LPS", "RAS"):
            raise ValueError(f"--mesh-space must be LPS or RAS, got {self.mesh_space!r}.")
        if self.side not in (None, "right", "left"):
            raise ValueError(f"--side must be 'right' or 'left', got {self.side!r}.")
        if not 0.5 <= float(self.phantom_spacing_mm) <= 3.0:
            raise ValueError(f"--phantom-spacing must lie in 0.5-3 mm, got {self.phantom_spacing_mm}.")
        if int(self.seed) < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}.")
        from .drr import resolve_device

        resolve_device(self.device)  # ValueError naming the devices there are, before the manifest stores it

    def identity(self) -> dict:
        """The settings that define sample content, as stored in the manifest (paths made absolute)."""
        d = dataclasses.asdict(self)
        for key, before in (("display_window", "centre"), ("targets", "annotated"), ("mesh_space", None)):
            if d[key] == before:  # the default before the setting existed: older manifests still match
                del d[key]
        for k in ("ct", "mesh", "landmarks"):
            if d[k] is not None:
                d[k] = str(Path(d[k]).resolve())
        return d


# --- scenes: what a sample is rendered from ---------------------------------------------------------
@dataclasses.dataclass
class FemurScene:
    side: str
    mesh: object  # vtkPolyData, LPS mm
    landmarks: dict  # name -> (3,) LPS mm
    head_radius_mm: float
    shaft_radius_mm: float | None


@dataclasses.dataclass
class Scene:
    mu: object  # Volume of attenuation (1/mm)
    femurs: dict  # side -> FemurScene
    phantom_seed: int | None = None
    coverage: "ScanCoverage | None" = None

    def __post_init__(self):
        if self.coverage is None:
            self.coverage = ScanCoverage.from_volume(self.mu)


class ScanCoverage:
    """Where the CT's box cuts through the body (scan range ends, a body wider than the field of view).

    A ray that runs past a face of the box where the body continues shows the cut as an edge in the
    image (the thigh or the flank ends abruptly). :meth:`cut_fraction` estimates the share of such rays
    for a pose on a coarse pixel grid, looking at the faces roughly parallel to the beam (crossing the
    faces that face the beam only shortens every ray alike).
    """

    def __init__(self, lps_to_ijk: np.ndarray, direction: np.ndarray, shape_ijk: tuple, faces: dict):
        self.m = lps_to_ijk
        self.direction = np.asarray(direction, float)  # columns: LPS directions of the index axes
        self.shape = tuple(int(x) for x in shape_ijk)
        self.faces = faces  # axis -> (mask at index 0, mask at index n - 1), bool over the other axes in order

    @classmethod
    def from_volume(cls, mu, body_mu: float | None = None) -> "ScanCoverage":
        from .implants import default_mu_water

        if body_mu is None:
            body_mu = 0.5 * default_mu_water()  # fat and muscle (~water) count as body, air does not
        vol = np.asarray(mu.data).transpose(2, 1, 0)  # [i, j, k]
        faces = {a: (np.take(vol, 0, axis=a) > body_mu, np.take(vol, vol.shape[a] - 1, axis=a) > body_mu) for a in range(3)}
        return cls(mu.lps_to_ijk(), mu.direction, vol.shape, faces)

    def cut_fraction(self, geometry, grid: int = 24, samples: int = 32) -> float:
        """Share of detector rays (a grid x grid lattice) that pass beyond a box face where the body
        continues (the face's body mask extruded outwards): they show the cut edge."""
        w, h = geometry.width_px, geometry.height_px
        uu, vv = np.meshgrid(np.linspace(0, w - 1, grid), np.linspace(0, h - 1, grid))
        pix = geometry.pixel_positions_lps(uu.ravel(), vv.ravel())
        m = self.m
        s = m[:3, :3] @ geometry.source_lps + m[:3, 3]
        d = pix @ m[:3, :3].T + m[:3, 3] - s  # ray p(t) = s + t d, t in [0, 1] (index space)
        beam = geometry.axes()[2]
        along_beam = int(np.argmax(np.abs(beam @ self.direction)))
        cut = np.zeros(len(d), bool)
        for a in range(3):
            if a == along_beam:
                continue
            cut |= self._cut_rays(s, d, a, samples)
        return float(cut.mean())

    def _cut_rays(self, s, d, a, samples):
        o0, o1 = [x for x in range(3) if x != a]
        lo = np.zeros(len(d))
        hi = np.ones(len(d))
        for ax in (o0, o1):  # the part of each ray inside the box's extent across the other two axes
            n_ax = self.shape[ax]
            with np.errstate(divide="ignore", invalid="ignore"):
                t0 = (-0.5 - s[ax]) / d[:, ax]
                t1 = (n_ax - 0.5 - s[ax]) / d[:, ax]
            flat = np.abs(d[:, ax]) < 1e-12
            inside = bool(-0.5 <= s[ax] <= n_ax - 0.5)
            lo = np.maximum(lo, np.where(flat, 0.0 if inside else 2.0, np.minimum(t0, t1)))
            hi = np.minimum(hi, np.where(flat, 1.0 if inside else -1.0, np.maximum(t0, t1)))
        t = lo[:, None] + (hi - lo)[:, None] * ((np.arange(samples) + 0.5) / samples)[None, :]
        p = s[None, None, :] + t[..., None] * d[:, None, :]
        first, last = self.faces[a]
        i0 = np.clip(np.rint(p[..., o0]).astype(np.int64), 0, first.shape[0] - 1)
        i1 = np.clip(np.rint(p[..., o1]).astype(np.int64), 0, first.shape[1] - 1)
        below = p[..., a] < -0.5
        above = p[..., a] > self.shape[a] - 0.5
        hit = (below & first[i0, i1]) | (above & last[i0, i1])
        return np.any(hit, axis=1) & (hi > lo)


def phantom_seed(seed: int, group: int) -> int:
    """Seed of phantom number ``group`` of a dataset with master seed ``seed`` (uint32)."""
    return int(np.random.SeedSequence([int(seed), int(group), 0x50484E54]).generate_state(1)[0])


def _mesh_points(mesh) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(mesh.GetPoints().GetData()).astype(float)


def _femur_scene(side, mesh, landmarks, head_radius_mm) -> FemurScene:
    from .implants import estimate_shaft_radius

    lm = {k: np.asarray(v, float).reshape(3) for k, v in landmarks.items()}
    shaft_r = estimate_shaft_radius(_mesh_points(mesh), lm, default=None)
    return FemurScene(side, mesh, lm, float(head_radius_mm), shaft_r)


def make_phantom_scene(settings: DatasetSettings, group: int) -> Scene:
    from . import drr, phantom

    ps = phantom_seed(settings.seed, group)
    ph = phantom.make_phantom(ps, sides=SIDES, spacing_mm=float(settings.phantom_spacing_mm))
    mu = ph.ct.with_data(drr.hu_to_mu(ph.ct.data).astype(np.float32))
    femurs = {s: _femur_scene(s, f.mesh, f.landmarks, f.head_radius_mm) for s, f in ph.femurs.items()}
    return Scene(mu, femurs, ps)


def load_ct_scene(settings: DatasetSettings, warn: bool = False) -> Scene:
    """Read and check a user's CT, femur (mesh or label map) and landmarks (ValueError naming the problem).

    The femur is loaded with :func:`femur.load_femur`: missing landmarks are estimated from the mesh,
    the side is checked against the anatomy, and a mesh outside the CT is refused.
    """
    from . import drr
    from .femur import load_femur
    from .volume import hu_warning, read_volume

    ct = read_volume(settings.ct)
    if warn and (warning := hu_warning(ct, settings.ct)):  # ``warn``: once, before the work (``prepare``)
        print(f"deepmorph dataset: warning: {warning}", file=sys.stderr)
    femur = load_femur(settings.mesh, landmarks=settings.landmarks, side=settings.side, ct=ct,
                       coordinate_system=settings.mesh_space)
    mu = ct.with_data(drr.hu_to_mu(ct.data).astype(np.float32))
    return Scene(mu, {femur.side: _femur_scene(femur.side, femur.mesh, femur.landmarks, femur.head_radius_mm)}, None)


# --- one sample -----------------------------------------------------------------------------------------
def sample_streams(seed: int, index: int) -> dict:
    """Independent random generators of sample ``index``: side, pose, implants, detector."""
    streams = np.random.SeedSequence([int(seed), int(index)]).spawn(4)
    return {k: np.random.default_rng(s) for k, s in zip(("side", "pose", "implants", "detector"), streams)}


def render_sample(scene: Scene, settings: DatasetSettings, index: int, return_arrays: bool = False) -> dict:
    """Render sample ``index`` from ``scene``: image, masks (uint8 0/255) and its JSON annotation."""
    from . import drr, projection
    from .detector import apply_detector, field_mask, plain_params, sample_detector
    from .implants import metal_line_integrals, sample_implants
    from .poses import sample_pose

    rng = sample_streams(settings.seed, index)
    sides = sorted(scene.femurs)
    side = sides[int(rng["side"].integers(len(sides)))]
    femur = scene.femurs[side]
    geometry = sample_pose(rng["pose"], femur.landmarks, int(settings.size), accept=lambda g: scene.coverage.cut_fraction(g) <= MAX_CUT_FRACTION)
    a_body = np.asarray(drr.line_integrals(scene.mu, geometry, device=settings.device), dtype=np.float32)
    implants = sample_implants(rng["implants"], femur.landmarks, femur.head_radius_mm, float(settings.implants), femur.shaft_radius_mm)
    a_metal = metal_line_integrals(implants, geometry) if implants else None
    a = a_body + a_metal if implants else a_body
    gt = projection.project_ground_truth(
        femur.mesh, femur.landmarks, femur.head_radius_mm, geometry, n_points=int(settings.n_points), band_px=float(settings.band_px)
    )
    others = other_femurs_in_view(scene, side, geometry, band_px=float(settings.band_px))
    if settings.detector == "plain":
        params = plain_params()
        image = np.asarray(drr.to_display(a), dtype=np.uint8)
    else:
        params = sample_detector(rng["detector"], float(settings.p_bone_bright), geometry,
                                 window=settings.display_window)
        image = apply_detector(a, params, rng["detector"], metal=None if a_metal is None else a_metal > 0.5)
    exposed = field_mask(image.shape, params) > 0.5
    head_mask = (np.asarray(gt.head_target) > 0) & exposed
    femur_mask = (np.asarray(gt.femur_target) > 0) & exposed
    if settings.targets == "all":  # a wide view's other femur is a femur too, not background
        for _, other in others:
            head_mask |= (np.asarray(other.head_target) > 0) & exposed
            femur_mask |= (np.asarray(other.femur_target) > 0) & exposed
    points = np.asarray(gt.points, float)
    visible = np.asarray(gt.visible, bool).copy()
    if len(points):
        iu = np.clip(np.rint(points[:, 0]).astype(int), 0, image.shape[1] - 1)
        iv = np.clip(np.rint(points[:, 1]).astype(int), 0, image.shape[0] - 1)
        visible &= exposed[iv, iu]
    annotation = {
        "index": int(index),
        "seed": [int(settings.seed), int(index)],
        "generator_version": GENERATOR_VERSION,
        "geometry": geometry.to_dict(),
        "side": side,
        "head_circle": None if gt.head_circle is None else [round(float(x), 3) for x in gt.head_circle],
        "contour": _r(np.asarray(gt.contour, float)),
        "points": _r(points),
        "visible": [bool(x) for x in visible],
        "landmarks_uv": {k: _r(np.asarray(v, float)) for k, v in sorted(getattr(gt, "landmarks_uv", {}).items())},
        "anchor_indices": {k: int(v) for k, v in sorted(getattr(gt, "anchor_indices", {}).items())},
        "anchors_in_order": bool(getattr(gt, "anchors_in_order", True)),
        "other_femurs": [record for record, _ in others],
        "implants": [imp.to_dict() for imp in implants],
        "polarity": params.polarity,
        "detector": params.to_dict(),
        "source": {"kind": settings.source, "phantom_seed": scene.phantom_seed},
    }
    out = {
        "image": image,
        "head_mask": (head_mask * 255).astype(np.uint8),
        "femur_mask": (femur_mask * 255).astype(np.uint8),
        "annotation": annotation,
    }
    if return_arrays:
        out.update(line_integrals=a, body_line_integrals=a_body, ground_truth=gt, geometry=geometry, implants=implants)
    return out


def other_femurs_in_view(scene: Scene, side: str, geometry, band_px: float = 2.0) -> list[tuple[dict, object]]:
    """Ground truth of the scene's other femurs (a phantom has both) that project into the image: a wide view
    shows both hips, and a fit on the other femur is a femur found, not a miss. Each: (record, ``GroundTruth``);
    the record holds ``side``, ``head_circle`` (cx, cy, r) px or None and ``contour`` (closed outline polygon, px),
    as for the annotated femur; the ``GroundTruth`` its targets (``band_px`` wide outlines)."""
    from . import projection

    w, h = int(geometry.width_px), int(geometry.height_px)
    out = []
    for other in sorted(s for s in scene.femurs if s != side):
        f = scene.femurs[other]
        uv = geometry.project(_mesh_points(f.mesh))  # cheap test first (most views show one hip only): no vertex
        m = 8.0  # within 8 px of the image (mesh edges are a few px long), no outline in it
        if not np.any((uv[:, 0] >= -m) & (uv[:, 0] <= w + m) & (uv[:, 1] >= -m) & (uv[:, 1] <= h + m)):
            continue
        try:
            gt = projection.project_ground_truth(f.mesh, f.landmarks, f.head_radius_mm, geometry, n_points=16,
                                                 band_px=band_px)
        except ValueError:  # behind the source or smaller than a pixel: not in view
            continue
        contour = np.asarray(gt.contour, float)
        inside = (contour[:, 0] >= -0.5) & (contour[:, 0] <= w - 0.5) & (contour[:, 1] >= -0.5) & (contour[:, 1] <= h - 0.5)
        if not inside.any():
            continue
        out.append(({"side": other,
                     "head_circle": None if gt.head_circle is None else [round(float(x), 3) for x in gt.head_circle],
                     "contour": _r(contour)}, gt))
    return out


def _r(arr: np.ndarray, decimals: int = 2):
    return np.round(np.asarray(arr, float), decimals).tolist()


def sample_paths(out_dir, index: int) -> dict:
    base = Path(out_dir) / "samples"
    return {k: base / v.split("/")[1].format(i=index) for k, v in FORMAT.items() if k != "frames"}


def is_complete(out_dir, index: int) -> bool:
    """A sample is complete when all its files exist and its JSON (written after the PNGs) parses."""
    paths = sample_paths(out_dir, index)
    if not all(p.is_file() for p in paths.values()):
        return False
    try:
        json.loads(paths["annotation"].read_bytes())
    except ValueError:  # cut short or overwritten: rendered again (samples are deterministic)
        return False
    return True


def write_sample(out_dir, index: int, sample: dict) -> None:
    """Atomically write the target PNGs, the image PNG, then the JSON (the completion marker)."""
    paths = sample_paths(out_dir, index)
    for key in ("head_mask", "femur_mask", "image"):  # an image file implies its targets exist
        files.write_png(paths[key], sample[key])
    text = json.dumps(sample["annotation"], sort_keys=True, separators=(",", ":"))
    files.atomic_write_text(paths["annotation"], text + "\n")  # compact: contours are long


# --- workers --------------------------------------------------------------------------------------------
class SceneCache:
    """Per-process scenes: the user's CT once, or the last few phantoms (LRU, by group)."""

    def __init__(self, settings: DatasetSettings, max_phantoms: int = 2):
        self.settings = settings
        self.max_phantoms = max_phantoms
        self._phantoms: collections.OrderedDict = collections.OrderedDict()
        self._ct_scene = None

    def scene_for(self, index: int) -> Scene:
        if self.settings.source == "ct":
            if self._ct_scene is None:
                self._ct_scene = load_ct_scene(self.settings)
            return self._ct_scene
        group = int(index) // int(self.settings.group)
        if group in self._phantoms:
            self._phantoms.move_to_end(group)
            return self._phantoms[group]
        scene = make_phantom_scene(self.settings, group)
        self._phantoms[group] = scene
        while len(self._phantoms) > self.max_phantoms:
            self._phantoms.popitem(last=False)
        return scene


def generate_range(settings: DatasetSettings, out_dir, indices, cache: SceneCache | None = None) -> list[int]:
    """Render and write the incomplete samples among ``indices``; returns the indices written."""
    cache = cache or SceneCache(settings)
    written = []
    for i in indices:
        if is_complete(out_dir, i):
            continue
        write_sample(out_dir, i, render_sample(cache.scene_for(i), settings, i))
        written.append(int(i))
    return written


_WORKER: dict = {}


def _init_worker(settings_dict: dict, out_dir: str, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts workers down
    _exit_with_parent()
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    settings = DatasetSettings(**settings_dict)
    _WORKER.update(settings=settings, out=out_dir, cache=SceneCache(settings))


def _exit_with_parent() -> None:
    """Worker side: end this process as soon as the process that started it is gone. A parent killed without the
    chance to stop its workers (SIGKILL, the OOM killer) would otherwise leave them waiting for work forever,
    each holding its phantom in memory. Samples in flight are lost, which is safe (atomic renames)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        parent.join()  # returns when the parent has exited
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _work(indices: list[int]) -> list[int]:
    return generate_range(_WORKER["settings"], _WORKER["out"], indices, _WORKER["cache"])


# --- orchestration --------------------------------------------------------------------------------------
def file_digest(paths) -> str:
    """sha256 over the bytes of the given files (folders: all files inside, sorted)."""
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        items = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in items:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def prepare(settings: DatasetSettings, out_dir, n: int) -> list[int]:
    """Check inputs and the output folder, write/verify the manifest; return the indices still to do.

    Raises ValueError (before any rendering) for bad inputs, a folder that is not a dataset, or a
    dataset made with other settings.
    """
    settings.validate()
    if int(n) < 1:
        raise ValueError(f"--n must be >= 1, got {n}.")
    files.check_output_path(out_dir, "--out")
    if settings.source == "ct":
        for label, p in (("CT", settings.ct), ("mesh", settings.mesh), ("landmarks", settings.landmarks)):
            if p is not None and not Path(p).exists():
                raise FileNotFoundError(f"{label} not found: {p}")
        settings.input_digest = file_digest([settings.ct, settings.mesh, settings.landmarks])
        load_ct_scene(settings, warn=True)  # full check of the inputs before any work
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    identity = settings.identity()
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except ValueError:
            raise ValueError(f"{manifest_path} is not valid JSON; this folder was not written by 'deepmorph dataset'.") from None
        diffs = []
        if old.get("generator_version") != GENERATOR_VERSION:
            diffs.append(f"generator_version: {old.get('generator_version')} -> {GENERATOR_VERSION}")
        old_settings = old.get("settings", {})
        for k in sorted(set(old_settings) | set(identity)):
            if old_settings.get(k) != identity.get(k):
                diffs.append(f"{k}: {old_settings.get(k)!r} -> {identity.get(k)!r}")
        if diffs:
            raise ValueError(
                f"{out} already holds a dataset made with other settings ({'; '.join(diffs)}). Re-run with the "
                "original arguments to resume it, or choose a new --out folder."
            )
        if int(n) < int(old.get("n", 0)):
            raise ValueError(
                f"{out} was started with --n {old.get('n')}; --n {n} would leave extra samples. Use --n >= {old.get('n')}."
            )
    elif out.exists() and any(p.name != ".DS_Store" for p in out.iterdir()):
        raise ValueError(f"{out} exists, is not empty and has no manifest.json: choose an empty or new --out folder.")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for tmp in (out / "samples").glob(".*.tmp"):
        tmp.unlink(missing_ok=True)  # leftovers of a killed run (never renamed, so never complete)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "settings": identity,
        "n": int(n),
        "format": FORMAT,
        "pose_sampler": _pose_defaults(),
        "description": "DeepMorph training set: simulated fluoroscopy of the proximal femur with outline targets.",
    }
    if not manifest_path.exists() or json.loads(manifest_path.read_text()) != json.loads(json.dumps(manifest, default=str)):
        files.atomic_write_json(manifest_path, manifest)
    return [i for i in range(int(n)) if not is_complete(out, i)]


def _pose_defaults() -> dict:
    from .poses import PoseSampler

    return PoseSampler().to_dict()


def plan_chunks(todo: list[int], group: int, workers: int, chunk: int = 4) -> list[list[int]]:
    """Split indices into small chunks ordered so that concurrent workers tend to work on different
    phantom groups (each worker then generates each phantom once) while Ctrl-C stays responsive."""
    by_group: dict[int, list[int]] = collections.OrderedDict()
    for i in todo:
        by_group.setdefault(i // group, []).append(i)
    groups = list(by_group.values())
    if len(groups) < workers:  # few groups: let workers share them
        chunk = max(1, min(chunk, -(-len(todo) // (2 * workers))))
    out = []
    for start in range(0, len(groups), max(workers, 1)):
        window = [[g[k : k + chunk] for k in range(0, len(g), chunk)] for g in groups[start : start + workers]]
        for step in range(max(len(w) for w in window)):
            for w in window:
                if step < len(w):
                    out.append(w[step])
    return out


def generate(settings: DatasetSettings, out_dir, n: int, workers: int = 1, progress: bool = True) -> dict:
    """Generate (or resume) a dataset of ``n`` samples in ``out_dir`` with ``workers`` processes.

    Returns {"written", "skipped", "seconds", "samples_per_s"}. Ctrl-C stops cleanly: finished samples
    are kept, in-flight ones are discarded, and a re-run resumes.
    """
    t0 = time.perf_counter()
    if int(workers) < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}.")
    todo = prepare(settings, out_dir, n)
    skipped = int(n) - len(todo)
    workers = int(workers)
    bar = _progress(total=int(n), initial=skipped, enabled=progress)
    written = 0
    try:
        if not todo:
            pass
        elif workers == 1:
            cache = SceneCache(settings)
            for chunk in plan_chunks(todo, int(settings.group), 1):
                written += len(generate_range(settings, out_dir, chunk, cache))
                bar.update(len(chunk))
        else:
            written = _generate_parallel(settings, out_dir, todo, workers, bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return {"written": written, "skipped": skipped, "seconds": seconds, "samples_per_s": written / seconds if seconds > 0 else 0.0}


def _generate_parallel(settings, out_dir, todo, workers, bar) -> int:
    chunks = plan_chunks(todo, int(settings.group), workers)
    ctx = multiprocessing.get_context("spawn")
    ex = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(dataclasses.asdict(settings), str(out_dir), 1)
    )
    written = 0
    pending = collections.deque(chunks)
    running = {}
    try:
        while pending or running:
            while pending and len(running) < 2 * workers:
                c = pending.popleft()
                running[ex.submit(_work, c)] = c
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                chunk = running.pop(fut)
                written += len(fut.result())
                bar.update(len(chunk))
    except BaseException:
        # Ctrl-C or a failed sample: stop at once. Workers are terminated mid-sample; that is safe
        # because files only appear by atomic rename and a sample counts as done only with its JSON.
        for fut in running:
            fut.cancel()
        _terminate_workers(ex)
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return written


def _terminate_workers(ex: cf.ProcessPoolExecutor) -> None:
    terminate = getattr(ex, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="sample", desc="dataset", dynamic_ncols=True)


# --- preview -------------------------------------------------------------------------------------------
def contact_sheet(out_dir, indices=None, cols: int = 6, tile_px: int = 256) -> np.ndarray:
    """RGB (H, W, 3) uint8 grid of samples with their ground truth drawn on top: head circle (green),
    contour (red), corresponding points (yellow = visible, blue = hidden), outline masks (cyan tint)."""
    from PIL import Image, ImageDraw

    out_dir = Path(out_dir)
    if indices is None:
        indices = sorted(int(p.stem) for p in (out_dir / "samples").glob("[0-9]*.json"))
    indices = list(indices)
    rows = max(1, -(-len(indices) // cols))
    sheet = Image.new("RGB", (cols * tile_px, rows * tile_px), (40, 40, 40))
    for k, i in enumerate(indices):
        paths = sample_paths(out_dir, i)
        ann = json.loads(paths["annotation"].read_text())
        img = np.asarray(Image.open(paths["image"]).convert("L"))
        rgb = np.repeat(img[..., None], 3, axis=2).astype(np.float32)
        for key, colour in (("femur_mask", (0, 255, 255)), ("head_mask", (0, 255, 0))):
            m = np.asarray(Image.open(paths[key])) > 0
            rgb[m] = 0.6 * rgb[m] + 0.4 * np.asarray(colour, np.float32)
        tile = Image.fromarray(rgb.astype(np.uint8))
        scale = tile_px / img.shape[1]
        tile = tile.resize((tile_px, int(round(img.shape[0] * scale))))
        draw = ImageDraw.Draw(tile)
        contour = [(x * scale, y * scale) for x, y in ann["contour"]]
        if len(contour) > 2:
            draw.line(contour + contour[:1], fill=(255, 60, 60), width=1)
        if ann["head_circle"]:
            cx, cy, r = (v * scale for v in ann["head_circle"])
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(60, 255, 60))
        for (x, y), vis in zip(ann["points"], ann["visible"]):
            c = (255, 255, 0) if vis else (80, 80, 255)
            draw.ellipse([x * scale - 1.5, y * scale - 1.5, x * scale + 1.5, y * scale + 1.5], fill=c)
        label = f"{i} {ann['side'][0]} {','.join(x['type'][:4] for x in ann['implants'])}"
        draw.text((3, 3), label, fill=(255, 128, 0))
        sheet.paste(tile, ((k % cols) * tile_px, (k // cols) * tile_px))
    return np.asarray(sheet)
