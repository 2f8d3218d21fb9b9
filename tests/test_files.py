"""cassi.files: atomic writes (exact name, no temp left, the old file kept when writing fails)."""
import numpy as np
import pytest

from cassi.files import save_npz, umask_mode, write_json
from data.io import load_cube


def test_save_npz_writes_exact_name_and_leaves_no_temp(tmp_path):
    cube = np.random.default_rng(6).random((28, 4, 4)).astype(np.float32)
    target = tmp_path / "out" / "recon.npz"
    save_npz(target, cube=cube, step=np.int32(2))
    save_npz(target, cube=cube * 0.5)  # overwrite in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["recon.npz"]
    np.testing.assert_array_equal(load_cube(target), cube * 0.5)
    save_npz(tmp_path / "plain", compress=False, y=cube[0])
    assert (tmp_path / "plain").is_file() and not (tmp_path / "plain.npz").exists()
    assert (tmp_path / "plain").stat().st_mode & 0o777 == umask_mode(0o666)


class _Unconvertible:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("cannot convert")


def test_failed_writes_keep_the_old_file(tmp_path):
    target = tmp_path / "keep.npz"
    save_npz(target, y=np.ones(3))
    with pytest.raises(RuntimeError, match="cannot convert"):
        save_npz(target, a=np.zeros(2), y=_Unconvertible())
    np.testing.assert_array_equal(np.load(target)["y"], np.ones(3))
    write_json(tmp_path / "r.json", {"a": float("nan")})
    with pytest.raises(TypeError):
        write_json(tmp_path / "r.json", {"a": object()})
    assert (tmp_path / "r.json").read_text() == '{\n  "a": null\n}\n'      # strict JSON, old content kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz", "r.json"]
