"""Triton scoring/compaction kernels against the torch reference, plus the dispatcher.

Without a GPU the Triton kernels run in the Triton interpreter on CPU tensors: this module sets
``TRITON_INTERPRET=1`` (unless already set) before Triton can be imported. With
``TRITON_INTERPRET=0`` and a GPU, the same tests run the compiled kernels on CUDA tensors.

Run: ``TRITON_INTERPRET=1 pytest tests/test_kernels.py -q``
"""

import os

if not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

K = importlib.import_module("judgeq_cache.kernels")
reference = K.reference

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRET:
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    DEVICE = None

needs_triton = pytest.mark.skipif(
    not HAVE_TRITON or DEVICE is None, reason="needs triton and either TRITON_INTERPRET=1 or a GPU"
)


def _triton_module(name: str):
    return importlib.import_module(f"{K.__name__}.{name}")


def _ts():
    return _triton_module("triton_scoring")


def _tg():
    return _triton_module("triton_gather")


def _inputs(bsz, hq, hkv, m, n, d, dtype, *, masked, causal, seed=0, pad_left=0):
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(bsz, hq, m, d, generator=gen) * 1.5).to(dtype)
    k = (torch.randn(bsz, hkv, n, d, generator=gen) * 1.5).to(dtype)
    key_mask = None
    if masked:
        key_mask = torch.rand(bsz, n, generator=gen) > 0.25
        key_mask[:, :pad_left] = False  # left padding, as in batched prompts
        key_mask[:, -1] = True
    causal_offset = n - m if causal else None
    return q.to(DEVICE), k.to(DEVICE), (key_mask.to(DEVICE) if masked else None), causal_offset


def _check(q, k, **kw):
    got = _ts().attention_scores(q, k, **kw)
    want = reference.attention_scores(
        q.cpu(), k.cpu(), **{a: (v.cpu() if torch.is_tensor(v) else v) for a, v in kw.items()}
    )
    assert got.dtype == torch.float32
    assert got.shape == want.shape
    torch.testing.assert_close(got.cpu(), want, atol=2e-5, rtol=1e-3)
    return got


# (B, Hq, Hkv, m, N, D, dtype, key_mask, causal): every GQA ratio, D, m and dtype appears with and
# without key_mask and causal_offset; N is mostly not a power of two.
CASES = [
    (2, 4, 4, 8, 100, 64, torch.float32, False, False),
    (2, 4, 4, 1, 129, 128, torch.bfloat16, True, True),
    (1, 6, 2, 32, 257, 256, torch.float16, True, False),
    (2, 12, 4, 8, 200, 128, torch.bfloat16, False, True),
    (1, 12, 4, 32, 150, 64, torch.float32, True, True),
    (2, 8, 2, 1, 77, 256, torch.float32, True, False),
    (1, 32, 4, 8, 300, 128, torch.float16, True, True),
    (2, 16, 2, 32, 96, 64, torch.bfloat16, False, False),
    (1, 8, 1, 8, 191, 128, torch.float32, False, True),
    (2, 24, 8, 1, 65, 64, torch.float16, False, False),
    (1, 3, 1, 32, 100, 128, torch.bfloat16, True, True),
    (1, 8, 8, 32, 64, 256, torch.bfloat16, True, True),
    (1, 16, 2, 8, 333, 256, torch.float32, True, True),
    (2, 8, 1, 32, 49, 128, torch.float16, False, True),
]


@needs_triton
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "B{}-Hq{}-Hkv{}-m{}-N{}-D{}-{}-mask{}-causal{}".format(*c)
)
def test_attention_scores_matches_reference(case):
    bsz, hq, hkv, m, n, d, dtype, masked, causal = case
    q, k, key_mask, off = _inputs(bsz, hq, hkv, m, n, d, dtype, masked=masked, causal=causal, pad_left=3)
    got = _check(q, k, scaling=d**-0.5, key_mask=key_mask, causal_offset=off)
    if not masked:  # every query is valid and sees at least one key: the scores are a distribution
        torch.testing.assert_close(got.sum(-1).cpu(), torch.ones(bsz, hkv), atol=1e-4, rtol=0)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_softcap_and_num_out(dtype):
    q, k, key_mask, off = _inputs(2, 8, 2, 8, 170, 128, dtype, masked=True, causal=True, pad_left=5)
    _check(q, k, scaling=0.3, key_mask=key_mask, causal_offset=off, num_out=130, softcap=20.0)
    _check(q, k, scaling=0.3, num_out=1, softcap=5.0)


