"""DeepMorph library: network confidence maps, circle and PDM fits, training and evaluation.

Pure Python (numpy, scipy, torch); importable without Slicer.
"""
