"""Every registered network runs on a mismatched operator through the common model protocol."""
from __future__ import annotations

import re

import pytest
import torch

from cassi import CassiOperator, Mismatch
from models import create_model, list_models

# smallest sizes each family accepts (window / down-sampling multiples), and a lighter width where
# the family allows it: this checks the wiring, the fixture tests check the published builds.
SIZE = {"bisrnet": 16, "crsdun": 64, "hsra": 64, "s2_transformer": 16, "mst": 32}
LIGHT = {"s2_transformer": dict(img_size=16, window_size=8, embed_dim=12, depths=[1], num_heads=[2], spe_dim_head=6)}


def family(name: str) -> str:
    return next(prefix for prefix in SIZE if name.startswith(prefix))


@pytest.mark.parametrize("name", list_models())
def test_model_runs_on_a_mismatched_operator(name):
    size = SIZE[family(name)]
    torch.manual_seed(0)
    model = create_model(name, **LIGHT.get(name, {})).eval()
    mask = (torch.rand(size, size) > 0.5).float()
    mismatch = Mismatch(dx=0.4, dy=-0.3, theta=0.2, a1=2.02, alpha=0.3)
    op = CassiOperator(mask, mismatch=mismatch)
    y = op(torch.rand(1, 28, size, size))
    with torch.no_grad():
        out = model.reconstruction(model(**model.prepare_inputs(y, op)))
        nominal = CassiOperator(mask)
        out_nominal = model.reconstruction(model(**model.prepare_inputs(y, nominal)))
    assert out.shape == (1, 28, size, size)
    assert torch.isfinite(out).all()
    rule = model.size_rule                       # its stated sizes: this one runs, the next smaller one is refused
    rejected = next(s for s in range(size - 1, 0, -1) if not rule.accepts(s, s))
    small = CassiOperator(mask[:rejected, :rejected])
    assert rule.accepts(size, size)
    with pytest.raises(ValueError, match=re.escape(f"is {rejected}x{rejected}; it must have {rule}")):
        model(**model.prepare_inputs(small(torch.rand(1, 28, rejected, rejected)), small))
    if not name.endswith("_real"):  # the real-data MST and BiSRNet take the measurement only, no mask
        assert not torch.allclose(out, out_nominal), "the operator's mismatch does not reach the model"


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(KeyError, match="known models: .*mst_s"):
        create_model("mst_xl")


def test_a_weights_file_torch_cannot_read_is_said_to_be_what_it_is(tmp_path, capsys):
    """A text file as ``--ckpt`` said 'cannot read as a weights-only torch checkpoint (101)': torch's KeyError of
    the pickle opcode 'e' is; an empty one '()', an .npz '[enforce fail at inline_container.cc:180] ...'."""
    import importlib

    import numpy as np
    from cli_checks import user_error

    from models.checkpoints import load_weights

    (tmp_path / "notes.pth").write_text("hello, these are my notes\n")
    (tmp_path / "notes.ckpt").write_text("hello, these are my notes\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    with open(tmp_path / "arrays.pth", "wb") as handle:
        np.savez(handle, x=np.ones(3))
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:100])
    said = {"notes.pth": r"not a torch checkpoint \(torch\.save writes a zip archive, or a pickle before torch 1\.6\)",
            "notes.ckpt": r"not a torch checkpoint \(torch\.save writes a zip archive",
            "empty.pth": "the file is empty, not a torch checkpoint",
            "arrays.pth": r"a zip archive without the data\.pkl of torch\.save \(an \.npz\?\), not a torch checkpoint",
            "legacy.pth": r"the torch checkpoint ends early \(truncated\?\)"}
    for name, message in said.items():
        with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / name))}: {message}"):
            load_weights(tmp_path / name, None if name.endswith(".ckpt") else "mst_s")
    user_error(capsys, lambda: importlib.import_module("eval").main(
        ["kaist", "--model", "mst_s", "--ckpt", str(tmp_path / "notes.pth"), "--out", str(tmp_path / "kaist")]),
        rf"error: {re.escape(str(tmp_path / 'notes.pth'))}: not a torch checkpoint \(torch\.save writes a zip archive, "
        r"or a pickle before torch 1\.6\)$")