@needs_triton
def test_queries_on_padding_and_fully_masked_rows():
    # Queries at positions 0..7 of a left-padded row: the first ones see only padding (their row is
    # fully masked) and are themselves padding (left out of the mean). One batch row is all padding.
    q, k, _, _ = _inputs(3, 4, 2, 8, 40, 64, torch.float32, masked=False, causal=False)
    key_mask = torch.ones(3, 40, dtype=torch.bool)
    key_mask[0, :5] = False
    key_mask[1, :] = False
    key_mask[2, 3:6] = False
    got = _check(q, k, scaling=0.125, key_mask=key_mask.to(DEVICE), causal_offset=0)
    assert torch.all(got[1] == 0)
    # Offsets past the end (query positions clamped to N - 1) and a mask given as uint8.
    _check(q, k, scaling=0.125, key_mask=key_mask.to(torch.uint8).to(DEVICE), causal_offset=36)
    # Every query before every key: nothing visible.
    got = _check(q, k, scaling=0.125, causal_offset=-20)
    assert torch.all(got == 0)


@needs_triton
def test_non_contiguous_inputs():
    # Keys as a slice of a bigger cache buffer and queries as a transposed view.
    q, _, _, _ = _inputs(2, 8, 2, 8, 10, 128, torch.bfloat16, masked=False, causal=False)
    buf = torch.randn(2, 2, 300, 128).to(torch.bfloat16).to(DEVICE)
    k = buf[:, :, :211]
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not k.is_contiguous() and not qt.is_contiguous()
    _check(qt, k, scaling=128**-0.5, causal_offset=203)


