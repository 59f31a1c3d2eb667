"""The runner's process on a GPU runs vLLM's input processor with --input-torch-threads torch threads (one
by default), and an engine it (re)builds starts with torch's own thread count, not that one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ocr.config import Config

torch = pytest.importorskip("torch")
vllm = pytest.importorskip("vllm")
ROOT = Path(__file__).resolve().parents[1]


class _Tokenizer:
    unk_token_id, all_special_tokens = 0, ["<s>"]

    def convert_tokens_to_ids(self, tokens):
        return [5 + i for i, _ in enumerate(tokens)]


class _FakeLLM:
    """What VllmEngine calls on vllm.LLM, recording the torch threads of the process when it is built."""
    threads_at_build: list[int] = []

    def __init__(self, **kwargs):
        self.threads_at_build.append(torch.get_num_threads())
        self.llm_engine = self
        self.input_processor = self.engine_core = self

    def process_inputs(self, rid, prompt, params, supported_tasks=()):
        return torch.get_num_threads()              # what the input threads see

    def add_request(self, *args):
        pass

    def step(self):
        return []

    def shutdown(self):
        pass

    def get_tokenizer(self):
        return _Tokenizer()

    def get_supported_tasks(self):
        return ("generate",)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_tiny_checkpoint import build
    return build(tmp_path_factory.mktemp("tiny-threads"))


@pytest.mark.parametrize("threads", [1, 3, 0])
def test_input_threads_use_their_own_torch_thread_count(tmp_path, monkeypatch, tiny_checkpoint, threads):
    from ocr.engines import vllm as engine_mod
    monkeypatch.setattr(vllm, "LLM", _FakeLLM)
    monkeypatch.setattr(engine_mod.VllmEngine, "_vision_modes", staticmethod(lambda cfg, ckpt: ("gundam",)))
    default = original = torch.get_num_threads()
    if default == threads:                   # set apart from unset: torch's own count must differ
        monkeypatch.setattr(engine_mod, "_torch_default_threads", [default + 1])
        default += 1
    _FakeLLM.threads_at_build.clear()
    cfg = Config(input_dir=tmp_path, output_dir=tmp_path / "out", model=str(tiny_checkpoint), ngram_size=0,
                 input_torch_threads=threads)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cuda = engine_mod.Platform("cuda", fp8_kv=True, capability=(9, 0))
    engines = []
    try:
        engines.append(engine_mod.VllmEngine(cfg, platform=cuda))
        first = engines[-1]
        seen = first._prep.submit(first.llm.llm_engine.input_processor.process_inputs, "r", {}, None).result()
        assert seen == (threads or default)
        first.close()
        engines.append(engine_mod.VllmEngine(cfg, platform=cuda))      # the engine rebuilt after a death
        engines[-1].close()
        assert _FakeLLM.threads_at_build == [default, default]         # vLLM's processes start with torch's own
        engines.append(engine_mod.VllmEngine(cfg, platform=engine_mod.Platform("cpu", fp8_kv=False)))
        assert torch.get_num_threads() == default                     # the CPU engine shares these cores
    finally:
        for engine in engines:
            engine.close()
        engine_mod.set_torch_threads(None)
        after = torch.get_num_threads()
        torch.set_num_threads(original)
    assert after == default


def test_a_gpu_engine_loads_holding_its_gpus_load_lock(tmp_path, monkeypatch, tiny_checkpoint):
    """On CUDA, vllm.LLM is built while this GPU's load lock is held (a second runner on the GPU waits),
    and the lock is free once the engine has loaded; the CPU engine takes none."""
    import subprocess
    import tempfile

    from ocr.engines import vllm as engine_mod
    held: list[bool] = []
    lock = tmp_path / "ocr-engine-load-gpu-2.lock"

    class _Recording(_FakeLLM):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            held.append(is_locked())

    def is_locked() -> bool:
        """Whether another process (a second runner on the GPU) would have to wait for the lock."""
        if not lock.exists():
            return False
        probe = subprocess.run([sys.executable, "-c", (
            "import fcntl, sys\n"
            "with open(sys.argv[1], 'a+') as fh:\n"
            "    try:\n"
            "        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "    except OSError:\n"
            "        print('held')\n"), str(lock)], capture_output=True, text=True, timeout=60)
        return probe.stdout.strip() == "held"

    monkeypatch.setattr(vllm, "LLM", _Recording)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    monkeypatch.setattr(engine_mod.VllmEngine, "_vision_modes", staticmethod(lambda cfg, ckpt: ("gundam",)))
    cfg = Config(input_dir=tmp_path, output_dir=tmp_path / "out", model=str(tiny_checkpoint), ngram_size=0)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    for platform in (engine_mod.Platform("cuda", fp8_kv=True, capability=(9, 0)),
                     engine_mod.Platform("cpu", fp8_kv=False)):
        engine = engine_mod.VllmEngine(cfg, platform=platform)
        try:
            assert not is_locked()
        finally:
            engine.close()
            engine_mod.set_torch_threads(None)
    assert held == [True, False]
