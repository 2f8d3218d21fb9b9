"""The calibration figures (calib.plots): search maps drawn where their grid points are."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from calib.plots import _heatmap


def test_a_search_map_centres_each_cell_on_its_grid_point():
    """landscape.png's dy-theta and a1-alpha maps: the cell of grid point (theta, dy) covers that point, half a grid
    step either side (the map used to stretch the first and last points to the axis ends, so every cell but the
    middle one sat up to half a step off its value)."""
    thetas, dys = [-1.0, -0.5, 0.0, 0.5, 1.0], [-3.0, 0.0, 3.0]
    entries = [{"point": {"theta": t, "dy": d}, "score": 1.0 + abs(t - 0.5) + abs(d)} for t in thetas for d in dys]
    fig, ax = plt.subplots()
    try:
        _heatmap(ax, entries, "theta", "dy", "1a")
        assert ax.get_xlim() == (-1.25, 1.25) and ax.get_ylim() == (-4.5, 4.5)
        mesh = ax.collections[0]
        corners = mesh.get_coordinates()                       # (rows + 1, columns + 1, 2) cell corners
        centres = (corners[:-1, :-1] + corners[1:, 1:]) / 2
        best = np.unravel_index(np.argmin(mesh.get_array().reshape(centres.shape[:2])), centres.shape[:2])
        np.testing.assert_allclose(centres[best], (0.5, 0.0))  # the minimum is drawn at (theta, dy) = (0.5, 0)
    finally:
        plt.close(fig)
