"""DeepMorphSimulator library: CT -> DRR, C-arm geometry, phantoms, ground truth, training data.

Pure Python (numpy, scipy, numba, torch, vtk, SimpleITK); importable without Slicer.
"""
