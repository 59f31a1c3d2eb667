"""DeepSeek-OCR's vision encoder in vLLM 0.32: the eager per-page steps and the encoder-graph batch slicing
without host syncs compute exactly what vLLM's do, and under encoder graphs a batch mixing Large and Gundam
views has its Gundam pages replayed."""

from __future__ import annotations

import random

import pytest

from ocr.engines import vision_encoder, vision_modes

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")


@pytest.fixture
def patched(monkeypatch):
    """vision_modes installed on vLLM's real classes, undone after the test; graph replay recorded."""
    from vllm.model_executor.models import deepseek_ocr as m
    from vllm.v1.worker.encoder_cudagraph import EncoderCudaGraphManager as Graphs
    for cls, names in {m.DeepseekOCRMultiModalProcessor: ("_get_prompt_updates", "_call_hf_processor"),
                       m.DeepseekOCRForCausalLM: ("embed_multimodal", "select_encoder_cudagraph_items",
                                                  "_pixel_values_to_embedding", "_encode_local_features"),
                       Graphs: ("execute",)}.items():
        for name in names:
            current = getattr(cls, name)
            monkeypatch.setattr(cls, name, getattr(current, "__wrapped__", current))   # vLLM's own
        monkeypatch.setattr(cls, vision_modes.PATCH_FLAG, False, raising=False)
    replayed, eager = [], []

    def replay(self, mm_kwargs):
        replayed.append(mm_kwargs)
        return [("graph", float(v.flatten()[0])) for v in mm_kwargs["pixel_values"]]

    def encode(self, **mm_kwargs):
        eager.append(mm_kwargs)
        return [("eager", float(v.flatten()[0])) for v in mm_kwargs["pixel_values"]]
    vllm_select = m.DeepseekOCRForCausalLM.select_encoder_cudagraph_items
    monkeypatch.setenv(vision_encoder.EAGER_ENV, "1")              # the eager steps too (off by default)
    monkeypatch.setattr(vision_encoder, "_original", {})            # what this install records, then gone
    monkeypatch.setattr(vision_encoder, "_active", [True])
    monkeypatch.setattr(Graphs, "execute", replay)
    monkeypatch.setattr(m.DeepseekOCRForCausalLM, "embed_multimodal", encode)
    assert vision_modes.install()
    graphs = object.__new__(Graphs)
    graphs.model = object.__new__(m.DeepseekOCRForCausalLM)
    return graphs, replayed, eager, vllm_select


def batch(grids: list[tuple[int, int]], rng: random.Random) -> dict:
    """An encoder batch as vLLM 0.32 hands it over: stacked 1024 views, the crops of all tiled pages in one
    tensor, the tile grids on the CPU; every view and crop numbered so a mix-up shows."""
    counts = vision_encoder.crop_counts(grids)
    views = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(len(grids))])
    crops = torch.arange(sum(counts) * 3 * 4 * 4, dtype=torch.float32).reshape(-1, 3, 4, 4)
    return {"pixel_values": views + rng.random(), "images_crop": crops,
            "images_spatial_crop": torch.tensor(grids, dtype=torch.long).reshape(-1, 2)}


