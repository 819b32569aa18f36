"""Offscreen rendering of Slicer slice and 3D views (headless, slicer-core): screenshots and overlay tests.

Slicer's own pipeline draws the picture: a ``vtkMRMLSliceLogic`` ("Red") reslices and blends the
background / foreground volumes, and the markups displayable manager draws curves and points, exactly
as in the application. Since Slicer 5.10 the 2-D image actor belongs to the Qt view widget, so this
module adds its own ``vtkImageMapper`` + ``vtkActor2D`` (as trame-slicer does). The render window is
offscreen (EGL when available: set ``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow``); a
``vtkRenderWindowInteractor`` must be initialised on it or the markups widgets crash.

:class:`OffscreenThreeDView` does the same for a 3D view (models, markups, slices shown in 3D).
Output images are (H, W, 3) uint8 RGB with row 0 at the top (like a PNG).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SLICE_DISPLAYABLE_MANAGERS = ("vtkMRMLMarkupsDisplayableManager", "vtkMRMLModelSliceDisplayableManager")
THREED_DISPLAYABLE_MANAGERS = (
    "vtkMRMLCameraDisplayableManager",
    "vtkMRMLViewDisplayableManager",
    "vtkMRMLModelDisplayableManager",
    "vtkMRMLMarkupsDisplayableManager",
)


def _render_and_read(interactor, window) -> np.ndarray:
    import vtk
    from vtk.util import numpy_support

    interactor.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.SetInputBufferTypeToRGB()
    grabber.ReadFrontBufferOff()
    grabber.Update()
    image = grabber.GetOutput()
    width, height, _ = image.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(rgb[::-1, :, :3])


def _save_png(rgb: np.ndarray, path) -> np.ndarray:
    from DeepMorphSimulatorLib.files import write_png

    write_png(Path(path), rgb)
    return rgb


def _offscreen_window(size, renderer):
    import vtk

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)
    window.AddRenderer(renderer)
    window.SetSize(*size)
    interactor = vtk.vtkRenderWindowInteractor()  # needed by the displayable managers' widgets
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    return window, interactor


_PROBE = """
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
window.SetSize(8, 8)
window.Render()
print("OPENGL", int(window.SupportsOpenGL()), window.GetClassName())
"""


def opengl_available() -> tuple[bool, str]:
    """Whether an offscreen OpenGL context can be created here; (ok, reason if not).

    Probed in a child process: on a machine without EGL/GLX, VTK may abort instead of raising.
    """
    import subprocess
    import sys

    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    try:
        result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"OpenGL probe failed: {exc}"
    line = next((x for x in result.stdout.splitlines() if x.startswith("OPENGL")), "")
    if result.returncode == 0 and line.split()[1:2] == ["1"]:
        return True, ""
    import re

    stderr = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr).strip()
    detail = (stderr.splitlines() or [f"exit code {result.returncode}"])[-1]
    return False, f"no offscreen OpenGL context ({detail.split('| ')[-1]})"


class OffscreenSliceView:
    """One slice view of a :class:`~DeepMorphSimulatorLib.mrml_glue.HeadlessSlicer` scene, rendered offscreen.

    ``size`` = (width, height) in screen pixels. Call :meth:`show_image` (or :meth:`set_layers` +
    :meth:`fit`), then :meth:`render` / :meth:`save_png`. Close with :meth:`close`.
    """

    def __init__(self, slicer_app, size: tuple[int, int] = (512, 512), layout_name: str = "Red",
                 background_rgb=(0.0, 0.0, 0.0)):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        import slicer
        import vtk

        self.app = slicer_app
        self.size = (int(size[0]), int(size[1]))
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.renderer.SetBackground(*background_rgb)
        self.window, self.interactor = _offscreen_window(self.size, self.renderer)

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(slicer_app.app_logic)
        for name in SLICE_DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)

        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(slicer_app.app_logic)
        slicer_app.app_logic.GetSliceLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(slicer_app.scene)
        self.slice_node = self.logic.AddSliceNode(layout_name)
        self.managers.SetMRMLDisplayableNode(self.slice_node)

        self.image_mapper = vtk.vtkImageMapper()  # the slice logic outputs RGBA 0-255
        self.image_mapper.SetColorWindow(255)
        self.image_mapper.SetColorLevel(127.5)
        self.image_actor = vtk.vtkActor2D()
        self.image_actor.SetMapper(self.image_mapper)
        self.image_actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.image_actor)
        self.logic.ResizeSliceNode(*self.size)

    @property
    def composite_node(self):
        return self.logic.GetSliceCompositeNode()

    def set_layers(self, background=None, foreground=None, foreground_opacity: float | None = None) -> None:
        composite = self.composite_node
        composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        if foreground_opacity is not None:
            composite.SetForegroundOpacity(float(foreground_opacity))

    def show_image(self, image_node, foreground=None, foreground_opacity: float = 1.0, zoom: float = 1.0,
                   k: int = 0) -> None:
        """Show a 2-D image face-on and upright, filling the view (``zoom`` > 1 magnifies); of a multi-frame X-ray, its
        frame in slice K = ``k``."""
        from .mrml_glue import align_slice_to_image, uv_to_ras

        self.set_layers(image_node, foreground, foreground_opacity)
        align_slice_to_image(self.slice_node, image_node, k)
        self.fit(zoom)  # centres the view on the whole volume: back to slice k
        self.slice_node.JumpSliceByOffsetting(*uv_to_ras(image_node, [[0.0, 0.0]], k)[0])

    def fit(self, zoom: float = 1.0) -> None:
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()
        if zoom != 1.0:
            fov = list(self.slice_node.GetFieldOfView())
            self.slice_node.SetFieldOfView(fov[0] / zoom, fov[1] / zoom, fov[2])
        self.slice_node.UpdateMatrices()

    def render(self) -> np.ndarray:
        """Render and read back the view as (H, W, 3) uint8 RGB, row 0 at the top."""
        self.image_mapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.logic.ResizeSliceNode(*self.size)
        return _render_and_read(self.interactor, self.window)

    def save_png(self, path: str | os.PathLike) -> np.ndarray:
        return _save_png(self.render(), path)

    def ras_to_screen(self, ras: np.ndarray) -> np.ndarray:
        """World RAS points (N, 3) -> screen pixel centres (N, 2) as (x right, y down) of :meth:`render`.

        Slicer's XY frame has its origin at the bottom-left corner of the view; XY (x, y) is the
        centre of screen pixel (x - 0.5, y - 0.5) counted from the bottom.
        """
        ras = np.atleast_2d(np.asarray(ras, dtype=float))
        xy_to_ras = np.array([[self.slice_node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
        xy = (np.hstack([ras, np.ones((len(ras), 1))]) @ np.linalg.inv(xy_to_ras).T)[:, :2]
        return np.stack([xy[:, 0] - 0.5, self.size[1] - xy[:, 1] - 0.5], axis=1)

    def close(self) -> None:
        self.managers.SetMRMLDisplayableNode(None)
        self.app.app_logic.GetSliceLogics().RemoveItem(self.logic)
        self.logic.SetMRMLScene(None)
        self.window.Finalize()
        self.interactor.TerminateApp()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OffscreenThreeDView:
    """A 3D view of the scene rendered offscreen by Slicer's 3D displayable managers (models, markups,
    slice planes "visible in 3D"). Place the camera with :meth:`look_at` or :meth:`reset_camera`."""

    def __init__(self, slicer_app, size: tuple[int, int] = (512, 512), layout_name: str = "1",
                 background_rgb=(0.08, 0.08, 0.12), background2_rgb=(0.32, 0.34, 0.43)):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        import slicer
        import vtk

        self.app = slicer_app
        self.size = (int(size[0]), int(size[1]))
        self.renderer = vtk.vtkRenderer()
        self.window, self.interactor = _offscreen_window(self.size, self.renderer)
        factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(slicer_app.app_logic)
        for name in THREED_DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)
        self.logic = slicer.vtkMRMLViewLogic()
        self.logic.SetMRMLApplicationLogic(slicer_app.app_logic)
        slicer_app.app_logic.GetViewLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(slicer_app.scene)
        self.view_node = self.logic.AddViewNode(layout_name)
        self.view_node.SetBoxVisible(False)
        self.view_node.SetAxisLabelsVisible(False)
        self.view_node.SetBackgroundColor(*background_rgb)
        self.view_node.SetBackgroundColor2(*background2_rgb)
        self.managers.SetMRMLDisplayableNode(self.view_node)

    def reset_camera(self, azimuth_deg: float = 0.0, elevation_deg: float = 0.0, zoom: float = 1.0) -> None:
        """Fit the camera to the visible props, then orbit (degrees) and zoom."""
        self.renderer.ResetCamera()
        camera = self.renderer.GetActiveCamera()
        camera.Azimuth(azimuth_deg)
        camera.Elevation(elevation_deg)
        camera.OrthogonalizeViewUp()
        self.renderer.ResetCamera()
        camera.Zoom(zoom)
        self.renderer.ResetCameraClippingRange()

    def look_at(self, focal_ras, position_ras, view_up_ras=(0.0, 0.0, 1.0)) -> None:
        camera = self.renderer.GetActiveCamera()
        camera.SetFocalPoint(*focal_ras)
        camera.SetPosition(*position_ras)
        camera.SetViewUp(*view_up_ras)
        camera.OrthogonalizeViewUp()
        self.renderer.ResetCameraClippingRange()

    def render(self) -> np.ndarray:
        return _render_and_read(self.interactor, self.window)

    def save_png(self, path: str | os.PathLike) -> np.ndarray:
        return _save_png(self.render(), path)

    def close(self) -> None:
        self.managers.SetMRMLDisplayableNode(None)
        self.app.app_logic.GetViewLogics().RemoveItem(self.logic)
        self.logic.SetMRMLScene(None)
        self.window.Finalize()
        self.interactor.TerminateApp()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
