"""Surface meshes (vtkPolyData, LPS mm): reading, writing, numpy conversion, surfaces from volumes.

Meshes are kept in the LPS world frame like every other DeepMorph object. Files written by Slicer >= 4.11
store models in LPS as well; a mesh in RAS (older Slicer files, or a ``SPACE=RAS`` header in a legacy
.vtk file) is flipped on reading when ``coordinate_system="RAS"`` is given (or detected from the header).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .volume import Volume

MESH_SUFFIXES = (".vtp", ".vtk", ".stl", ".ply", ".obj")


def _vtk():
    import vtk  # noqa: F401  (imported lazily: vtk is heavy)

    return vtk


def mesh_arrays(poly) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) float64 mm and triangles (M, 3) int64 of a surface (polygons are triangulated)."""
    vtk = _vtk()
    from vtk.util.numpy_support import vtk_to_numpy

    if poly is None or poly.GetNumberOfPoints() == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    polys = poly.GetPolys()
    if polys.GetNumberOfCells() and polys.GetMaxCellSize() > 3 or poly.GetNumberOfStrips():
        tri = vtk.vtkTriangleFilter()
        tri.SetInputData(poly)
        tri.PassLinesOff()
        tri.PassVertsOff()
        tri.Update()
        poly = tri.GetOutput()
        polys = poly.GetPolys()
    verts = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    if polys.GetNumberOfCells() == 0:
        return verts, np.zeros((0, 3), np.int64)
    conn = vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64)
    offs = vtk_to_numpy(polys.GetOffsetsArray()).astype(np.int64)
    sizes = np.diff(offs)
    if not np.all(sizes == 3):  # drop degenerate (line/point) cells
        keep = np.nonzero(sizes == 3)[0]
        faces = np.stack([conn[offs[keep] + i] for i in range(3)], axis=1)
    else:
        faces = conn.reshape(-1, 3)
    return verts, faces


def polydata_from_arrays(vertices: np.ndarray, faces: np.ndarray):
    """vtkPolyData from vertices (N, 3) mm and triangles (M, 3)."""
    vtk = _vtk()
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray

    v = np.ascontiguousarray(vertices, dtype=np.float64)
    f = np.ascontiguousarray(faces, dtype=np.int64)
    pts = vtk.vtkPoints()
    pts.SetData(numpy_to_vtk(v, deep=True))
    cells = vtk.vtkCellArray()
    offsets = np.arange(0, 3 * len(f) + 1, 3, dtype=np.int64)
    cells.SetData(numpy_to_vtkIdTypeArray(offsets, deep=True), numpy_to_vtkIdTypeArray(f.ravel(), deep=True))
    poly = vtk.vtkPolyData()
    poly.SetPoints(pts)
    poly.SetPolys(cells)
    return poly


def transform_points(poly, matrix4: np.ndarray):
    """A copy of ``poly`` with its points mapped by a 4x4 matrix (row-vector convention inside); stored normals are
    dropped (they would no longer match the surface)."""
    vtk = _vtk()
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    out = vtk.vtkPolyData()
    out.DeepCopy(poly)
    p = vtk_to_numpy(out.GetPoints().GetData()).astype(np.float64)
    m = np.asarray(matrix4, float)
    q = p @ m[:3, :3].T + m[:3, 3]
    pts = vtk.vtkPoints()
    pts.SetData(numpy_to_vtk(np.ascontiguousarray(q), deep=True))
    out.SetPoints(pts)
    out.GetPointData().SetNormals(None)
    out.GetCellData().SetNormals(None)
    return out


def _image_from_volume(volume: Volume, dtype=None):
    vtk = _vtk()
    from vtk.util.numpy_support import numpy_to_vtk

    data = np.ascontiguousarray(volume.data if dtype is None else volume.data.astype(dtype))
    k, j, i = data.shape
    img = vtk.vtkImageData()
    img.SetDimensions(i, j, k)
    img.SetSpacing(1.0, 1.0, 1.0)
    img.SetOrigin(0.0, 0.0, 0.0)
    img.GetPointData().SetScalars(numpy_to_vtk(data.ravel(), deep=True))
    return img


def finish_surface(poly, smooth_iterations: int = 10, pass_band: float = 0.1, target_triangles: int | None = 5000):
    """Clean, smooth (windowed sinc), decimate (quadric) and orient a raw isosurface."""
    vtk = _vtk()
    clean = vtk.vtkCleanPolyData()
    clean.SetInputData(poly)
    clean.Update()
    out = clean.GetOutput()
    if smooth_iterations > 0:
        sm = vtk.vtkWindowedSincPolyDataFilter()
        sm.SetInputData(out)
        sm.SetNumberOfIterations(int(smooth_iterations))
        sm.SetPassBand(float(pass_band))
        sm.BoundarySmoothingOff()
        sm.FeatureEdgeSmoothingOff()
        sm.NonManifoldSmoothingOn()
        sm.NormalizeCoordinatesOn()
        sm.Update()
        out = sm.GetOutput()
    n = out.GetNumberOfPolys()
    if target_triangles and n > target_triangles:
        dec = vtk.vtkQuadricDecimation()
        dec.SetInputData(out)
        dec.SetTargetReduction(1.0 - target_triangles / n)
        dec.VolumePreservationOn()
        dec.Update()
        out = dec.GetOutput()
    nrm = vtk.vtkPolyDataNormals()
    nrm.SetInputData(out)
    nrm.SplittingOff()
    nrm.ConsistencyOn()
    nrm.AutoOrientNormalsOn()
    nrm.ComputePointNormalsOn()
    nrm.ComputeCellNormalsOff()
    nrm.Update()
    result = vtk.vtkPolyData()
    result.DeepCopy(nrm.GetOutput())
    return result


