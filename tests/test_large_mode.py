"""Large-mode retry: the decision (missing labels, cap, which answer to keep), the request it sends, the
plugin's registration, and one real-engine run proving a Large request works beside a Gundam one."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, shared
from ocr.engines import vision_modes
from ocr.engines.vision_modes import GUNDAM, LARGE, engine_prompt, expected_large_tokens, prepare_image
from ocr.large_mode import counters, keep_large, missing_labels, parse_required

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "raw_outputs"
TABLE_PAGE = ("<|ref|>title<|/ref|><|det|>[[50, 20, 950, 60]]<|/det|>\n# Prices\n\n"
              "<|ref|>table<|/ref|><|det|>[[50, 80, 950, 400]]<|/det|>\n<table><tr><td>1</td></tr></table>\n")
TEXT_PAGE = "<|ref|>text<|/ref|><|det|>[[50, 80, 950, 400]]<|/det|>\nJust a paragraph.\n"


def raw(name: str) -> str:
    return shared(RAW / name).read_text(encoding="utf-8")


# --- the decision -------------------------------------------------------------------------------------

def test_missing_table():
    assert missing_labels(TEXT_PAGE, ("table",)) == {"table"}
    assert missing_labels(TABLE_PAGE, ("table",)) == set()


def test_several_required_labels_and_spelling():
    assert missing_labels(TABLE_PAGE, "table, image") == {"image"}
    assert missing_labels(TABLE_PAGE, " Table ,TITLE") == set()
    assert parse_required("table,,image, table") == ("table", "image")


def test_a_cut_off_table_block_counts_as_found():
    assert missing_labels(TEXT_PAGE + "<|ref|>table<|/ref|><|det|>[[50, 4", ["table"]) == set()


def test_a_clean_page_lacks_every_label():
    assert missing_labels("| a | b |\n|---|---|\n| 1 | 2 |", ["table"]) == {"table"}


def test_real_outputs():
    assert missing_labels(raw("13_grounded-table-footnote-refs-en.txt"), ["table"]) == set()
    assert missing_labels(raw("19_webui-short-ui-screenshot-en.txt"), ["table"]) == {"table"}
    assert missing_labels(raw("07_hf-stdout-image-captions-center-en.txt"), ["table", "image"]) == {"table"}


def test_keep_large_only_when_it_finds_more():
    assert keep_large(TEXT_PAGE, TABLE_PAGE, ["table"])
    assert not keep_large(TEXT_PAGE, TEXT_PAGE + "more", ["table"])
    assert not keep_large(TABLE_PAGE, TABLE_PAGE, ["table"])
    assert keep_large(TEXT_PAGE, TABLE_PAGE, ["table", "image"])   # 2 missing -> 1 missing


def test_a_runaway_large_answer_is_never_kept():
    looping = TABLE_PAGE + "\n".join(["the same row of text again"] * 30)
    assert not keep_large(TEXT_PAGE, looping, ["table"])
    assert not keep_large(TEXT_PAGE, TABLE_PAGE, ["table"], large_finish_reason="length", max_tokens=6144)


def test_counters():
    assert counters(False, False, False) == {}
    assert counters(True, False, False) == {"large_wanted": 1, "large_capped": 1}
    assert counters(True, True, False) == {"large_wanted": 1, "large_retried": 1}
    assert counters(True, True, True) == {"large_wanted": 1, "large_retried": 1, "large_improved": 1}


# --- the request ----------------------------------------------------------------------------------------

def test_large_request_is_padded_square_with_processor_kwargs():
    page = Image.new("RGB", (600, 800), "white")
    prompt = engine_prompt("<image>\nx", page, LARGE)
    sent = prompt["multi_modal_data"]["image"]
    assert prompt["mm_processor_kwargs"] == {"base_size": 1280, "image_size": 1280, "crop_mode": False}
    assert sent.size == (800, 800)
    assert sent.getpixel((0, 400)) == vision_modes.PAD_COLOR and sent.getpixel((400, 400)) == (255, 255, 255)
    assert sent.getpixel((799, 400)) == vision_modes.PAD_COLOR


def test_gundam_request_is_unchanged():
    page = Image.new("RGB", (600, 800), "white")
    prompt = engine_prompt("<image>\nx", page, GUNDAM)
    assert prompt == {"prompt": "<image>\nx", "multi_modal_data": {"image": page}}
    assert prepare_image(page, GUNDAM) is page


def test_token_counts():
    assert expected_large_tokens() == 421            # ceil(1280/16/4)=20: 20 x (20+1) + separator
    assert vision_modes.view_tokens(1280, 1280, (1, 1)) == 421
    assert vision_modes.view_tokens(1024, 640, (1, 1)) == 273
    assert vision_modes.view_tokens(1024, 640, (2, 3)) == 273 + 30 * 21


def test_token_counts_match_vllms_gundam_formula():
    """view_tokens is vLLM's own count, from sizes rather than module constants."""
    pytest.importorskip("vllm")
    from vllm.model_executor.models.deepseek_ocr import DeepseekOCRProcessingInfo

    for w, h in [(500, 600), (900, 1200), (2000, 1000), (1240, 1754), (640, 6000)]:
        stock = DeepseekOCRProcessingInfo.get_num_image_tokens(None, image_width=w, image_height=h)
        assert vision_modes.image_tokens(GUNDAM, w, h) == stock, (w, h)
        assert vision_modes.image_tokens(LARGE, w, h) == 421


