"""The engines behind the runner: the contract (base), vLLM (vllm), transformers (hf), and the supervisor.

Importing this package imports no engine library; `ocr.engines.vllm` and `ocr.engines.hf` load theirs lazily.
"""

from .base import Engine, EngineCaps, EngineDead, Failure

__all__ = ["Engine", "EngineCaps", "EngineDead", "Failure"]
