"""Torch-free analysis of recorded runs: metrics, rankings, suggestions, text plots.

Shared by `clipdash sweep`, `compare`, `suggest` and `lr-find`, and importable by the dashboard
(numpy and the store only: no torch, no textual).
"""
