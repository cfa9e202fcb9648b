"""Every speed optimisation computes what the plain path computes: same logits (1e-5) and same gradients."""

import pytest
import torch
from transformers.activations import ACT2FN, PytorchGELUTanh
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from conftest import random_ids, tiny_model
from mtlm.modeling.mtlm_blocks import MtlmRMSNorm


@pytest.mark.parametrize("family", ["mtlm_llama", "mtlm_gpt"])
def test_a_training_step_on_an_accelerator_never_reads_a_tensor_back(family):
    # On the meta device any read of a value (bool, item, tolist) raises: it stands for an accelerator, where each
    # read would stall the device.
    model = tiny_model(family).train().to("meta")
    ids = random_ids(2, 16).to("meta")
    model(ids, labels=ids).loss.backward()
    with pytest.raises((NotImplementedError, RuntimeError)):
        model.eval()(ids)  # where checks are free they still run


def test_compiled_models_compute_the_eager_logits_and_gradients_in_one_graph(family):
    torch._dynamo.reset()
    model = tiny_model(family).train()
    ids = random_ids(2, 16)
    eager = model(ids, labels=ids)
    eager.loss.backward()
    eager_gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True)(ids, labels=ids)  # a graph break would raise
    compiled.loss.backward()
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=0, atol=1e-5)
    for name, gradient in eager_gradients.items():
        torch.testing.assert_close(model.get_parameter(name).grad, gradient, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_rms_norm_computes_llamas_steps(dtype):
    torch.manual_seed(0)
    ours, reference = MtlmRMSNorm(64), LlamaRMSNorm(64)
    with torch.no_grad():
        ours.weight.normal_()
    reference.load_state_dict(ours.state_dict())
    ours, reference = ours.to(dtype), reference.to(dtype)
    inputs = (torch.randn(3, 5, 64) * 4).to(dtype)
    outputs = []
    for norm in (ours, reference):
        given = inputs.clone().requires_grad_()
        output = norm(given)
        output.square().sum().backward()
        outputs.append((output, given.grad, norm.weight.grad))
    for mine, theirs in zip(*outputs):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_gpt2s_gelu_through_the_fused_kernel_computes_the_written_out_formula():
    model = tiny_model("mtlm_gpt", hidden_act="gelu_new").train()
    assert isinstance(model.model.layers[0].mlp.act_fn, PytorchGELUTanh)
    ids = random_ids(2, 16)
    results = []
    for act_fn in (model.model.layers[0].mlp.act_fn, ACT2FN["gelu_new"]):
        for layer in model.model.layers:
            layer.mlp.act_fn = act_fn
        output = model(ids, labels=ids)
        output.loss.backward()
        results.append((output.logits, [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (fused_logits, fused_gradients), (written_logits, written_gradients) = results
    torch.testing.assert_close(fused_logits, written_logits, rtol=0, atol=1e-5)
    for fused, written in zip(fused_gradients, written_gradients):
        torch.testing.assert_close(fused, written, rtol=1e-4, atol=1e-6)


def saved_activation_bytes(model, ids) -> int:
    """Bytes of the tensors autograd saves for the backward pass of one training step (parameters excluded)."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(ids, labels=ids).loss
    loss.backward()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(nbytes for pointer, nbytes in storages.items() if pointer not in parameters)


def test_a_chunked_loss_gives_the_same_loss_and_gradients_without_holding_the_logits(family):
    model = tiny_model(family, vocab_size=4096).train()
    ids = random_ids(2, 48)
    ids[0, :5] = -100  # positions without a label
    labels, ids = ids, ids.clamp(min=0)
    whole = model(ids, labels=labels)
    whole.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    whole_memory = saved_activation_bytes(model, ids)
    model.zero_grad(set_to_none=True)
    model.config.loss_chunk_size = 20  # does not divide 2 x 48 positions
    chunked = model(ids, labels=labels)
    chunked.loss.backward()
    assert chunked.logits is None
    torch.testing.assert_close(chunked.loss, whole.loss, rtol=0, atol=1e-5)
    for name, gradient in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, gradient, rtol=1e-4, atol=1e-6, msg=name)
    assert saved_activation_bytes(model, ids) < 0.6 * whole_memory
    assert model.eval()(ids, labels=labels).logits.shape == (2, 48, 4096)  # evaluation keeps its logits
