"""GPU switches, tested on the CPU: activation checkpointing (identical outputs, gradients and BatchNorm
statistics, one network of every family), channels-last, torch.compile (dynamo tracing with the eager backend)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from cassi import CassiOperator
from models import create_model, list_models
from test_train import CONFIGS, one_step
from training import ReconstructionModule
from training.acceleration import checkpoint_blocks, enable_activation_checkpointing, native_checkpoint_switches

S2_TINY = dict(in_chans=28, img_size=16, window_size=8, embed_dim=12, depths=[2, 2], num_heads=[2, 2], mlp_ratio=2,
               spe_dim_head=6, drop_path_rate=0.1)
FAMILIES = {  # one network per family, at a small size; crsdun has BatchNorm, s2 its own switch and drop-path
    "mst_s": ({}, 32), "mst_s_real": ({}, 32), "hsra_s": ({}, 64), "crsdun_3stg": ({"n_class": 5}, 32),
    "s2_transformer": (S2_TINY, 16), "bisrnet": ({}, 32),
}


def forward_backward(model, y, op):
    torch.manual_seed(5)                                      # the same dropout / drop-path draws
    out = model.reconstruction(model(**model.prepare_inputs(y, op)))
    out.square().mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", FAMILIES)
def test_activation_checkpointing_gives_identical_outputs_and_gradients(name):
    kwargs, size = FAMILIES[name]
    torch.manual_seed(0)
    plain = create_model(name, **kwargs).train()
    checkpointed = copy.deepcopy(plain)
    switched = enable_activation_checkpointing(checkpointed)
    assert switched
    gen = torch.Generator().manual_seed(1)
    op = CassiOperator((torch.rand(size, size, generator=gen) > 0.5).float())
    y = op(torch.rand(2, 28, size, size, generator=gen))
    (out_a, grads_a), (out_b, grads_b) = forward_backward(plain, y, op), forward_backward(checkpointed, y, op)
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)
    for (key, a), (_, b) in zip(plain.named_buffers(), checkpointed.named_buffers()):  # BatchNorm updated once
        assert torch.equal(a, b), key
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()


def test_every_network_has_something_to_checkpoint():
    for name in list_models():
        kwargs = S2_TINY if name == "s2_transformer" else {}
        model = create_model(name, **kwargs)
        native = native_checkpoint_switches(model)
        assert native or len(checkpoint_blocks(model)) > 1, name          # one block would save no peak memory
    assert native_checkpoint_switches(create_model("s2_transformer", **S2_TINY))   # its own switch is used


def test_channels_last_step_matches_the_default_layout(tmp_path):
    runs = {}
    for flag in ("false", "true"):
        cli = one_step(CONFIGS / "smoke" / "mst_s.yaml", tmp_path / flag, "--data.crop", "32",
                       "--model.init_args.channels_last", flag)
        runs[flag] = float(cli.trainer.callback_metrics["train/loss_epoch"])
        weight = cli.model.model.embedding.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == (flag == "true")
    assert math.isclose(runs["true"], runs["false"], rel_tol=1e-4)


def test_compile_switch_keeps_state_dict_keys_and_outputs():
    graphs = []

    def backend(graph, example_inputs):        # a torch.compile backend that records the traced graphs
        graphs.append(graph)
        return graph.forward

    torch.manual_seed(0)
    tiny = {"stage": 1, "num_blocks": [1, 1]}                    # a one-level MST: quick to trace
    plain = ReconstructionModule(model_name="mst_s", model_kwargs=tiny)
    compiled = ReconstructionModule(model_name="mst_s", model_kwargs=tiny, compile=True,
                                    compile_kwargs={"backend": backend})
    compiled.load_state_dict(plain.state_dict())
    assert compiled.state_dict().keys() == plain.state_dict().keys()    # checkpoints stay loadable by eval.py
    gen = torch.Generator().manual_seed(1)
    op = CassiOperator((torch.rand(16, 16, generator=gen) > 0.5).float())
    y = op(torch.rand(1, 28, 16, 16, generator=gen))
    with torch.no_grad():
        torch.testing.assert_close(compiled(y, op), plain(y, op), rtol=1e-5, atol=1e-6)
    assert graphs, "the network was not compiled"