def test_plugin_counts_from_the_produced_tensors_and_from_settings():
    """The two ways the patched processor counts placeholders agree with vLLM's own count."""
    pytest.importorskip("vllm")
    import torch
    from types import SimpleNamespace
    from vllm.model_executor.models import deepseek_ocr as m

    field = lambda t: SimpleNamespace(data=t)                                 # noqa: E731
    large = {"pixel_values": field(torch.zeros(3, 1280, 1280)), "images_crop": field(torch.zeros(0, 3, 640, 640)),
             "images_spatial_crop": field(torch.tensor([1, 1]))}
    gundam = {"pixel_values": field(torch.zeros(3, 1024, 1024)), "images_crop": field(torch.zeros(6, 3, 640, 640)),
              "images_spatial_crop": field(torch.tensor([2, 3]))}
    assert vision_modes._item_tokens(large) == 421
    assert vision_modes._item_tokens(gundam) == 903
    assert vision_modes._item_tokens({"pixel_values": field(None)}) is None
    assert vision_modes._kwargs_tokens(LARGE.processor_kwargs(), 900, 1200, m) == 421
    for w, h in [(500, 600), (900, 1200), (2000, 1000)]:
        stock = m.DeepseekOCRProcessingInfo.get_num_image_tokens(None, image_width=w, image_height=h)
        assert vision_modes._kwargs_tokens({}, w, h, m) == stock


def test_register_can_be_switched_off(monkeypatch):
    calls = []
    monkeypatch.setattr(vision_modes, "install", lambda: calls.append(1))
    monkeypatch.setenv(vision_modes.DISABLE_ENV, "0")
    vision_modes.register()
    monkeypatch.delenv(vision_modes.DISABLE_ENV)
    vision_modes.register()
    assert calls == [1]


def test_install_refuses_an_unknown_vllm(monkeypatch):
    """If vLLM's DeepSeek-OCR code moved, nothing is patched and Large mode stays off."""
    pytest.importorskip("vllm")
    from vllm.model_executor.models import deepseek_ocr as m

    monkeypatch.delattr(m, "PromptReplacement")
    assert vision_modes.install() is False and not vision_modes.is_installed()


# --- registering the plugin -----------------------------------------------------------------------------