def isosurface(field: Volume, level: float = 0.0, inside: str = "below", **finish) -> "vtkPolyData":
    """Surface (LPS mm) where a scalar volume crosses ``level`` (e.g. an SDF at 0), via vtkFlyingEdges3D."""
    vtk = _vtk()
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(_image_from_volume(field, np.float32))
    fe.SetValue(0, float(level))
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.Update()
    raw = fe.GetOutput()
    if raw.GetNumberOfPolys() == 0:
        raise ValueError(f"The volume never crosses the level {level}: no surface to extract.")
    raw = transform_points(raw, field.ijk_to_lps())
    return finish_surface(raw, **finish)


def label_to_mesh(label: Volume, value: int | None = None, smooth_iterations: int = 20, pass_band: float = 0.02,
                  target_triangles: int | None = 5000):
    """Surface (LPS mm) of one label of a label map (``value`` None: all non-zero voxels).

    Uses vtkDiscreteFlyingEdges3D on a zero-padded copy (so the surface is closed at the volume's border),
    then windowed-sinc smoothing and decimation. Raises ValueError for an empty label.
    """
    vtk = _vtk()
    data = np.asarray(label.data)
    mask = data != 0 if value is None else data == value
    if not mask.any():
        what = "any non-zero voxel" if value is None else f"any voxel with value {value}"
        present = sorted(int(v) for v in np.unique(data)[:20])
        raise ValueError(f"The label map has no {what} (values present: {present}); nothing to mesh.")
    kk, jj, ii = np.nonzero(mask)
    lo = np.array([kk.min(), jj.min(), ii.min()]) - 1
    hi = np.array([kk.max(), jj.max(), ii.max()]) + 2
    crop = np.zeros(tuple(hi - lo), np.uint8)
    src = tuple(slice(max(a, 0), min(b, s)) for a, b, s in zip(lo, hi, mask.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    crop[dst] = mask[src]
    sub = Volume(crop, label.spacing, label.index_to_lps(lo[::-1].astype(float))[0], label.direction)
    fe = vtk.vtkDiscreteFlyingEdges3D()
    fe.SetInputData(_image_from_volume(sub))
    fe.SetValue(0, 1.0)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    fe.Update()
    raw = transform_points(fe.GetOutput(), sub.ijk_to_lps())
    return finish_surface(raw, smooth_iterations=smooth_iterations, pass_band=pass_band,
                          target_triangles=target_triangles)


def merge_meshes(meshes: list):
    vtk = _vtk()
    app = vtk.vtkAppendPolyData()
    for m in meshes:
        app.AddInputData(m)
    app.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(app.GetOutput())
    return out


def _legacy_space(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(512).decode("latin-1")
    except OSError:
        return None
    for tag in ("SPACE=RAS", "SPACE=LPS"):
        if tag in head:
            return tag[-3:]
    return None


def read_mesh(path: str | os.PathLike, coordinate_system: str | None = None):
    """Read a surface mesh (.vtp, .vtk, .stl, .ply, .obj) as vtkPolyData in LPS mm.

    ``coordinate_system``: "LPS" (default: Slicer's file convention since 4.11) or "RAS"; for legacy .vtk
    files a ``SPACE=RAS`` / ``SPACE=LPS`` header comment is honoured when no system is given.
    """
    vtk = _vtk()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mesh file not found: {path}")
    suffix = path.suffix.lower()
    readers = {
        ".vtp": vtk.vtkXMLPolyDataReader,
        ".vtk": vtk.vtkPolyDataReader,
        ".stl": vtk.vtkSTLReader,
        ".ply": vtk.vtkPLYReader,
        ".obj": vtk.vtkOBJReader,
    }
    if suffix not in readers:
        raise ValueError(f"Unsupported mesh format {suffix!r} ({path.name}); use one of {', '.join(MESH_SUFFIXES)}.")
    reader = readers[suffix]()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    if poly is None or poly.GetNumberOfPoints() == 0 or poly.GetNumberOfPolys() + poly.GetNumberOfStrips() == 0:
        raise ValueError(f"Mesh {path} has no surface triangles (empty or unreadable {suffix} file).")
    system = coordinate_system or (_legacy_space(path) if suffix == ".vtk" else None) or "LPS"
    system = system.upper()
    if system not in ("LPS", "RAS"):
        raise ValueError(f"coordinate_system must be 'LPS' or 'RAS', got {coordinate_system!r}.")
    out = vtk.vtkPolyData()
    out.DeepCopy(poly)
    if system == "RAS":
        out = transform_points(out, np.diag([-1.0, -1.0, 1.0, 1.0]))
    return out


def write_mesh(poly, path: str | os.PathLike) -> None:
    """Write a mesh atomically; format from the suffix (.vtp binary XML, .vtk with SPACE=LPS, .stl, .ply)."""
    vtk = _vtk()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{suffix}")
    if suffix == ".vtp":
        w = vtk.vtkXMLPolyDataWriter()
        w.SetDataModeToBinary()
    elif suffix == ".vtk":
        w = vtk.vtkPolyDataWriter()
        w.SetHeader("SPACE=LPS")
        w.SetFileTypeToBinary()
    elif suffix == ".stl":
        w = vtk.vtkSTLWriter()
        w.SetFileTypeToBinary()
    elif suffix == ".ply":
        w = vtk.vtkPLYWriter()
        w.SetFileTypeToBinary()
    else:
        raise ValueError(f"Cannot write mesh format {suffix!r}; use .vtp, .vtk, .stl or .ply.")
    w.SetFileName(str(tmp))
    w.SetInputData(poly)
    if not w.Write():
        if tmp.exists():
            tmp.unlink()
        raise ValueError(f"Could not write mesh {path}.")
    os.replace(tmp, path)