def test_slicing_selects_what_vllms_selects(patched):
    """Every index list the graph manager can ask for (all in order, a permutation, a subset, one item,
    none), over random mixes of untiled and tiled pages: the same tensors as vLLM's own method."""
    graphs, _, _, vllm_select = patched
    ours = type(graphs.model).select_encoder_cudagraph_items
    assert ours is not vllm_select
    rng = random.Random(7)
    for _ in range(60):
        grids = [rng.choice([(1, 1), (2, 2), (2, 3), (3, 2), (1, 3), (3, 1)]) for _ in range(rng.randint(1, 9))]
        mm = batch(grids, rng)
        n = len(grids)
        perm = rng.sample(range(n), n)
        for indices in (list(range(n)), perm, perm[: max(1, n // 2)], [perm[0]], []):
            want = vllm_select(graphs.model, mm, indices)
            got = ours(graphs.model, mm, indices)
            assert set(got) == set(want)
            for key in want:
                assert torch.equal(got[key], want[key]), (grids, indices, key)


def test_a_mixed_batch_replays_its_gundam_pages(patched):
    """Gundam views (1024) beside Large ones (1280, no crops): the Gundam ones go through the graphs as
    one batch with their own crops and grids, the Large ones are encoded eagerly, outputs in batch order."""
    graphs, replayed, eager, _ = patched
    views = [torch.full((3, 1024, 1024), 0.0), torch.full((3, 1280, 1280), 1.0),
             torch.full((3, 1024, 1024), 2.0), torch.full((3, 1280, 1280), 3.0)]
    grids = torch.tensor([[2, 3], [1, 1], [1, 1], [1, 1]])
    crops = torch.stack([torch.full((3, 640, 640), float(10 + k)) for k in range(6)])
    out = graphs.execute({"pixel_values": views, "images_crop": crops, "images_spatial_crop": grids})
    assert out == [("graph", 0.0), ("eager", 1.0), ("graph", 2.0), ("eager", 3.0)]
    (gundam,) = replayed
    assert gundam["pixel_values"].shape == (2, 3, 1024, 1024)
    assert torch.equal(gundam["images_crop"], crops)                    # page 0's six crops, page 2 none
    assert gundam["images_spatial_crop"].tolist() == [[2, 3], [1, 1]]
    (large,) = eager                                                    # both Large views in one call
    assert large["pixel_values"].shape == (2, 3, 1280, 1280)
    assert [float(v.flatten()[0]) for v in large["pixel_values"]] == [1.0, 3.0]
    assert large["images_crop"].shape[0] == 0 and large["images_spatial_crop"].tolist() == [[1, 1], [1, 1]]


def test_batches_with_nothing_to_replay_are_declined(patched):
    """A batch of Large views only, or one with crops of another size, goes back to vLLM's eager encoder
    (None); a Gundam batch, and any other model's batch, are replayed as before."""
    graphs, replayed, eager, _ = patched
    large = {"pixel_values": torch.zeros(2, 3, 1280, 1280), "images_crop": torch.zeros(0, 3, 640, 640),
             "images_spatial_crop": torch.ones(2, 2, dtype=torch.long)}
    odd = {"pixel_values": torch.zeros(1, 3, 1024, 1024), "images_crop": torch.zeros(4, 3, 1024, 1024),
           "images_spatial_crop": torch.tensor([[2, 2]])}
    gundam = {"pixel_values": torch.zeros(2, 3, 1024, 1024), "images_crop": torch.zeros(6, 3, 640, 640),
              "images_spatial_crop": torch.tensor([[2, 3], [1, 1]])}
    assert graphs.execute(large) is None and graphs.execute(odd) is None
    assert graphs.execute(gundam) == [("graph", 0.0), ("graph", 0.0)]
    other = object.__new__(type(graphs))
    other.model = object()
    assert other.execute(large) == [("graph", 0.0), ("graph", 0.0)]
    assert replayed == [gundam, large] and eager == []


def test_eager_steps_stay_vllms_by_default(monkeypatch, patched):
    """Without OCR_ENCODER_EAGER_PATCH=1 the eager encoder is vLLM's own (ours measured slower on the H200)."""
    from vllm.model_executor.models import deepseek_ocr as m
    cls = m.DeepseekOCRForCausalLM
    theirs = {name: getattr(cls, name).__wrapped__ for name in ("_pixel_values_to_embedding",
                                                                "_encode_local_features")}
    for name, fn in theirs.items():
        monkeypatch.setattr(cls, name, fn)
    monkeypatch.delenv(vision_encoder.EAGER_ENV)
    assert vision_encoder.install_eager(m, []) is False
    assert all(getattr(cls, name) is fn for name, fn in theirs.items())
    monkeypatch.setenv(vision_encoder.EAGER_ENV, "1")
    assert vision_encoder.install_eager(m, []) is True
    assert cls._pixel_values_to_embedding is vision_encoder.pixel_values_to_embedding


def test_slicing_patch_can_be_turned_off(monkeypatch, patched):
    """OCR_ENCODER_SLICE_PATCH=0 keeps vLLM's own slicing (to measure one against the other on a GPU)."""
    graphs, _, _, vllm_select = patched
    cls = type(graphs.model)
    monkeypatch.setattr(cls, "select_encoder_cudagraph_items", vllm_select)
    monkeypatch.setattr(type(graphs), vision_modes.PATCH_FLAG, False)
    monkeypatch.setenv(vision_encoder.SLICE_ENV, "0")
    from vllm.model_executor.models import deepseek_ocr as m
    assert vision_encoder.install(m, type(graphs), vision_modes.is_gundam_batch, vision_modes.PATCH_FLAG, [])
    assert cls.select_encoder_cudagraph_items is vllm_select


def test_without_vllms_slicing_method_mixed_batches_are_still_split(monkeypatch, patched):
    """On a vLLM whose DeepSeek-OCR lacks the slicing method, only the slicing stays vLLM's: a batch with a
    Large view still never reaches the graphs, which were captured for Gundam views."""
    graphs, replayed, _, vllm_select = patched
    cls = type(graphs.model)
    monkeypatch.setattr(cls, "select_encoder_cudagraph_items", vllm_select)
    monkeypatch.setattr(type(graphs), "execute", type(graphs).execute.__wrapped__)
    monkeypatch.setattr(type(graphs), vision_modes.PATCH_FLAG, False)
    from vllm.model_executor.models import deepseek_ocr as m
    assert vision_encoder.install(m, type(graphs), vision_modes.is_gundam_batch, vision_modes.PATCH_FLAG,
                                  list(vision_encoder.NEEDED))
    assert cls.select_encoder_cudagraph_items is vllm_select
    large = {"pixel_values": torch.zeros(1, 3, 1280, 1280), "images_crop": torch.zeros(0, 3, 640, 640),
             "images_spatial_crop": torch.ones(1, 2, dtype=torch.long)}
    assert graphs.execute(large) is None and replayed == []


class FakeEncoder:
    """Small stand-ins for SAM, CLIP and the projector, with the shapes vLLM's DeepSeek-OCR code expects,
    so vLLM's per-page methods run on the CPU: views 3x16x16, SAM features 3x4x4, 6-wide embeddings."""

    def __init__(self, m, ours: bool):
        torch.manual_seed(0)
        cls = m.DeepseekOCRForCausalLM
        pick = (lambda name: getattr(cls, name)) if ours else \
            (lambda name: getattr(getattr(cls, name), "__wrapped__", getattr(cls, name)))
        self._encode_global_features = cls._encode_global_features.__get__(self)
        self._assemble_patch_grid = cls._assemble_patch_grid.__get__(self)
        self._encode_local_features = pick("_encode_local_features").__get__(self)
        self.to_embedding = pick("_pixel_values_to_embedding").__get__(self)
        self.clip = torch.randn(3, 5)
        self.projector = torch.nn.Linear(8, 6)
        self.image_newline, self.view_seperator = torch.randn(6), torch.randn(6)

    def sam_model(self, x):
        return torch.nn.functional.avg_pool2d(x, 4)

    def vision_model(self, x, sam):
        tokens = sam.flatten(2).permute(0, 2, 1) @ self.clip
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)


def test_eager_steps_compute_what_vllms_compute(patched):
    """vLLM's per-page eager encoder against ours (a slice for the list index, the crop count for the sum
    read back), over random mixes of untiled and tiled pages: the same embeddings, bit for bit."""
    from vllm.model_executor.models import deepseek_ocr as m
    theirs, ours = FakeEncoder(m, ours=False), FakeEncoder(m, ours=True)
    assert ours.to_embedding.__func__ is vision_encoder.pixel_values_to_embedding
    rng = random.Random(3)
    for _ in range(20):
        grids = [rng.choice([(1, 1), (2, 2), (2, 3), (3, 1)]) for _ in range(rng.randint(1, 5))]
        count = sum(vision_encoder.crop_counts(grids))
        views, crops = torch.randn(len(grids), 3, 16, 16), torch.randn(count, 3, 16, 16)
        grid = torch.tensor(grids, dtype=torch.long)
        with torch.no_grad():
            want, got = theirs.to_embedding(views, crops, grid), ours.to_embedding(views, crops, grid)
        assert len(got) == len(want) == len(grids)
        assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_a_page_whose_crops_sum_to_zero_keeps_its_crops(patched):
    """vLLM's eager encoder drops a tiled page's crops when their pixel sum is exactly 0 (half black, half
    white), which leaves fewer embeddings than the prompt has placeholders; ours counts the crops."""
    from vllm.model_executor.models import deepseek_ocr as m
    theirs, ours = FakeEncoder(m, ours=False), FakeEncoder(m, ours=True)
    crops = torch.ones(4, 3, 16, 16)
    crops[:, :, :8] = -1.0                                      # normalised black over white: sum 0
    views, grid = torch.randn(1, 3, 16, 16), torch.tensor([[2, 2]])
    with torch.no_grad():
        (want,), (got,) = theirs.to_embedding(views, crops, grid), ours.to_embedding(views, crops, grid)
    global_rows = 4 * 5 + 1                                     # 4x4 grid, a newline per row, separator
    assert want.shape[0] == global_rows
    assert got.shape[0] == global_rows + 8 * 9                  # 2x2 tiles of 4x4: 8 rows of 8 + newline


def test_switched_off_at_run_time_vllms_code_runs(monkeypatch, patched):
    """set_active(worker, False), as bench.py's core-vllmenc run sends it through collective_rpc: vLLM's own
    eager steps and slicing run (the zero-sum page loses its crops again); switched on, ours run again."""
    from vllm.model_executor.models import deepseek_ocr as m
    graphs, _, _, vllm_select = patched
    calls = []
    monkeypatch.setitem(vision_encoder._original, "select_encoder_cudagraph_items",
                        lambda *args: calls.append(args) or vllm_select(*args))
    ours = FakeEncoder(m, ours=True)
    crops = torch.ones(4, 3, 16, 16)
    crops[:, :, :8] = -1.0
    views, grid = torch.randn(1, 3, 16, 16), torch.tensor([[2, 2]])
    mm = batch([(2, 2), (1, 1)], random.Random(1))
    try:
        assert vision_encoder.set_active(None, False) is True          # installed in this process
        with torch.no_grad():
            (off,) = ours.to_embedding(views, crops, grid)
        type(graphs.model).select_encoder_cudagraph_items(graphs.model, mm, [1])
        assert off.shape[0] == 4 * 5 + 1 and len(calls) == 1
    finally:
        vision_encoder.set_active(None, True)
    with torch.no_grad():
        (on,) = ours.to_embedding(views, crops, grid)
    type(graphs.model).select_encoder_cudagraph_items(graphs.model, mm, [1])
    assert on.shape[0] == 4 * 5 + 1 + 8 * 9 and len(calls) == 1
