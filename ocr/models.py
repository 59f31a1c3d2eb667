"""Which DeepSeek-OCR a checkpoint is, read from its config.json, and the facts that differ per model.

Two families share the prompts and the page clean-up but not the vision encoder:

- DeepSeek-OCR (v1): SAM + CLIP vision towers, 1024 global view + 640 tiles. vLLM runs it natively;
  transformers only through the checkpoint's own code (`modeling_deepseekocr.py`, trust_remote_code).
- DeepSeek-OCR-2: SAM + a Qwen2 encoder ("visual causal flow"), 1024 global view + 768 tiles. vLLM runs it
  natively (`vllm/model_executor/models/deepseek_ocr2.py`), and transformers too (`models/deepseek_ocr2`).

A DeepSeek-OCR-2 checkpoint comes in one of two config layouts (the weights use the same tensor names):
"original" (deepseek-ai/DeepSeek-OCR-2: model_type deepseek_vl_v2 with language_config/projector_config,
what vLLM reads) and "transformers" (deepseek-community/DeepSeek-OCR-2: model_type deepseek_ocr2 with
text_config/vision_config, what transformers' own classes read). The transformers runner takes both; vLLM
needs the original layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .checkpoint import SetupError

PROMPTS = {  # DeepSeek-OCR's own prompt strings; DeepSeek-OCR-2 uses the same ones
    "grounded": "<image>\n<|grounding|>Convert the document to markdown.",
    "clean": "<image>\nConvert the document to markdown.",
}
# A new chat turn means the page is over; the model sometimes starts one instead of stopping.
STOP_STRINGS = ("<|User|>", "<|Assistant|>", "<｜User｜>", "<｜Assistant｜>")


@dataclass(frozen=True)
class Family:
    key: str                      # "deepseek-ocr" | "deepseek-ocr-2"
    name: str                     # for messages
    hub_id: str                   # the official checkpoint
    vllm_architecture: str        # as registered in vLLM's model registry
    base_size: int                # global view, pixels (padded square)
    tile_size: int                # local crops, pixels
    crops: tuple[int, int]        # (min, max) crops for a page larger than one tile; none for smaller pages
    vllm_ngram: tuple[int, int]   # (size, window) of the vLLM runner's n-gram guard when not given
    transformers_native: bool     # transformers has its own classes (no trust_remote_code needed)
    prompts: Mapping[str, str] = field(default_factory=lambda: dict(PROMPTS))


DEEPSEEK_OCR = Family(
    key="deepseek-ocr", name="DeepSeek-OCR", hub_id="deepseek-ai/DeepSeek-OCR",
    vllm_architecture="DeepseekOCRForCausalLM", base_size=1024, tile_size=640, crops=(2, 6),
    vllm_ngram=(30, 90),          # vLLM's DeepSeek-OCR recipe
    transformers_native=False,
)
DEEPSEEK_OCR2 = Family(
    key="deepseek-ocr-2", name="DeepSeek-OCR-2", hub_id="deepseek-ai/DeepSeek-OCR-2",
    vllm_architecture="DeepseekOCR2ForCausalLM", base_size=1024, tile_size=768, crops=(2, 6),
    vllm_ngram=(20, 90),          # DeepSeek-OCR-2's own image runner (run_dpsk_ocr2_image.py)
    transformers_native=True,
)
FAMILIES = (DEEPSEEK_OCR, DEEPSEEK_OCR2)
KNOWN_IDS = {  # Hugging Face ids, for choosing before anything is downloaded
    "deepseek-ai/deepseek-ocr": (DEEPSEEK_OCR, "original"),
    "deepseek-ai/deepseek-ocr-2": (DEEPSEEK_OCR2, "original"),
    "deepseek-community/deepseek-ocr-2": (DEEPSEEK_OCR2, "transformers"),
}
# The Qwen2 encoder of DeepSeek-OCR-2: vLLM builds it with these sizes whatever the config says
# (deepencoder2.build_qwen2_decoder_as_encoder), so a converted config must say the same.
OCR2_ENCODER = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                "num_key_value_heads": 2, "intermediate_size": 4864, "max_position_embeddings": 131072,
                "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}
# Keys of the original language_config that transformers' DeepseekOcr2TextConfig also has.
TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "n_routed_experts", "n_shared_experts",
             "num_experts_per_tok", "routed_scaling_factor", "topk_method", "n_group", "topk_group",
             "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id", "hidden_act")


@dataclass(frozen=True)
class Checkpoint:
    """A model as the runners see it: where it is (None: not on disk yet), its family and config layout."""
    model: str
    family: Family
    layout: str                               # "original" | "transformers"
    path: Path | None = None
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text_config(self) -> Mapping[str, Any]:
        return self.config.get("language_config") or self.config.get("text_config") or self.config

    @property
    def attention_heads(self) -> int:
        """Of the language model: tensor parallelism must divide it (10 for both released models)."""
        return int(self.text_config.get("num_attention_heads", 10))

    @property
    def head_dim(self) -> int | None:
        """The language model's real head size (hidden / heads), when the config is at hand."""
        hidden, heads = self.text_config.get("hidden_size"), self.text_config.get("num_attention_heads")
        return hidden // heads if hidden and heads else None

    @property
    def has_remote_code(self) -> bool:
        """The checkpoint names its own Python classes (auto_map) and ships at least one .py file."""
        return bool(self.config.get("auto_map")) and (self.path is None or any(self.path.glob("*.py")))

    def vllm_hf_overrides(self) -> dict[str, Any]:
        """hf_overrides for vLLM's LLM(...): the architecture to run, the config class to read, the head size.

        vLLM reads both models' configs with its DeepseekVLV2Config, registered for model_type
        deepseek_vl_v2; a checkpoint that says otherwise on disk gets that type named too."""
        if self.layout != "original":
            raise SetupError(
                f"{self.model} is the transformers layout of {self.family.name} (model_type deepseek_ocr2, "
                f"no language_config): vLLM needs the original checkpoint, e.g. --model {self.family.hub_id}; "
                f"or run it with run_pdf_ocr.py")
        overrides: dict[str, Any] = {"architectures": [self.family.vllm_architecture]}
        if self.config.get("model_type", "deepseek_vl_v2") != "deepseek_vl_v2":
            overrides["model_type"] = "deepseek_vl_v2"
        if head_dim := self.head_dim:
            # transformers sets head_dim = qk_rope_head_dim, which is 0 for both models (no MLA); vLLM then
            # sizes attention buffers from 0 and crashes on GPUs (bench/GPU_RESULTS.md)
            overrides["text_config"] = {"head_dim": head_dim}
        return overrides

    def ngram(self, size: int | None, window: int | None) -> tuple[int, int]:
        """The vLLM runner's n-gram guard: the flags where given, else this family's defaults."""
        default_size, default_window = self.family.vllm_ngram
        return (default_size if size is None else size, default_window if window is None else window)


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SetupError(f"{folder} has no config.json: point --model at a DeepSeek-OCR checkpoint folder") \
            from None
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot read {path}: {exc}") from exc