def test_activate_registers_the_entry_point(tmp_path, monkeypatch):
    monkeypatch.setattr(vision_modes, "install", lambda: True)      # this test patches nothing
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("VLLM_PLUGINS", "other")
    dist = vision_modes.activate(tmp_path / "plug")
    assert dist.is_dir() and str(tmp_path / "plug") in sys.path
    assert os.environ["PYTHONPATH"].split(os.pathsep)[-1] == "/elsewhere"
    assert str(tmp_path / "plug") in os.environ["PYTHONPATH"].split(os.pathsep)
    assert os.environ["VLLM_PLUGINS"] == f"other,{vision_modes.PLUGIN_NAME}"
    found = [ep for ep in importlib.metadata.entry_points(group="vllm.general_plugins")
             if ep.name == vision_modes.PLUGIN_NAME]
    assert found and found[0].load() is vision_modes.register


# --- the real engine ------------------------------------------------------------------------------------

SCRIPT = r'''
import json, os, sys, time
from pathlib import Path
if __name__ == "__main__":
    start = time.monotonic()
    sys.path.insert(0, sys.argv[1])
    from PIL import Image, ImageDraw
    from ocr.engines import vision_modes
    vision_modes.activate(Path(sys.argv[3]))
    from vllm import LLM, SamplingParams
    kwargs = dict(model=sys.argv[2], dtype="float32", skip_mm_profiling=True, block_size=256, max_model_len=8192,
                  limit_mm_per_prompt={"image": 1}, enable_prefix_caching=False, mm_processor_cache_gb=0,
                  max_num_batched_tokens=4096, enforce_eager=True,
                  hf_overrides={"architectures": ["DeepseekOCRForCausalLM"]})
    kwargs.update(json.loads(os.environ.get("LARGE_PROBE_LLM_KWARGS", "{}")))   # e.g. GPU backends
    llm = LLM(**kwargs)
    print("LOADED %.1f" % (time.monotonic() - start), flush=True)
    def page(size, word):
        img = Image.new("RGB", size, "white")
        ImageDraw.Draw(img).text((20, 20), word, fill="black")
        return img
    prompt = "<image>\nFree OCR."
    requests = [  # the first keeps the engine busy, so the next two reach the encoder in one batch
        vision_modes.engine_prompt(prompt, page((500, 400), "first")),
        vision_modes.engine_prompt(prompt, page((480, 640), "gundam")),
        vision_modes.engine_prompt(prompt, page((600, 800), "large"), vision_modes.LARGE),
    ]
    image_id = llm.get_tokenizer().convert_tokens_to_ids("<image>")
    outs = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    print("GENERATED %.1f" % (time.monotonic() - start), flush=True)
    print("RESULT " + json.dumps([{"image_tokens": o.prompt_token_ids.count(image_id),
                                   "prompt_tokens": len(o.prompt_token_ids),
                                   "generated": len(o.outputs[0].token_ids),
                                   "finish_reason": o.outputs[0].finish_reason} for o in outs]), flush=True)
'''


@pytest.mark.real_engine
def test_real_engine_runs_a_large_request_beside_gundam_ones(tmp_path):
    """Spawned engine processes (no inherited patches): they must load the plugin through its entry point.
    Without the worker half of the patch, the 1024 and 1280 views in one encoder batch crash the engine."""
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_tiny_checkpoint import build
    ckpt = build(tmp_path / "ckpt")
    script = tmp_path / "large_probe.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
           "PYTHONUNBUFFERED": "1"}
    env.pop("VLLM_PLUGINS", None)
    proc = subprocess.run([sys.executable, str(script), str(ROOT), str(ckpt), str(tmp_path / "plug")],
                          env=env, capture_output=True, text=True, timeout=420)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith(("LOADED", "GENERATED", "RESULT"))))
    first, gundam, large = json.loads(lines[0][len("RESULT "):])
    assert gundam["image_tokens"] == 273                       # 480x640: global view only
    assert large["image_tokens"] == expected_large_tokens() == 421
    stock = vision_modes.image_tokens(GUNDAM, 800, 800)          # what stock vLLM counts for that image
    assert stock != 421
    assert large["prompt_tokens"] - gundam["prompt_tokens"] == 421 - 273
    assert all(r["generated"] == 4 and r["finish_reason"] == "length" for r in (first, gundam, large))
