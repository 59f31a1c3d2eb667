"""The defaults left to the GPU: a GPU of 64 GiB or more gets 256 pages in flight and the vision encoder in CUDA
graphs, a smaller one (the 24 GB L4) or none the measured-safe 128 and eager encoder; what the user set wins."""

from __future__ import annotations

import json
import re
import types

import pytest

from doubles import ScriptedEngine
from ocr import gpu_sizing
from ocr.config import UsageError, parse_config
from ocr.engines.vllm import Platform, engine_kwargs
from ocr.gpu_sizing import gpu_memory_gib, ram_per_gpu_gib, settle
from pdfgen import make_pdf, numbered_pages

H100 = Platform("cuda", fp8_kv=True, capability=(9, 0))


def flags(*extra: str):
    return parse_config(["--input-dir", ".", "--output-dir", "/tmp/x", *extra])


@pytest.mark.parametrize("gib, ram, seqs, in_flight, encoder_graphs", [
    (139.8, 125.0, 256, 320, True),     # the lent H200: one GPU, 128 GB of RAM
    (79.6, 256.0, 256, 320, True),      # H100 80GB, A100 80GB: p5.48xlarge, 2 TB over 8 GPUs
    (79.6, None, 256, 320, True),       # RAM unknown: taken as enough
    (79.6, 32.0, 128, 160, False),      # a big GPU on a box with 32 GiB of RAM per GPU
    (44.4, 192.0, 128, 160, False),     # L40S
    (22.0, 24.0, 128, 160, False),      # L4, the reference box (4x L4, 96 GB)
    (None, None, 128, 160, False),      # no GPU seen
])
def test_the_gpu_s_memory_sets_pages_in_flight_and_encoder_graphs(gib, ram, seqs, in_flight, encoder_graphs):
    cfg = settle(flags(), gib, probe=False, ram_gib=ram)
    kw, _ = engine_kwargs(cfg, H100)
    assert (cfg.batch_pages, cfg.pages_in_flight, kw["max_num_seqs"]) == (seqs, in_flight, seqs)
    assert kw["compilation_config"].get("cudagraph_mm_encoder", False) is encoder_graphs


def test_what_the_user_set_wins_on_any_gpu():
    assert flags().batch_pages is None and flags().mm_encoder_cudagraph is None
    cfg = settle(flags("--batch-pages", "64", "--no-mm-encoder-cudagraph"), 139.8)
    assert (cfg.batch_pages, cfg.mm_encoder_cudagraph) == (64, False)
    cfg = settle(flags("--mm-encoder-cudagraph"), 22.0)
    assert (cfg.batch_pages, cfg.mm_encoder_cudagraph) == (128, True)
    assert settle(cfg, 139.8) == cfg                               # settled once: nothing left to the GPU


def test_gpu_memory_comes_from_vllms_platform(monkeypatch):
    import vllm.platforms
    assert gpu_memory_gib() is None                                # this machine: vLLM's CPU platform
    assert ram_per_gpu_gib() is None                               # and no NVML
    gpu = types.SimpleNamespace(is_cuda=lambda: True, get_device_total_memory=lambda i: 150_117_908_480)
    monkeypatch.setattr(vllm.platforms, "current_platform", gpu)
    monkeypatch.setattr("ocr.gpu_sizing.ram_per_gpu_gib", lambda: 125.0)
    assert gpu_memory_gib() == pytest.approx(139.8, abs=0.05)
    assert settle(flags()).batch_pages == 256
    monkeypatch.setattr("ocr.gpu_sizing.ram_per_gpu_gib", lambda: 30.0)      # 8 such GPUs, 240 GiB of RAM
    assert settle(flags()).batch_pages == 128

    def no_nvml(i):
        raise RuntimeError("NVML Shared Library Not Found")
    monkeypatch.setattr(vllm.platforms, "current_platform", types.SimpleNamespace(
        is_cuda=lambda: True, get_device_total_memory=no_nvml))
    assert gpu_memory_gib() is None and settle(flags()).batch_pages == 128


def test_the_runner_settles_before_the_engine_and_the_report(tmp_path, inline_render):
    """A run on a big GPU: the engine is built from the settled settings and the report says what ran."""
    from ocr.cli import VLLM, run
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(2, "A"))
    built = []

    def factory(cfg):
        built.append(cfg)
        return ScriptedEngine
    big = VLLM.__class__(VLLM.spec, factory, lambda cfg: settle(cfg, 139.8, ram_gib=125.0))
    cfg = parse_config(["--input-dir", str(src), "--output-dir", str(out), "--render-workers", "1", "--no-progress"])
    assert run(cfg, runner=big) == 0
    assert [(c.batch_pages, c.mm_encoder_cudagraph) for c in built] == [(256, True)]
    settings = json.loads((out / "run_report.json").read_text())["settings"]
    assert (settings["batch_pages"], settings["mm_encoder_cudagraph"]) == (256, True)
    assert (out / "a.md").read_text().count("Text of page") == 2


@pytest.mark.parametrize("utilization, was_set, share, expected", [
    (0.9, False, 1.0, 0.9),        # a GPU of its own: as given
    (0.9, False, 0.5, 0.45),       # the default, halved for two workers
    (0.9, False, 1 / 3, 0.3),
    (0.4, True, 0.5, 0.4),         # a set share that fits twice is kept
    (0.9, True, 1.0, 0.9),
])
def test_workers_sharing_a_gpu_ask_for_their_share_of_its_memory(utilization, was_set, share, expected):
    assert gpu_sizing.memory_share(utilization, was_set, share, "--workers-per-gpu 2") == pytest.approx(expected)


@pytest.mark.parametrize("workers", [2, 3, 4, 6, 7, 8])
def test_a_set_share_that_does_not_fit_is_refused_with_one_that_does(workers):
    with pytest.raises(UsageError, match=re.escape(f"--gpu-memory-utilization 0.9 does not fit --workers-per-gpu "
                                                   f"{workers}: use at most ")) as refused:
        gpu_sizing.memory_share(0.9, True, 1 / workers, f"--workers-per-gpu {workers}")
    most = float(str(refused.value).split("use at most ")[1].split(",")[0])
    assert gpu_sizing.memory_share(most, True, 1 / workers, "") == most      # what it suggests is taken
    assert most > gpu_sizing.GPU_MEMORY_SHARED / workers - 0.01