def detect(config: Mapping[str, Any], where: str = "config.json") -> tuple[Family, str]:
    """(family, layout) from a checkpoint's config: the architectures it names, then its model_type."""
    archs = set(config.get("architectures") or ())
    model_type = config.get("model_type")
    layout = "original" if "language_config" in config else "transformers"
    v2_archs = {"DeepseekOCR2ForCausalLM", "DeepseekOcr2ForConditionalGeneration"}
    if model_type == "deepseek_ocr2" or archs & v2_archs:
        return DEEPSEEK_OCR2, layout
    if "DeepseekOCRForCausalLM" in archs or model_type == "deepseek_ocr":
        return DEEPSEEK_OCR, layout
    raise SetupError(f"{where}: not a DeepSeek-OCR or DeepSeek-OCR-2 checkpoint "
                     f"(architectures {sorted(archs) or 'none'}, model_type {model_type!r})")


def inspect(model: str) -> Checkpoint:
    """The checkpoint behind --model: read from its folder, or known by its Hugging Face id."""
    path = Path(model).expanduser()
    if path.is_dir():
        config = read_config(path)
        family, layout = detect(config, str(path / "config.json"))
        return Checkpoint(model, family, layout, path, config)
    known = KNOWN_IDS.get(model.lower())
    if known is None:
        raise SetupError(f"cannot tell which model {model} is: pass a checkpoint folder with its config.json")
    return Checkpoint(model, known[0], known[1])


def with_local(checkpoint: Checkpoint, folder: str | Path) -> Checkpoint:
    """The same model once it is on disk (after resolve_model): its config read from there."""
    return inspect(str(folder)) if checkpoint.path is None else checkpoint


def ocr2_text_config(language_config: Mapping[str, Any]) -> dict[str, Any]:
    """transformers' DeepseekOcr2TextConfig fields from the original language_config (a DeepSeek-V2 MoE)."""
    text = {k: language_config[k] for k in TEXT_KEYS if language_config.get(k) is not None}
    layers = int(language_config["num_hidden_layers"])
    dense = int(language_config.get("first_k_dense_replace", 0))
    text["mlp_layer_types"] = ["dense" if i < dense else "sparse" for i in range(layers)]
    return text


def ocr2_transformers_config(checkpoint: Checkpoint, image_token_id: int | None = None) -> Any:
    """transformers' DeepseekOcr2Config for a DeepSeek-OCR-2 checkpoint of either layout."""
    from transformers import AutoConfig, DeepseekOcr2Config

    if checkpoint.family is not DEEPSEEK_OCR2:
        raise SetupError(f"{checkpoint.model} is {checkpoint.family.name}, not DeepSeek-OCR-2")
    if checkpoint.layout == "transformers":
        return AutoConfig.from_pretrained(str(checkpoint.path) if checkpoint.path else checkpoint.model)
    original = checkpoint.config
    kwargs: dict[str, Any] = dict(
        text_config=ocr2_text_config(original["language_config"]),
        vision_config={"encoder_config": dict(OCR2_ENCODER)},   # SAM ViT-B: transformers' defaults
        tie_word_embeddings=False,
    )
    if image_token_id is not None:
        kwargs["image_token_id"] = image_token_id
    config = DeepseekOcr2Config(**kwargs)
    projector_in = (original.get("projector_config") or {}).get("input_dim")
    if projector_in not in (None, OCR2_ENCODER["hidden_size"]):
        raise SetupError(f"{checkpoint.model}: projector input {projector_in} does not match the Qwen2 "
                         f"encoder width {OCR2_ENCODER['hidden_size']} of DeepSeek-OCR-2")
    return config
