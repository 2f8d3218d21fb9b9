"""A network of the user's own, outside the repository, registered through ``CASSI_MODELS`` (README, "Adding your
own model"): the registry finds it, and the mistakes a user makes are said clearly."""
from __future__ import annotations

import json
import re
import sys
import textwrap

import numpy as np
import pytest
import torch

import calibrate
from cassi import CassiOperator, Mismatch
from evaluation.model_table import measure_model, model_table
from evaluation.release import export_release
from models import create_model, list_models, load_release
from models import registry
from models.checkpoints import LoadedModel
from models.registry import forward_inputs
from models.release import registering_module
from models.sizes import SizeRule
from test_models_registry import LIGHT, SIZE, family
from tests.cli_checks import user_error
from tests.test_calib_pipeline import measure
from tests.test_eval import run_cli, write_real_capture

TINY = '''
import torch
from torch import nn

from models import register_model
from models.sizes import SizeRule


class TinyNet(nn.Module):
    """Two convolutions on the toolbox H input and the 3-D mask."""

    def __init__(self, bands: int = 28, width: int = 8):
        super().__init__()
        self.size_rule = SizeRule()
        self.body = nn.Sequential(nn.Conv2d(2 * bands, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, bands, 3, padding=1))

    def forward(self, x, mask):
        return x + self.body(torch.cat([x, mask], 1))

    def prepare_inputs(self, y, op):
        return {"x": op.input_setting(y, "H"), "mask": op.mask_setting("Mask", y.shape[0])}

    def reconstruction(self, output):
        return output


@register_model("{name}")
def build(**kwargs):
    return TinyNet(**kwargs)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a module registering ``name`` (TINY, or ``source``) in tmp_path, on sys.path; module and registry are
    as before afterwards."""
    written = []

    def write(module: str, name: str, source: str = TINY) -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source).replace("{name}", name))
        written.append((module, name))

    list_models()                                # the published ones registered before the snapshot
    registered = dict(registry._REGISTRY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for module, _ in written:
        sys.modules.pop(module, None)
    registry._REGISTRY.clear()
    registry._REGISTRY.update(registered)


def test_a_module_named_by_cassi_models_is_registered(user_module, monkeypatch):
    user_module("tiny_cassi_net", "tiny_net_test")
    assert "tiny_net_test" not in list_models()
    monkeypatch.setenv("CASSI_MODELS", " tiny_cassi_net , ")
    assert "tiny_net_test" in list_models()
    model = create_model("tiny_net_test", width=4).eval()
    op = CassiOperator((torch.rand(16, 16) > 0.5).float())
    y = op(torch.rand(1, 28, 16, 16))
    assert model.reconstruction(model(**model.prepare_inputs(y, op))).shape == (1, 28, 16, 16)


def test_unknown_name_says_how_to_register_one():
    with pytest.raises(KeyError, match="CASSI_MODELS.*Adding your own model"):
        create_model("not_a_model")


def test_missing_module_names_the_variable(monkeypatch):
    monkeypatch.setenv("CASSI_MODELS", "no_such_cassi_module")
    with pytest.raises(ValueError, match="CASSI_MODELS='no_such_cassi_module': cannot import module "
                                         "'no_such_cassi_module' \\(is its folder on PYTHONPATH\\?\\)"):
        create_model("mst_s")


def test_a_file_path_says_to_name_the_module(monkeypatch):
    monkeypatch.setenv("CASSI_MODELS", "/tmp/mynet/mynet.py")
    with pytest.raises(ValueError, match="is a file; name its module .*PYTHONPATH=/tmp/mynet CASSI_MODELS=mynet"):
        list_models()


def test_a_missing_import_inside_the_module_keeps_its_traceback(user_module, monkeypatch):
    user_module("tiny_cassi_broken", "tiny_broken", "import no_such_dependency_of_the_user\n")
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_broken")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_the_user"):
        list_models()


@pytest.mark.parametrize("edit, said", [
    (("        self.size_rule = SizeRule()\n", ""), "it has no size_rule \\(a models.sizes.SizeRule"),
    (("        self.size_rule = SizeRule()\n", "        self.size_rule = (4, 4)\n"),
     "a size_rule that is a tuple, not a models.sizes.SizeRule"),
    (("    def prepare_inputs(", "    def inputs("), "it has no prepare_inputs\\(\\) method"),
    (("    def reconstruction(", "    def cube("), "it has no reconstruction\\(\\) method"),
    (("    return TinyNet(**kwargs)", "    return TinyNet(**kwargs).forward"),
     "returned a builtins.method, not a torch"),
])
def test_a_model_outside_the_protocol_is_refused_naming_what_it_lacks(user_module, monkeypatch, edit, said):
    user_module("tiny_cassi_partial", "tiny_partial", TINY.replace(*edit))
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_partial")
    with pytest.raises(ValueError, match=f"model 'tiny_partial'.*{said}"):
        create_model("tiny_partial")


def test_export_takes_the_bands_of_the_training_when_the_network_does_not_say(user_module, monkeypatch, tmp_path):
    user_module("tiny_cassi_net", "tiny_net_test")
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_net")
    model = create_model("tiny_net_test", width=4).eval()
    mask = (torch.rand(16, 16) > 0.5).float()
    source = {"kind": "lightning", "path": str(tmp_path / "last.ckpt")}
    with pytest.raises(ValueError, match="spectral bands 'tiny_net_test' .* tiny_cassi_net.TinyNet has no int "
                                         "attribute bands .* set self.bands in its __init__"):
        export_release(LoadedModel(model, "tiny_net_test", {"width": 4}, source), mask, tmp_path / "r0")
    trained = LoadedModel(model, "tiny_net_test", {"width": 4}, source, training={"hyper_parameters": {"bands": 28}})
    folder = export_release(trained, mask, tmp_path / "r1")
    assert json.loads((folder / "config.json").read_text())["bands"] == 28
    again = load_release(folder)
    assert type(again).__name__ == "TinyNet"
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_release_of_a_network_of_ones_own_records_the_module_that_loading_needs(user_module, monkeypatch, tmp_path):
    """config.json recorded only the name and the card said "`tiny_net_test` from this project's model registry";
    loading without CASSI_MODELS said only "unknown model 'tiny_net_test'; known models: ..."."""
    user_module("tiny_cassi_net", "tiny_net_test", TINY.replace("self.size_rule = SizeRule()",
                                                                "self.size_rule, self.bands = SizeRule(), bands"))
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_net")
    model = create_model("tiny_net_test", width=4).eval()
    loaded = LoadedModel(model, "tiny_net_test", {"width": 4}, {"kind": "toolbox", "path": str(tmp_path / "w.pth")})
    folder = export_release(loaded, (torch.rand(16, 16) > 0.5).float(), tmp_path / "release")
    assert json.loads((folder / "config.json").read_text())["model"]["module"] == "tiny_cassi_net"
    card = (folder / "README.md").read_text()
    assert ("- architecture: `tiny_net_test` from the module `tiny_cassi_net` (a network of one's own, not part of "
            "this project: loading needs CASSI_MODELS=tiny_cassi_net, its folder on PYTHONPATH), kwargs "
            "`{'width': 4}`") in card
    monkeypatch.delenv("CASSI_MODELS")
    registry._REGISTRY.pop("tiny_net_test")
    said = ("model 'tiny_net_test' was registered by the module 'tiny_cassi_net' (a network of one's own), which the "
            "registry has not imported: loading it needs CASSI_MODELS=tiny_cassi_net")
    with pytest.raises(ValueError, match=re.escape(said)):
        load_release(folder)
    assert [name for name in list_models() if registering_module(name)] == []      # the project's own record none


# TINY with a forward whose arguments are not the keys of its prepare_inputs
RENAMED = TINY.replace("    def forward(self, x, mask):\n        return x + self.body(torch.cat([x, mask], 1))",
                       "    def forward(self, inp, m):\n        return inp + self.body(torch.cat([inp, m], 1))")


def test_inputs_that_do_not_fit_the_forward_are_said_before_it_runs(user_module, monkeypatch):
    user_module("tiny_cassi_renamed", "tiny_renamed", RENAMED)
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_renamed")
    model = create_model("tiny_renamed")
    op = CassiOperator((torch.rand(16, 16) > 0.5).float())
    said = ("TinyNet.prepare_inputs(y, op) returns the keyword arguments x, mask, which do not fit "
            "TinyNet.forward(inp, m): it takes no x, mask; it needs inp, m")
    with pytest.raises(ValueError, match=re.escape(said)):
        forward_inputs(model, op(torch.rand(1, 28, 16, 16)), op)
    row = measure_model("tiny_renamed", size=16, timing=False)          # eval.py models: the row's error
    assert row["flops"] is None and said in row["error"]


def test_calibrate_and_eval_kaist_say_inputs_that_do_not_fit_the_forward(user_module, monkeypatch, tmp_path, capsys):
    """calibrate.py --solver and eval.py kaist stopped at the first forward with the traceback of "TypeError:
    TinyNet.forward() got an unexpected keyword argument 'x'"; both now say the mismatch (forward_inputs)."""
    user_module("tiny_cassi_renamed", "tiny_renamed", RENAMED)
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_renamed")
    torch.save(create_model("tiny_renamed").state_dict(), tmp_path / "w.pth")
    y, mask = measure(16, Mismatch())
    np.savez(tmp_path / "y.npz", y=y.numpy())
    np.save(tmp_path / "mask.npy", mask.numpy())
    said = re.escape("which do not fit TinyNet.forward(inp, m): it takes no x, mask; it needs inp, m")
    user_error(capsys, lambda: calibrate.main(["--meas", str(tmp_path / "y.npz"), "--mask", str(tmp_path / "mask.npy"),
                                                "--solver", "tiny_renamed", "--ckpt", str(tmp_path / "w.pth"),
                                                "--out", str(tmp_path / "cal"), "--no-progress"]),
               r"solver tiny_renamed cannot reconstruct a 16x16 scene .*" + said)
    user_error(capsys, lambda: run_cli("kaist", "--model", "tiny_renamed", "--ckpt", tmp_path / "w.pth", "--mask",
                                       tmp_path / "mask.npy", "--synthetic.count", 1, "--out", tmp_path / "kaist"),
               said)
    assert not (tmp_path / "cal").exists() and not (tmp_path / "kaist").exists()


def test_eval_kaist_checks_the_size_rule_before_any_work(user_module, monkeypatch, tmp_path, capsys):
    """A network whose rule refuses the scenes' size: eval.py kaist evaluated it at 16 px (the forward of the user's
    network does not check its own rule, as train.py does before a run); now one line, and no results."""
    user_module("tiny_cassi_48", "tiny_48", TINY.replace("SizeRule()", "SizeRule((48, 48), reason='48 px windows')"))
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_48")
    torch.save(create_model("tiny_48").state_dict(), tmp_path / "w.pth")
    np.save(tmp_path / "mask.npy", (torch.rand(16, 16) > 0.5).float().numpy())
    user_error(capsys, lambda: run_cli("kaist", "--model", "tiny_48", "--ckpt", tmp_path / "w.pth", "--mask",
                                       tmp_path / "mask.npy", "--synthetic.count", 1, "--out", tmp_path / "kaist"),
               re.escape("network tiny_48 cannot reconstruct a 16x16 scene (measurement (16, 70)): its input is "
                         "16x16; it must have H and W each a multiple of 48 (48 px windows)"))
    assert not (tmp_path / "kaist").exists()


def test_eval_real_checks_the_size_rule_before_any_work(user_module, monkeypatch, tmp_path, capsys):
    """eval.py real reconstructed every capture with a network whose rule refuses their size (the forward of the
    user's network does not check its rule); now one line before the first reconstruction, and no results."""
    user_module("tiny_cassi_48", "tiny_48", TINY.replace("SizeRule()", "SizeRule((48, 48), reason='48 px windows')"))
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_48")
    torch.save(create_model("tiny_48").state_dict(), tmp_path / "w.pth")
    write_real_capture(tmp_path / "real", CassiOperator)
    user_error(capsys, lambda: run_cli("real", "--model", "tiny_48", "--ckpt", tmp_path / "w.pth", "--data.root",
                                       tmp_path / "real", "--no-previews", "--out", tmp_path / "out"),
               re.escape("network tiny_48 cannot reconstruct a 32x32 scene (measurement (32, 86)): its input is "
                         "32x32; it must have H and W each a multiple of 48 (48 px windows)"))
    assert not (tmp_path / "out").exists()


def test_eval_kaist_checks_a_measurement_only_network_without_refusing_it(tmp_path):
    """The check before any work built bisrnet_real's inputs from a zero measurement, which it cannot rescale:
    'network bisrnet_real cannot reconstruct a 16x16 scene ...: a measurement has no positive value' (8e6fb83)."""
    torch.manual_seed(0)
    torch.save(create_model("bisrnet_real").state_dict(), tmp_path / "w.pth")
    assert run_cli("kaist", "--model", "bisrnet_real", "--ckpt", tmp_path / "w.pth", "--synthetic.count", 1,
                   "--synthetic.size", 16, "--out", tmp_path / "kaist") == 0


@pytest.mark.parametrize("name", list_models())
def test_the_published_networks_inputs_fit_their_forward(name):
    size = SIZE[family(name)]
    op = CassiOperator((torch.rand(size, size) > 0.5).float())
    model = create_model(name, **LIGHT.get(name, {}))
    y = op(torch.rand(1, 28, size, size))
    assert forward_inputs(model, y, op).keys() == model.prepare_inputs(y, op).keys()


def test_a_name_registered_twice_names_both_builders(user_module, monkeypatch):
    user_module("tiny_cassi_clash", "mst_s")
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_clash")
    with pytest.raises(ValueError, match=re.escape("model 'mst_s' is registered twice, by models.mst.mst_s and by "
                                                   "tiny_cassi_clash.build (choose another name for one of them)")):
        list_models()


def test_a_script_also_named_in_cassi_models_is_told_so(user_module, monkeypatch):
    user_module("tiny_cassi_net", "tiny_net_test")
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_net")
    list_models()
    builder = registry._REGISTRY["tiny_net_test"].builder
    as_script = type(builder)(builder.__code__, {**builder.__globals__, "__name__": "__main__"}, builder.__name__)
    with pytest.raises(ValueError, match=re.escape("by tiny_cassi_net.build and by __main__.build (one file imported "
                                                   "as two modules: run as a script (__main__) and named in "
                                                   "CASSI_MODELS?)")):
        registry.register_model("tiny_net_test")(as_script)


@pytest.mark.parametrize("kwargs, said", [
    ({"multiple": 8}, "SizeRule multiple=8: expected a pair (rows, cols) of positive integers, e.g. (8, 8)"),
    ({"multiple": (0, 8)}, "SizeRule multiple=(0, 8): expected a pair"),
    ({"minimum": 0}, "SizeRule minimum=0: expected a positive integer"),
    ({"max_height": 0.5}, "SizeRule max_height=0.5: expected a positive integer or None"),
])
def test_a_size_rule_that_cannot_apply_is_refused_when_made(user_module, monkeypatch, kwargs, said):
    with pytest.raises(ValueError, match=re.escape(said)):
        SizeRule(**kwargs)
    user_module("tiny_cassi_rule", "tiny_rule", TINY.replace("SizeRule()", f"SizeRule(**{kwargs!r})"))
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_rule")
    with pytest.raises(ValueError, match=re.escape(f"cannot build model 'tiny_rule' with {{}}: ValueError: {said}")):
        create_model("tiny_rule")


def test_a_mistyped_name_says_the_closest_one():
    with pytest.raises(KeyError, match=re.escape("unknown model 'mst_ss' (did you mean mst_s?); known models: ")):
        create_model("mst_ss")
    with pytest.raises(KeyError) as raised:
        create_model("not_a_model")
    assert "did you mean" not in str(raised.value)


def test_eval_models_names_the_closest_model_and_how_to_register_one():
    with pytest.raises(KeyError, match=re.escape("unknown model 'mst_ss' (did you mean mst_s?)") + ".*CASSI_MODELS"):
        model_table(["mst_s", "mst_ss"], size=16, timing=False, verbose=False)


def test_eval_models_measures_a_network_of_other_bands_with_its_own(user_module, monkeypatch):
    user_module("tiny_cassi_31", "tiny_31", TINY.replace("bands: int = 28", "bands: int = 31")
                .replace("self.size_rule = SizeRule()", "self.size_rule, self.bands = SizeRule(), bands"))
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_31")
    row = measure_model("tiny_31", size=16, timing=False)
    assert row["error"] is None and row["flops"] > 0