@needs_triton
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bsz=st.integers(1, 2),
    hkv=st.sampled_from([1, 2]),
    ratio=st.sampled_from([1, 3, 4, 8]),
    m=st.sampled_from([1, 3, 8, 32]),
    n=st.integers(1, 200),
    d=st.sampled_from([64, 80, 128, 256]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    masked=st.booleans(),
    causal=st.booleans(),
    num_out_frac=st.floats(0.0, 1.0),
    softcap=st.sampled_from([None, None, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_attention_scores_property(
    bsz, hkv, ratio, m, n, d, dtype, masked, causal, num_out_frac, softcap, seed
):
    q, k, key_mask, _ = _inputs(bsz, hkv * ratio, hkv, m, n, d, dtype, masked=masked, causal=False, seed=seed)
    off = n - m if causal else None  # negative when m > n (the queries start before the keys)
    if masked and causal:
        off = max(off, -n)  # the reference indexes key_mask at the query positions: needs >= -n
    num_out = max(1, round(n * num_out_frac))
    _check(q, k, scaling=d**-0.5, key_mask=key_mask, causal_offset=off, num_out=num_out, softcap=softcap)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_gather_kv_matches_reference(dtype):
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(2, 3, 150, 64, generator=gen).to(dtype)
    values = torch.randn(2, 3, 150, 96, generator=gen).to(dtype)
    keys_view = torch.randn(2, 150, 3, 64, generator=gen).to(dtype).transpose(1, 2)  # non-contiguous
    idx = torch.rand(2, 3, 150, generator=gen).topk(70, dim=-1).indices.sort(dim=-1).values
    for kk in (keys, keys_view):
        kk, vv, ii = kk.to(DEVICE), values.to(DEVICE), idx.to(DEVICE)
        got_k, got_v = _tg().gather_kv(kk, vv, ii)
        want_k, want_v = reference.gather_kv(kk.cpu(), vv.cpu(), ii.cpu())
        assert got_k.is_contiguous() and got_v.is_contiguous()
        assert torch.equal(got_k.cpu(), want_k) and torch.equal(got_v.cpu(), want_v)


# --- dispatcher ---------------------------------------------------------------------------------


def test_dispatch_defaults_to_torch_on_cpu(monkeypatch):
    monkeypatch.delenv("JUDGEQ_KERNELS", raising=False)
    assert K.backend_for(torch.zeros(1)) == "torch"
    monkeypatch.setenv("JUDGEQ_KERNELS", "torch")
    assert K.backend_for(torch.zeros(1)) == "torch"
    monkeypatch.setenv("JUDGEQ_KERNELS", "reference")
    assert K.backend_for(torch.zeros(1)) == "torch"
    monkeypatch.setenv("JUDGEQ_KERNELS", "bogus")
    with pytest.raises(ValueError):
        K.backend_for(torch.zeros(1))


@pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")
def test_dispatch_forced_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("JUDGEQ_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert K.backend_for(torch.zeros(1)) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert K.backend_for(torch.zeros(1)) == "torch"  # compiled Triton cannot run on CPU tensors
    monkeypatch.delenv("JUDGEQ_KERNELS")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert K.backend_for(torch.zeros(1)) == "torch"  # the interpreter alone does not switch backends


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@needs_triton
@pytest.mark.skipif(not INTERPRET, reason="checks the CPU dispatch under the interpreter")
def test_dispatcher_honours_env(monkeypatch):
    score_calls = _spy(monkeypatch, _ts(), "attention_scores")
    gather_calls = _spy(monkeypatch, _tg(), "gather_kv")
    q, k, key_mask, off = _inputs(1, 4, 2, 8, 50, 64, torch.bfloat16, masked=True, causal=True)
    kw = dict(scaling=0.125, key_mask=key_mask, causal_offset=off)
    idx = torch.arange(0, 50, 2).expand(1, 2, -1)

    monkeypatch.delenv("JUDGEQ_KERNELS", raising=False)
    want = K.attention_scores(q, k, **kw)
    K.gather_kv(k, k, idx)
    assert score_calls == [] and gather_calls == []

    monkeypatch.setenv("JUDGEQ_KERNELS", "torch")
    K.attention_scores(q, k, **kw)
    assert score_calls == []

    monkeypatch.setenv("JUDGEQ_KERNELS", "triton")
    got = K.attention_scores(q, k, **kw)
    assert score_calls == ["attention_scores"]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-3)
    gk, _ = K.gather_kv(k, k, idx)
    assert gather_calls == ["gather_kv"]
    assert torch.equal(gk, reference.gather_kv(k, k, idx)[0])

    # Gradients and float64 always take the reference.
    K.attention_scores(q.float().requires_grad_(), k.float(), **kw).sum().backward()
    K.attention_scores(q.double(), k.double(), **kw)
    assert score_calls == ["attention_scores"]


# --- reference selection and compaction ------------------------------------------------------------


def test_select_indices_sorted_protected_and_padding_last():
    gen = torch.Generator().manual_seed(3)
    bsz, heads, n, keep = 2, 3, 40, 12
    scores = torch.rand(bsz, heads, n, generator=gen)
    key_mask = torch.ones(bsz, n, dtype=torch.bool)
    key_mask[0, :10] = False  # left padding
    scores[0, :, :10] = 100.0  # padding with huge scores must still lose to every real token
    protected = torch.zeros(bsz, n, dtype=torch.bool)
    protected[:, -4:] = True  # recent window
    protected[1, 0] = True  # sink
    scores[:, :, -4:] = -5.0
    scores[1, :, 0] = -5.0
    idx = reference.select_indices(scores, keep, key_mask=key_mask, protected=protected)
    assert idx.shape == (bsz, heads, keep)
    assert torch.all(idx[..., 1:] > idx[..., :-1])  # ascending, no duplicates
    for b in range(bsz):
        for h in range(heads):
            chosen = set(idx[b, h].tolist())
            assert set(torch.nonzero(protected[b]).flatten().tolist()) <= chosen
            assert all(key_mask[b, i] for i in chosen)
    # Asking for more than the real tokens: every real token first, then padding.
    idx = reference.select_indices(scores, 35, key_mask=key_mask)
    assert set(range(10, 40)) <= set(idx[0, 0].tolist())


def test_select_indices_pooling_and_nan():
    scores = torch.zeros(1, 1, 9)
    scores[0, 0, 4] = 1.0
    scores[0, 0, 0] = float("nan")
    assert reference.select_indices(scores, 1).tolist() == [[[4]]]
    pooled = reference.pool_scores(scores.nan_to_num(0.0), 3)
    assert pooled[0, 0, 3:6].tolist() == [1.0, 1.0, 1.0]
    idx = reference.select_indices(scores, 3, pooling_kernel=3)
    assert idx.tolist() == [[[3, 4, 5]]]


def test_reference_gather_kv_preserves_order():
    keys = torch.arange(2 * 2 * 10, dtype=torch.float32).view(2, 2, 10, 1).expand(-1, -1, -1, 4)
    values = -keys[..., :3]
    idx = torch.tensor([[[1, 4, 7], [0, 2, 9]], [[3, 5, 6], [2, 3, 4]]])
    gk, gv = reference.gather_kv(keys, values, idx)
    assert gk.shape == (2, 2, 3, 4) and gv.shape == (2, 2, 3, 3)
    for b in range(2):
        for h in range(2):
            assert gk[b, h, :, 0].tolist() == keys[b, h, idx[b, h], 0].tolist()
            assert gv[b, h, :, 0].tolist() == (-keys[b, h, idx[b, h], 0]).tolist()
    assert gk.is_contiguous() and gv.is_contiguous()


@pytest.mark.parametrize("offset", [0, 5, 40])
def test_reference_causal_scores_match_a_per_query_loop(offset):
    """The reference's causal fast path (no key mask) against a query-by-query softmax."""
    gen = torch.Generator().manual_seed(offset)
    q, k = torch.randn(2, 6, 7, 16, generator=gen), torch.randn(2, 3, offset + 7, 16, generator=gen)
    got = reference.attention_scores(q, k, scaling=0.25, causal_offset=offset, num_out=offset + 3)
    want = torch.zeros(2, 3, offset + 7)
    for i in range(7):
        logits = torch.einsum(
            "bhd,bhkd->bhk", q[:, :, i], k.repeat_interleave(2, dim=1)[:, :, : offset + i + 1]
        )
        probs = torch.softmax(logits * 0.25, dim=-1)
        want[..., : offset + i + 1] += probs.view(2, 3, 2, -1).sum(2)
    torch.testing.assert_close(got, want[..., : offset + 3] / 14, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_reference_output_matches_sdpa(masked):
    """``attention_scores_and_output``: the same scores, and sdpa's output (GQA, causal tail, padding)."""
    gen = torch.Generator().manual_seed(int(masked))
    q, k = torch.randn(2, 6, 5, 16, generator=gen), torch.randn(2, 3, 25, 16, generator=gen)
    v = torch.randn(2, 3, 25, 16, generator=gen)
    key_mask = torch.ones(2, 25, dtype=torch.bool)
    if masked:
        key_mask[1, :4] = False  # left padding of row 1
    options = dict(scaling=0.25, key_mask=key_mask, causal_offset=20, num_out=20)
    scores, out = reference.attention_scores_and_output(q, k, v, **options)
    torch.testing.assert_close(scores, reference.attention_scores(q, k, **options), atol=0, rtol=0)
    visible = key_mask[:, None, None, :] & (torch.arange(25)[None, :] <= torch.arange(20, 25)[:, None])
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), attn_mask=visible, scale=0.25
    )
    assert out.shape == (2, 5, 6, 16)
    torch.testing.assert_close(out, want.transpose(1, 2), atol=1e-6, rtol=1e-5)
