"""Every speed optimisation computes what the plain path computes: same logits (1e-5) and same gradients."""

import pytest

from conftest import random_ids, tiny_model


@pytest.mark.parametrize("family", ["mtlm_llama", "mtlm_gpt"])
def test_a_training_step_on_an_accelerator_never_reads_a_tensor_back(family):
    # On the meta device any read of a value (bool, item, tolist) raises: it stands for an accelerator, where each
    # read would stall the device.
    model = tiny_model(family).train().to("meta")
    ids = random_ids(2, 16).to("meta")
    model(ids, labels=ids).loss.backward()
    with pytest.raises((NotImplementedError, RuntimeError)):
        model.eval()(ids)  # where checks are free they still run
