"""Model families: detection from config.json, per-family facts, and that the facts match vLLM and transformers."""

from __future__ import annotations

import inspect as pyinspect
import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from ocr import models
from ocr.checkpoint import SetupError
from ocr.models import PROMPTS as ENGINE_PROMPTS
from ocr.models import DEEPSEEK_OCR, DEEPSEEK_OCR2, Checkpoint

sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
from make_tiny_checkpoint import REFERENCE_CONFIG  # noqa: E402
from make_tiny_checkpoint_ocr2 import original_config  # noqa: E402

V1_CONFIG = json.loads(REFERENCE_CONFIG.read_text())
V2_ORIGINAL = original_config(vocab_size=512)


def v2_transformers_config() -> dict:
    config = models.ocr2_transformers_config(Checkpoint("x", DEEPSEEK_OCR2, "original", None, V2_ORIGINAL), 3)
    return config.to_dict()


def folder(tmp_path: Path, config: dict) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("config, family, layout", [
    (V1_CONFIG, DEEPSEEK_OCR, "original"),
    (V2_ORIGINAL, DEEPSEEK_OCR2, "original"),
    ({"model_type": "deepseek_ocr2", "text_config": {}}, DEEPSEEK_OCR2, "transformers"),
    ({"architectures": ["DeepseekOcr2ForConditionalGeneration"]}, DEEPSEEK_OCR2, "transformers"),
])
def test_family_and_layout_come_from_config_json(config, family, layout):
    assert models.detect(config) == (family, layout)


def test_transformers_own_config_is_detected_too():
    assert models.detect(v2_transformers_config()) == (DEEPSEEK_OCR2, "transformers")


@pytest.mark.parametrize("config", [
    {"architectures": ["DeepseekVLV2ForCausalLM"], "model_type": "deepseek_vl_v2", "language_config": {}},
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
    {},
])
def test_other_models_are_refused_with_what_the_config_says(config):
    with pytest.raises(SetupError, match="not a DeepSeek-OCR or DeepSeek-OCR-2 checkpoint"):
        models.detect(config)


def test_inspect_reads_a_folder_and_knows_the_hub_ids_without_downloading(tmp_path):
    ckpt = models.inspect(str(folder(tmp_path / "v2", V2_ORIGINAL)))
    assert (ckpt.family, ckpt.layout, ckpt.path) == (DEEPSEEK_OCR2, "original", tmp_path / "v2")
    assert models.inspect("deepseek-ai/DeepSeek-OCR").family is DEEPSEEK_OCR
    assert models.inspect("deepseek-ai/deepseek-ocr-2").family is DEEPSEEK_OCR2
    assert models.inspect("deepseek-community/DeepSeek-OCR-2").layout == "transformers"
    with pytest.raises(SetupError, match="cannot tell which model"):
        models.inspect("someone/some-model")
    with pytest.raises(SetupError, match="has no config.json"):
        models.inspect(str(tmp_path))


def test_with_local_reads_the_downloaded_config(tmp_path):
    known = models.inspect("deepseek-ai/DeepSeek-OCR-2")
    assert known.path is None and known.config == {}
    local = models.with_local(known, folder(tmp_path, V2_ORIGINAL))
    assert local.path == tmp_path and local.attention_heads == 2     # the tiny model's


def test_vllm_overrides_name_the_architecture_and_the_config_class():
    v1 = Checkpoint("m", DEEPSEEK_OCR, "original", None, V1_CONFIG)
    assert v1.vllm_hf_overrides() == {"architectures": ["DeepseekOCRForCausalLM"], "text_config": {"head_dim": 128}}
    v2 = Checkpoint("m", DEEPSEEK_OCR2, "original", None, V2_ORIGINAL)
    assert v2.vllm_hf_overrides() == {"architectures": ["DeepseekOCR2ForCausalLM"], "text_config": {"head_dim": 64}}
    assert Checkpoint("m", DEEPSEEK_OCR2, "original").vllm_hf_overrides() == \
        {"architectures": ["DeepseekOCR2ForCausalLM"]}                 # a hub id, config not read yet
    odd = Checkpoint("m", DEEPSEEK_OCR2, "original", None, {**V2_ORIGINAL, "model_type": "deepseek_ocr2"})
    assert odd.vllm_hf_overrides()["model_type"] == "deepseek_vl_v2"
    community = Checkpoint("deepseek-community/DeepSeek-OCR-2", DEEPSEEK_OCR2, "transformers")
    with pytest.raises(SetupError, match="vLLM needs the original checkpoint.*deepseek-ai/DeepSeek-OCR-2"):
        community.vllm_hf_overrides()


def test_ngram_defaults_per_family_and_flags_win():
    v1 = Checkpoint("m", DEEPSEEK_OCR, "original")
    v2 = Checkpoint("m", DEEPSEEK_OCR2, "original")
    assert v1.ngram(None, None) == (30, 90) and v2.ngram(None, None) == (20, 90)
    assert v2.ngram(0, None) == (0, 90) and v1.ngram(40, 50) == (40, 50)
    from ocr.engines.hf import SPEC   # DeepSeek's HF infer() uses no_repeat_ngram_size 20 for both families
    assert SPEC.defaults["ngram_size"] == 20


