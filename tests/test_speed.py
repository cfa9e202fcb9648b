"""Every speed optimisation computes what the plain path computes: same logits (1e-5) and same gradients."""

import pytest
import torch
from torch import nn

from conftest import random_ids, tiny_model
from mtlm.modeling import mtlm_blocks


def separate_linears(inputs, *linears):
    """The plain path fused_linear replaces: each projection in turn."""
    return tuple(linear(inputs) for linear in linears)


def logits_and_gradients(model, ids):
    model.zero_grad(set_to_none=True)
    output = model(ids, labels=ids)
    output.loss.backward()
    return output.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_fused_projections_give_the_plain_paths_logits_and_gradients(family, monkeypatch):
    biases = dict(attention_bias=True, mlp_bias=family != "mtlm_moe")  # Mixtral's experts have no biases
    model = tiny_model(family, **biases).train()
    ids = random_ids(2, 16)
    fused_logits, fused_gradients = logits_and_gradients(model, ids)
    monkeypatch.setattr(mtlm_blocks, "fused_linear", separate_linears)
    plain_logits, plain_gradients = logits_and_gradients(model, ids)
    torch.testing.assert_close(fused_logits, plain_logits, rtol=0, atol=1e-5)
    assert fused_gradients.keys() == plain_gradients.keys()
    for name, gradient in plain_gradients.items():
        torch.testing.assert_close(fused_gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


class ShiftedLinear(nn.Linear):
    """Stands in for what PEFT or a quantizer puts where a projection was: a Linear subclass with its own forward."""

    def forward(self, inputs):
        return super().forward(inputs) + 1.0


@pytest.mark.parametrize("projection", ["q_proj", "v_proj"])
def test_a_wrapped_projection_still_runs_its_own_forward(projection):
    model = tiny_model("mtlm_llama")
    ids = random_ids(1, 8)
    before = model(ids).logits
    attention = model.model.layers[0].self_attn
    plain = getattr(attention, projection)
    wrapped = ShiftedLinear(plain.in_features, plain.out_features, bias=plain.bias is not None)
    wrapped.load_state_dict(plain.state_dict())
    setattr(attention, projection, wrapped)
    assert (model(ids).logits - before).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["mtlm_llama", "mtlm_gpt"])
def test_a_training_step_on_an_accelerator_never_reads_a_tensor_back(family):
    # On the meta device any read of a value (bool, item, tolist) raises: it stands for an accelerator, where each
    # read would stall the device.
    model = tiny_model(family).train().to("meta")
    ids = random_ids(2, 16).to("meta")
    model(ids, labels=ids).loss.backward()
    with pytest.raises((NotImplementedError, RuntimeError)):
        model.eval()(ids)  # where checks are free they still run
