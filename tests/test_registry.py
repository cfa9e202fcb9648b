"""A family is declared once, in the registry (mtlm/families.py). A toy family defined here, and registered from here
without any other file changing, works with the Auto classes, save/load, `mtlm presets`, the model card and
growth; checkpoints written by mtlm 0.2.0 compute the same logits now."""

from functools import partial

import pytest
import torch
from conftest import FIXTURE_ATOL, TESTS, random_ids
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig

import mtlm
from mtlm.cli import main as mtlm_main
from mtlm.families import FAMILIES, Family, register_family
from mtlm.files import read_checkpoint_config
from mtlm.growth import grow_folder
from mtlm.hub_cards import write_card
from mtlm.modeling.mtlm_blocks import (
    MtlmDecoderLayer,
    MtlmForCausalLM,
    MtlmMLP,
    MtlmModel,
    decoder_flops_per_token,
    make_norm,
)


class ToyNoPEConfig(PreTrainedConfig):
    model_type = "toy_nope"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 97
    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    hidden_act: str = "gelu"
    max_position_embeddings: int = 64
    norm_type: str = "rmsnorm"
    norm_eps: float = 1e-6
    attention_bias: bool = False
    mlp_bias: bool = False
    initializer_range: float = 0.02
    scale_residual_init: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class ToyNoPEModel(MtlmModel):
    config: ToyNoPEConfig

    def __init__(self, config: ToyNoPEConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([MtlmDecoderLayer(config, i, MtlmMLP(config))
                                     for i in range(config.num_hidden_layers)])
        self.norm = make_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def apply_positions(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor):
        """No positional encoding: the causal mask alone tells positions apart (NoPE)."""
        return inputs_embeds, None


class ToyNoPEForCausalLM(MtlmForCausalLM):
    config: ToyNoPEConfig

    def __init__(self, config: ToyNoPEConfig):
        super().__init__(config)
        self.model = ToyNoPEModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


TOY = Family(
    ToyNoPEConfig, ToyNoPEModel, ToyNoPEForCausalLM,
    describe=lambda config: f"toy decoder without positional encoding (NoPE), {config.hidden_act} MLP",
    flops_per_token=partial(decoder_flops_per_token, mlp_class=MtlmMLP),
    card_rows=lambda config: [("positions", "none (NoPE)")],
)


@pytest.fixture
def toy_family():
    register_family(TOY)
    yield TOY
    del FAMILIES[TOY.model_type]  # the other tests see the shipped families only


def toy_model(seed: int = 0) -> ToyNoPEForCausalLM:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model("toy_nope")).eval()


def test_a_registered_family_works_with_the_auto_classes_and_save_load(toy_family, tmp_path):
    config = AutoConfig.for_model("toy_nope", num_hidden_layers=3)
    assert type(config) is ToyNoPEConfig and config.num_hidden_layers == 3
    assert type(AutoModel.from_config(config)) is ToyNoPEModel
    model = toy_model()
    assert type(model) is ToyNoPEForCausalLM
    assert toy_family.flops_per_token(model.config, 16) == model.forward_flops_per_token(16)

    model.save_pretrained(tmp_path / "toy")
    assert read_checkpoint_config(tmp_path / "toy")["model_type"] == "toy_nope"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "toy").eval()
    ids = random_ids(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_a_registered_family_is_listed_described_in_its_card_and_grows(toy_family, tmp_path, capsys):
    mtlm_main(["presets"])
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("toy_nope ")]
    assert len(listed) == 1 and "toy decoder without positional encoding (NoPE), gelu MLP" in listed[0]

    source = toy_model(seed=1)
    source.save_pretrained(tmp_path / "toy")
    card = write_card(tmp_path / "toy").read_text()
    assert "`toy_nope` (toy decoder without positional encoding (NoPE), gelu MLP)" in card
    assert "| positions | none (NoPE) |" in card and "upstream twin" not in card

    grow_folder(tmp_path / "toy", tmp_path / "grown", num_layers=4, function_preserving=True)
    grown = AutoModelForCausalLM.from_pretrained(tmp_path / "grown").eval()
    assert type(grown) is ToyNoPEForCausalLM and grown.config.num_hidden_layers == 4
    assert torch.equal(grown.model.layers[2].mlp.up_proj.weight, source.model.layers[0].mlp.up_proj.weight)
    assert not grown.model.layers[3].self_attn.o_proj.weight.any()
    ids = random_ids(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(grown(ids).logits, source(ids).logits, rtol=1e-5, atol=1e-5)


def test_an_unregistered_model_type_is_refused_with_the_families_named(tmp_path):
    with pytest.raises(ValueError, match="'toy_nope' is not an mtlm family; the families are mtlm_llama"):
        mtlm.family_of("toy_nope")


@pytest.mark.compat
@pytest.mark.parametrize("family", ["mtlm_llama", "mtlm_gpt", "mtlm_moe"])  # the families 0.2.0 had
def test_checkpoints_written_by_mtlm_0_2_0_compute_the_same_logits(family):
    folder = TESTS / "fixtures" / "checkpoints-0.2.0" / family
    expected = load_file(str(folder / "expected_logits.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(model) is FAMILIES[family].causal_lm_class
    with torch.no_grad():
        torch.testing.assert_close(model(expected["input_ids"]).logits, expected["logits"], rtol=0, atol=FIXTURE_ATOL)
