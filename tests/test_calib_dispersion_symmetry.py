"""The mirror test (calib.dispersion_symmetry): a1 set to the grid-aligned slope only when the a1 slice is
symmetric about it with a cusp there, as on KAIST snapshot 01 (native grid, a1 = 2)."""
from __future__ import annotations

import pytest
import torch

from calib import dispersion_symmetry
from calib.dispersion_symmetry import mirror_test
from calib.pipeline import REFINE_SCORE
from calib.ranges import Ranges, pixel_scales
from calib.score import HeldOutScore
from test_calib_status import kaist_rows


SCALES = pixel_scales(256, 256, 28, 2)


def point(a1: float) -> torch.Tensor:
    return torch.tensor([0.0, 0.0, 0.0, a1, 0.0], dtype=torch.float64)


class FixedScore:
    """Block scores of the candidates by their a1: ``levels[a1] * (1 + 0.1 n_k) / blocks``, n_k a fixed draw per
    candidate (paired standard error of a difference about 3.5 % of the score)."""

    def __init__(self, levels: dict[float, float], model: tuple[int, int] = (1, 1)) -> None:
        self.levels = levels
        self.settings = REFINE_SCORE.with_(spatial=model[0], spectral=model[1])

    def set_reference(self, params: torch.Tensor) -> None:
        pass

    def block_scores(self, params: torch.Tensor, blocks: int) -> torch.Tensor:
        draws = torch.randn(len(params), blocks, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        levels = torch.tensor([self.levels[round(float(p[3]), 4)] for p in params], dtype=torch.float64)
        return levels[:, None] * (1 + 0.1 * draws) / blocks


@pytest.mark.parametrize("levels, applied, said", [
    ({2.012: 1.0, 1.988: 1.004, 2.0: 1.15}, True, "a1 set to it"),
    ({2.012: 1.0, 1.988: 1.2, 2.0: 1.15}, False, "not symmetric"),
    ({2.012: 1.0, 1.988: 1.0, 2.0: 1.0}, False, "no cusp"),
])
def test_the_decision(levels, applied, said, monkeypatch):
    monkeypatch.setattr(dispersion_symmetry, "profile", lambda full, start, ranges, scales: (start, 0))
    moved, record = mirror_test(FixedScore(levels), point(2.012), 2, Ranges(), SCALES, 2.0, 16)
    assert record["applied"] is applied and said in record["reason"]
    assert float(moved[3]) == (2.0 if applied else 2.012)
    assert torch.equal(moved[[0, 1, 2, 4]], point(2.012)[[0, 1, 2, 4]])


def test_only_the_native_grid_is_tested():
    """The enlarged model (N = 4, K = 2) spreads each band over its dispersion: no whole-column cusp to test."""
    levels = {2.012: 1.0, 1.988: 1.004, 2.0: 1.15}      # what the native grid would move to a1 = 2
    moved, record = mirror_test(FixedScore(levels, (4, 2)), point(2.012), 2, Ranges(), SCALES, 2.0, 16)
    assert not record["applied"] and "not run" in record["reason"] and float(moved[3]) == 2.012


def test_a_mirror_outside_the_range_is_not_scored():
    moved, record = mirror_test(FixedScore({}), point(2.04), 2, Ranges(a1=(1.97, 2.05)), SCALES, 2.0, 16)
    assert not record["applied"] and "outside the search range" in record["reason"] and float(moved[3]) == 2.04


@pytest.fixture(scope="module")
def snapshot01_score():
    """KAIST snapshot 01 (all 256 rows: the W is the whole scene's) in the refinement setting, native grid."""
    y, mask = kaist_rows(slice(0, 256))
    return HeldOutScore(y, mask, 28, 2, REFINE_SCORE.with_(spatial=1, spectral=1), reference=point(2.0121)[None])


def test_kaist_snapshot01_sits_in_one_of_two_mirror_minima(snapshot01_score):
    """The calibration's a1 there, 2.0121 (truth 2): its mirror 1.9879 scores the same, 2 scores higher."""
    moved, record = mirror_test(snapshot01_score, point(2.0121), 2, Ranges(), SCALES, 2.0, 16)
    assert record["applied"], record["reason"]
    assert float(moved[3]) == 2.0
    assert abs(record["mirror_rise"]) < 2 * record["mirror_standard_error"]
    assert record["aligned_rise"] > 2 * record["aligned_standard_error"]


def test_a_slope_off_the_cusp_is_kept(snapshot01_score):
    """a1 = 2.03, 0.03 from the truth: its mirror 1.97, 0.03 the other side, is no better, but 2 between them is."""
    snapshot01_score.set_reference(point(2.03)[None])
    moved, record = mirror_test(snapshot01_score, point(2.03), 2, Ranges(), SCALES, 2.0, 16)
    assert not record["applied"] and "no cusp" in record["reason"] and float(moved[3]) == 2.03


def test_the_pipeline_records_the_test_and_the_cli_says_when_it_applied():
    from calib import calibrate
    from calibrate import summary
    from cassi import Mismatch
    from test_calib_status import QUICK, measure

    result = calibrate(*measure(48, Mismatch(dx=0.5, a1=2.03)), oversample=(1, 1), **QUICK)
    record = result.settings["mirror_test"]
    assert set(record["profile"]) == {"estimate", "mirror", "aligned"}
    assert record["a1"] == pytest.approx(result.estimate.a1) and not record["applied"], record["reason"]
    assert [r.name for r in result.history].count("2M mirror test") == 1 and "2M mirror test_s" in result.timings
    assert "mirror test" not in summary(result)
    result.settings["mirror_test"] = {**record, "applied": True, "reason": "REASON"}
    assert "a1: mirror test: REASON" in summary(result)
