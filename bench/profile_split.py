#!/usr/bin/env python
"""Where the engine core's time goes: a py-spy sample file split into the engine's stages.

    py-spy record --format raw --idle --threads --full-filenames -r 50 -d 15 -p ENGINE_CORE_PID -o core.txt
    python bench/profile_split.py core.txt [--json split.json]

py-spy's raw format has one line per distinct stack, `thread (TID): NAME;frame;...;frame COUNT`, outermost frame first.
Each sample is given to the first stage in STAGES whose pattern occurs in any of its frames (the order
matters: the n-gram guard runs inside the sampler, the vision encoder inside execute_model). Samples of
the engine core's main thread only (its other threads wait on sockets); `--all-threads` keeps them all.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

# (stage, patterns matched against each frame "function (file:line)"), first match wins.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logits processors (n-gram guard)", ("logits_processor", "LogitsProcessor", "ngram", "NGram")),
    ("sampler", ("/sample/", "sampler.py", "sample_tokens", "def sample")),
    ("vision encoder", ("_execute_mm_encoder", "execute_mm_encoder", "_process_image_input", "deepencoder",
                        "ImageEncoderViT", "encoder_cudagraph", "/mm/encoder")),
    ("multimodal input batching", ("_reduce_data", "MultiModalFlatField", "group_mm_kwargs",
                                   "batched_tensors", "_gather_mm_embeddings", "gather_mm")),
    ("decoder forward", ("_model_forward", "cudagraph", "CUDAGraph", "model_executor/models/deepseek",
                         "model_executor/layers")),
    ("input preparation", ("prepare_inputs", "_prepare_inputs", "prepare_attn", "add_requests",
                           "update_requests", "_update_states", "input_batch", "block_table")),
    ("scheduler", ("core/sched/", "scheduler.py")),
    ("output processing", ("update_from_output", "output_processor", "detokeniz", "process_outputs",
                           "_bookkeeping", "ModelRunnerOutput", "postprocess")),
    ("waiting for work (input queue, sockets)", ("queue.py", "_process_input_queue", "zmq", "select",
                                                 "poll (", "wait (", "run_busy_loop")),
)
OTHER = "other"
_LINE = re.compile(r"^(?P<stack>.*\S)\s+(?P<count>\d+)$")


def parse(text: str) -> list[tuple[list[str], int]]:
    """(frames outermost first, sample count) per line of py-spy's raw output."""
    stacks = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            stacks.append((m["stack"].split(";"), int(m["count"])))
    return stacks


def stage_of(frames: list[str]) -> str:
    for stage, patterns in STAGES:
        if any(p in frame for frame in frames for p in patterns):
            return stage
    return OTHER


def main_thread(stacks: list[tuple[list[str], int]]) -> list[tuple[list[str], int]]:
    """The engine core's busy loop: the MainThread (py-spy --threads puts the thread first), else the thread
    with the most samples."""
    per_thread: Counter[str] = Counter()
    for frames, n in stacks:
        per_thread[frames[0] if frames else ""] += n
    if not per_thread:
        return []
    named = [t for t in per_thread if t.endswith(": MainThread")]
    top = named[0] if named else per_thread.most_common(1)[0][0]
    return [(f, n) for f, n in stacks if f and f[0] == top]


def split(stacks: list[tuple[list[str], int]]) -> dict[str, float]:
    """Share of samples per stage, largest first, shares summing to 1."""
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        counts[stage_of(frames)] += n
    total = sum(counts.values()) or 1
    return {stage: n / total for stage, n in counts.most_common()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples", type=Path, help="py-spy record --format raw output")
    ap.add_argument("--all-threads", action="store_true", help="count every thread's samples")
    ap.add_argument("--json", type=Path, help="write the split here too")
    a = ap.parse_args(argv)
    stacks = parse(a.samples.read_text(errors="replace"))
    if not a.all_threads:
        stacks = main_thread(stacks)
    total = sum(n for _, n in stacks)
    if not total:
        print(f"{a.samples}: no samples", file=sys.stderr)
        return 1
    shares = split(stacks)
    print(f"{total} samples")
    for stage, share in shares.items():
        print(f"{share:7.1%}  {stage}")
    if a.json:
        a.json.write_text(json.dumps({"samples": total, "split": shares}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
