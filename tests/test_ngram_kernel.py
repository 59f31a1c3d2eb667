"""The n-gram guard's Triton kernel (ocr/engines/ngram_kernel.py) bans exactly what the tensor version bans,
run on this CPU by Triton's interpreter (TRITON_INTERPRET=1) in a subprocess, with Triton from
$OCR_TRITON_DIR (.ci/run installs it there; the runner's own environment stays without Triton, as the
CPU build of vLLM expects)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

TRITON_DIR = Path(os.environ.get("OCR_TRITON_DIR", ROOT / ".cache" / "triton"))

pytestmark = pytest.mark.skipif(not (TRITON_DIR / "triton").is_dir(),
                                reason=f"no Triton in {TRITON_DIR} (.ci/run installs it; set OCR_TRITON_DIR)")


def interpret(code: str, timeout: float = 900) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(TRITON_DIR), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


KERNEL_AGAINST_TENSORS = r'''
import random, torch
from ocr.engines import ngram, ngram_kernel
assert ngram_kernel.usable(torch.zeros(1))
rng = random.Random(7)
vocab, cases, bans = 24, 0, 0
for case in range(120):
    slots_n = rng.randint(1, 6)
    prompt = torch.tensor([rng.randint(1, 40) for _ in range(slots_n)], dtype=torch.int32)
    out_len = torch.tensor([rng.choice([0, 1, 2, 3, 5, 29, 30, 31, 89, 90, 91, 200, 200, 200]) for _ in range(slots_n)],
                           dtype=torch.int32)
    total = prompt + out_len
    tokens = torch.randint(0, 3, (slots_n, 300), dtype=torch.int32)          # 3 ids: n-grams repeat
    for s in range(slots_n):                                                  # and a loop now and then
        if rng.random() < 0.5:
            span = torch.randint(0, vocab, (rng.randint(1, 12),), dtype=torch.int32)
            tokens[s] = span.repeat(300 // len(span) + 1)[:300]
    n = torch.tensor([rng.choice([0, 1, 2, 2, 3, 3, 5, 30]) for _ in range(slots_n)])
    window = torch.tensor([rng.choice([1, 2, 4, 30, 90, 100]) for _ in range(slots_n)])
    kw = rng.choice([0, 1, 3])
    white = torch.tensor([[rng.choice([-2, 0, 1, 2, 5]) for _ in range(kw)] for _ in range(slots_n)],
                         dtype=torch.int32).view(slots_n, kw)
    slots = torch.tensor([rng.randrange(slots_n) for _ in range(rng.randint(1, 8))], dtype=torch.int32)
    s = slots.long()
    width = int(max(window[s].max(), n[s].max()))
    k = int(n[s].max()) - 1
    logits = torch.randn(len(slots), vocab)
    want = logits.clone()
    if k >= 1:     # what NGramGuardV2's tensor path does
        cols = (total[s].long().unsqueeze(1) - width + torch.arange(width)).clamp(min=0)
        ngram.ban_ngrams_(want, tokens[s.unsqueeze(1), cols], out_len[s].long(), n[s], window[s], white[s], k)
    got = logits.clone()
    assert ngram_kernel.ban_(got, tokens, total, prompt, slots, n, window, white, width)
    assert torch.equal(got, want), (case, (got != want).nonzero().tolist())
    # NGramGuardV1's layout: each row's right-aligned history, its end = width, its start = width - length
    if k >= 1:
        hist = tokens[s.unsqueeze(1), cols].contiguous()
        lengths = out_len[s].long()
        ends = torch.full((len(slots),), width, dtype=torch.long)
        rows = torch.arange(len(slots), dtype=torch.int32)
        v1 = logits.clone()
        assert ngram_kernel.ban_(v1, hist, ends, ends - lengths, rows, n[s], window[s], white[s].contiguous(), width)
        assert torch.equal(v1, want), ("v1", case)
    cases += 1
    bans += int(torch.isinf(want).sum())
# an id outside the vocabulary (never in a real history) is not written: the next row stays as it was
tokens = torch.full((2, 40), vocab + 1, dtype=torch.int32)
one, rows = torch.tensor([2, 2]), torch.tensor([0, 1], dtype=torch.int32)
logits = torch.randn(2, vocab)
got = logits.clone()
assert ngram_kernel.ban_(got, tokens, torch.tensor([40, 40]), torch.tensor([0, 0]), rows, one, one * 10,
                         torch.zeros(2, 0, dtype=torch.int32), 10)
assert torch.equal(got, logits)
# a window too wide for one block is left to the tensor operations, and the kernel stays on
assert not ngram_kernel.ban_(got, tokens, torch.tensor([40, 40]), torch.tensor([0, 0]), rows, one, one * 10,
                             torch.zeros(2, 0, dtype=torch.int32), ngram_kernel.MAX_WIDTH + 1)
assert ngram_kernel.usable(got)
print("cases", cases, "bans", bans)
'''


def test_the_kernel_bans_exactly_what_the_tensor_version_bans():
    """120 random batches (short and long outputs, n = 0..30, windows shorter and longer than n, whitelists,
    rows sharing a slot), in both layouts the guard classes use: logits bit for bit equal."""
    out = interpret(KERNEL_AGAINST_TENSORS)
    cases, bans = (int(x) for x in out.split()[1::2])
    assert cases == 120 and bans > 100, out


def test_the_guard_classes_take_the_kernel_where_it_can_run(monkeypatch):
    """On CPU logits without the interpreter (and with OCR_NGRAM_KERNEL=0) the tensor operations run."""
    import torch
    from ocr.engines import ngram_kernel

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not ngram_kernel.usable(torch.zeros(1))
    out = interpret("import torch, os\nfrom ocr.engines import ngram_kernel\n"
                    "print(ngram_kernel.usable(torch.zeros(1)))\n"
                    "os.environ['OCR_NGRAM_KERNEL'] = '0'\nprint(ngram_kernel.usable(torch.zeros(1)))\n")
    assert out.split() == ["True", "False"]


def test_the_guards_with_the_kernel_ban_what_vllms_guard_bans():
    """tests/test_ngram_guard.py's equivalence runs against vLLM's own guard (requests arriving, finishing,
    preempted and resumed, rows moved; logits compared bit for bit), again with the kernel in both guard
    classes: the V2 run and the smallest V1 run (the interpreter takes minutes for the others)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(TRITON_DIR), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_ngram_guard.py"), "-k",
                           "test_v2_bans_exactly_what_vllms_guard_bans or test_v1_bans_exactly_what_vllms_guard_bans"
                           " and 1-6-12"], cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_a_kernel_that_cannot_run_falls_back_to_the_tensor_operations(monkeypatch, caplog):
    """A Triton that cannot compile on this machine costs one warning, not the run: ban_ says it did
    nothing, and usable() is False from then on."""
    import torch
    from ocr.engines import ngram_kernel

    def broken(*args):
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(ngram_kernel, "_kernel", broken)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    logits = torch.zeros(1, 4)
    one = torch.ones(1, dtype=torch.long)
    assert ngram_kernel.ban_(logits, one.view(1, 1), one, one, one.int(), one, one, one.view(1, 1), 1) is False
    assert torch.equal(logits, torch.zeros(1, 4)) and "no C compiler" in caplog.text
    assert not ngram_kernel.usable(logits)