def test_both_families_use_the_prompts_the_pipeline_sends():
    assert dict(DEEPSEEK_OCR.prompts) == dict(DEEPSEEK_OCR2.prompts) == models.PROMPTS == ENGINE_PROMPTS
    assert models.PROMPTS["grounded"] == "<image>\n<|grounding|>Convert the document to markdown."


def test_heads_come_from_the_language_model():
    assert Checkpoint("m", DEEPSEEK_OCR, "original", None, V1_CONFIG).attention_heads == 10
    assert Checkpoint("m", DEEPSEEK_OCR2, "original").attention_heads == 10     # not on disk yet


def test_remote_code_needs_auto_map_and_python_files(tmp_path):
    assert Checkpoint("m", DEEPSEEK_OCR, "original", None, V1_CONFIG).has_remote_code   # the real config
    ckpt = models.inspect(str(folder(tmp_path, V1_CONFIG)))
    assert not ckpt.has_remote_code                                # auto_map, but no .py next to it
    (tmp_path / "modeling_deepseekocr.py").write_text("")
    assert models.inspect(str(tmp_path)).has_remote_code


def test_text_config_conversion_keeps_the_moe_layout():
    text = models.ocr2_text_config(V2_ORIGINAL["language_config"])
    lm = V2_ORIGINAL["language_config"]
    assert text["mlp_layer_types"] == ["dense"] * lm["first_k_dense_replace"] + \
        ["sparse"] * (lm["num_hidden_layers"] - lm["first_k_dense_replace"])
    assert {k: text[k] for k in ("hidden_size", "n_routed_experts", "num_experts_per_tok", "vocab_size")} == \
        {k: lm[k] for k in ("hidden_size", "n_routed_experts", "num_experts_per_tok", "vocab_size")}


def test_converted_config_is_transformers_deepseek_ocr2_with_the_real_encoder():
    config = models.ocr2_transformers_config(Checkpoint("m", DEEPSEEK_OCR2, "original", None, V2_ORIGINAL), 3)
    assert type(config).__name__ == "DeepseekOcr2Config" and config.image_token_id == 3
    enc = config.vision_config.encoder_config
    assert (enc.hidden_size, enc.num_hidden_layers, enc.num_attention_heads, enc.num_key_value_heads,
            enc.intermediate_size) == (896, 24, 14, 2, 4864)
    assert config.text_config.hidden_size == V2_ORIGINAL["language_config"]["hidden_size"]
    assert config.vision_config.sam_config.downsample_channels == [512, 896]
    with pytest.raises(SetupError, match="not DeepSeek-OCR-2"):
        models.ocr2_transformers_config(Checkpoint("m", DEEPSEEK_OCR, "original", None, V1_CONFIG))
    bad = {**V2_ORIGINAL, "projector_config": {"input_dim": 1024}}
    with pytest.raises(SetupError, match="projector input 1024"):
        models.ocr2_transformers_config(Checkpoint("m", DEEPSEEK_OCR2, "original", None, bad))


def test_transformers_image_processor_defaults_are_the_official_settings():
    from transformers import DeepseekOcr2ImageProcessorPil

    proc = DeepseekOcr2ImageProcessorPil()
    assert proc.size == {"height": DEEPSEEK_OCR2.base_size, "width": DEEPSEEK_OCR2.base_size}
    assert proc.tile_size == DEEPSEEK_OCR2.tile_size
    assert (proc.min_patches, proc.max_patches) == DEEPSEEK_OCR2.crops


@pytest.fixture(scope="module")
def vllm_modules():
    pytest.importorskip("vllm")
    from vllm.model_executor.models import deepencoder2, deepseek_ocr2, registry
    from vllm.transformers_utils.processors import deepseek_ocr
    return registry, deepseek_ocr2, deepseek_ocr, deepencoder2


def test_facts_match_the_installed_vllm(vllm_modules):
    registry, v2, processor, encoder = vllm_modules
    for family in models.FAMILIES:
        assert family.vllm_architecture in registry._MULTIMODAL_MODELS, family.name
    assert (v2.BASE_SIZE, v2.IMAGE_SIZE) == (DEEPSEEK_OCR2.base_size, DEEPSEEK_OCR2.tile_size)
    assert (processor.BASE_SIZE, processor.IMAGE_SIZE) == (DEEPSEEK_OCR.base_size, DEEPSEEK_OCR.tile_size)
    assert (processor.MIN_CROPS, processor.MAX_CROPS) == DEEPSEEK_OCR2.crops == DEEPSEEK_OCR.crops
    fixed = {k: p.default for k, p in pyinspect.signature(encoder.build_qwen2_decoder_as_encoder).parameters.items()}
    assert fixed == {"decoder_layer": models.OCR2_ENCODER["num_hidden_layers"],
                     "hidden_dimension": models.OCR2_ENCODER["hidden_size"],
                     "num_attention_heads": models.OCR2_ENCODER["num_attention_heads"],
                     "num_key_value_heads": models.OCR2_ENCODER["num_key_value_heads"],
                     "intermediate_size": models.OCR2_ENCODER["intermediate_size"]}


def test_vllm_reads_the_original_v2_config_with_its_own_class(vllm_modules):
    from vllm.transformers_utils.configs.deepseek_vl2 import DeepseekVLV2Config

    config = DeepseekVLV2Config(**V2_ORIGINAL)
    assert config.model_type == "deepseek_ocr2" and config.vision_config.image_size == 1024
    assert config.projector_config.input_dim == 896 and config.text_config.hidden_size == 128
