"""Crash-safe file writing: every file appears whole or not at all (temporary file + rename)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


LOCK_BYTE = 1 << 20  # Windows locks a byte range: one byte far past the process id, which stays readable


def lock_folder(folder: str | os.PathLike, command: str):
    """Take ``folder``'s lock file (``.deepmorph.lock``) for this process, so that two runs of ``command`` never write
    the same folder at once: ValueError (naming the other run's process id) when another process holds it. Returns
    the open lock file: the lock lasts until it is closed or the process ends. ``fcntl.flock`` on POSIX,
    ``msvcrt.locking`` of byte ``LOCK_BYTE`` on Windows."""
    path = Path(folder) / ".deepmorph.lock"
    handle = open(path, "a+")
    try:
        _lock_nonblocking(handle)
    except OSError:
        handle.seek(0)
        other = handle.read().strip() or "unknown"
        handle.close()
        raise ValueError(f"another {command} (process {other}) is writing to {folder}; wait for it to finish, or "
                         "give another output folder.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _lock_nonblocking(handle) -> None:
    """Exclusive lock of the open file ``handle``; OSError when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        handle.seek(LOCK_BYTE)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def check_output_path(path: str | os.PathLike, option: str = "--out", folder: bool = True) -> Path:
    """Raise ValueError unless ``path`` can be written as a folder (``folder``) or a file: nothing in the way (a file
    where a folder must be, a folder where the file must be) and the nearest existing folder writable. Cheap: call it
    before long work."""
    path = Path(path)
    if not folder and path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name (or a path under the folder).")
    for p in (path, *path.parents) if folder else path.parents:
        if not p.exists():
            continue
        if not p.is_dir():
            where = "is a file" if p == path else f"lies under {p}, which is a file"
            raise ValueError(f"{option} {path} {where}, not a folder; choose another {option} path "
                             "(or move the file away).")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {path}: no permission to write in {p}; choose a folder you can write to.")
        break
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """JSON with sorted keys and numpy values converted, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) grey or (H, W, 3|4) colour array as PNG (deterministic bytes)."""
    import io

    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"PNG export expects uint8 pixels, got {image.dtype}; scale to 0-255 first.")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(image))


def read_image_2d(path: str | os.PathLike) -> np.ndarray:
    """Read a 2-D X-ray (PNG, JPEG, TIFF, DICOM, NRRD...) as float32 (H, W); colour is averaged to grey."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        arr = read_with_pillow(path)
        if arr is None:
            raise ValueError(f"Cannot read image {path}: not a readable PNG/JPEG/TIFF/DICOM/NRRD file "
                             f"({exc}).") from None
    else:
        arr = grey_of(sitk.GetArrayFromImage(image).astype(np.float32), image.GetNumberOfComponentsPerPixel())
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"Image {path} is not 2-D after squeezing (shape {arr.shape}); give one X-ray frame.")
    check_finite(arr, f"Image {path}")
    return arr


def grey_of(pixels: np.ndarray, components: int) -> np.ndarray:
    """Grey values of ``pixels`` with ``components`` values per pixel (last axis when > 1): grey as it is, grey +
    alpha -> the grey, RGB(A) -> the mean of R, G and B (the alpha is not image)."""
    if components == 1:
        return pixels
    return pixels[..., 0] if components == 2 else pixels[..., :3].mean(axis=-1)


def read_with_pillow(path: Path) -> np.ndarray | None:
    """float32 grey (``grey_of``) of a picture file that SimpleITK cannot read but Pillow can (a PNG of grey + alpha),
    else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            bands = len(img.getbands())
            arr = np.asarray(img).astype(np.float32)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return grey_of(arr, bands)


def check_finite(image: np.ndarray, what: str = "The image") -> None:
    """Raise ValueError when ``image`` has NaN/infinite pixels, saying how many and what to do."""
    finite = np.isfinite(image)
    if not finite.all():
        raise ValueError(f"{what} contains NaN/infinite pixels ({int(finite.size - finite.sum())} of {finite.size}); "
                         "replace them (e.g. with the image's background value) or crop them away, then try again.")


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Not JSON serialisable: {type(obj).__name__}")
