"""vq_nearest against its ranking contract, through the reference and both Triton implementations.

The contract (spectralar_kernels/vq/ref.py): the distance of a code is computed in float64 from the raw values,
one coordinate after another, and rounded once to fp32; the nearest code is the lowest index at the smallest
such distance; codes holding inf or NaN rank after every finite code. `contract` below computes exactly that
with numpy (a brute force over all M x K pairs), so every check is an equality: indices and distances, on any
BLAS, for duplicates at any positions, clustered and outlier codebooks, data far from the origin, NaN and inf.
Shapes stay tiny: the kernels run under the Triton interpreter on a machine without CUDA.
"""

import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spectralar_kernels import use_backend, vq_nearest
from spectralar_kernels.vq import dense, ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
METRICS = ["l2", "cosine"]
IMPLS = ["vq-v1", "vq-v2"]
# (M, K, d): M = 1, d = 1, K not a multiple of the code tile (32), the real code dim 12, several 16-wide chunks
# of the code width (d = 40; vq-v2 up to 63), vq-v2 handing d = 70 to vq-v1
SHAPES = [(1, 1, 1), (5, 33, 1), (33, 7, 12), (40, 97, 12), (9, 40, 40), (3, 20, 70)]
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.fixture(autouse=True)
def bound_path(monkeypatch):
    """vq_nearest runs the reference's GEMM-and-bound path even at these tiny shapes, where it would compute every
    pair at once instead (vq/dense.py: the "ref-dense" backend below, and tests/test_vq_dense.py)."""
    monkeypatch.setattr(dense, "DENSE_ELEMS", 0)


@pytest.fixture(params=["ref", "ref-dense", "triton:vq-v1", "triton:vq-v2"])
def backend(request, monkeypatch):
    """The reference, the dense path for small problems, then each Triton implementation (under the interpreter
    on a machine without CUDA)."""
    if request.param == "ref-dense":
        monkeypatch.setattr(dense, "DENSE_ELEMS", 1 << 62)
    with use_backend("ref" if request.param.startswith("ref") else request.param):
        yield request.param


def contract(z: torch.Tensor, codebook: torch.Tensor, metric: str, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(indices [M, k], fp32 distances [M, k]) by the contract, brute force in numpy (module docstring)."""
    a, b = z.double().numpy(), codebook.double().numpy()
    with np.errstate(all="ignore"):
        if metric == "l2":
            dist = np.zeros((a.shape[0], b.shape[0]))
            for j in range(a.shape[1]):
                diff = a[:, None, j] - b[None, :, j]
                dist = dist + diff * diff
        else:
            nz = np.sqrt(sum(a[:, j] * a[:, j] for j in range(a.shape[1])))
            nc = np.sqrt(sum(b[:, j] * b[:, j] for j in range(b.shape[1])))
            acc = np.zeros((a.shape[0], b.shape[0]))
            for j in range(a.shape[1]):
                diff = a[:, None, j] / nz[:, None] - b[None, :, j] / nc[None, :]
                acc = acc + diff * diff
            dot = sum(a[:, None, j] * b[None, :, j] for j in range(a.shape[1]))
            clamped = 1.0 - dot / (np.maximum(nz, ref.EPS)[:, None] * np.maximum(nc, ref.EPS)[None, :])
            tiny = (nz[:, None] < ref.EPS) | (nc[None, :] < ref.EPS)
            dist = np.where(tiny, np.maximum(clamped, 0.0), 0.5 * acc)
        v = dist.astype(np.float32)
    bad = ~np.isfinite(b).all(axis=1)[None, :]
    v = np.where(bad, np.float32(np.nan), v)
    rank = np.where(bad, 2, np.where(np.isnan(v), 1, 0))  # finite or inf < NaN distance < non-finite code
    order = np.lexsort((np.broadcast_to(np.arange(b.shape[0]), v.shape), np.where(rank == 0, v, 0), rank), axis=1)
    return order[:, :k], np.take_along_axis(v, order[:, :k], axis=1)


def nearest(z, codebook, metric, backend, split=None, **kw):
    """Run one backend; a Triton launcher writes into poisoned outputs (index -1, distance NaN)."""
    if backend.startswith("triton"):
        from spectralar_kernels.vq.triton import vq_nearest_fwd

        impl = backend.partition(":")[2] or "vq-v2"
        out = (torch.full((z.shape[0],), -1, dtype=torch.int64), torch.full((z.shape[0],), float("nan")))
        idx, dist = vq_nearest_fwd(z, codebook, metric, impl=impl, out=out, split=split, **kw)
        assert idx is out[0] and dist is out[1]
        return idx, dist
    return vq_nearest(z, codebook, metric)


def check(z, codebook, metric, idx, dist):
    """Indices and distances equal the contract's, bit for bit (NaN where it has NaN)."""
    M = z.shape[0]
    assert idx.dtype == torch.int64 and idx.shape == (M,) and dist.dtype == torch.float32 and dist.shape == (M,)
    assert not idx.requires_grad and not dist.requires_grad
    want_idx, want_dist = contract(z, codebook, metric)
    wrong = np.nonzero(idx.numpy() != want_idx[:, 0])[0]
    assert wrong.size == 0, f"{wrong.size}/{M} rows differ, e.g. {wrong[0]}: {idx[wrong[0]]} != {want_idx[wrong[0], 0]}"
    np.testing.assert_array_equal(dist.numpy(), want_dist[:, 0])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_random_matches_contract(backend, shape, metric):
    M, K, d = shape
    g = torch.Generator().manual_seed(M * 1000 + K + d)
    z, codebook = torch.randn(M, d, generator=g), torch.randn(K, d, generator=g)
    check(z, codebook, metric, *nearest(z, codebook, metric, backend))


@pytest.mark.parametrize("dtype, metric", [(torch.bfloat16, "l2"), (torch.float16, "cosine")])
def test_half_inputs_ranked_on_their_values(backend, dtype, metric):
    """fp16/bf16 rows and codes: the contract on the rounded values (the distance is computed in float64)."""
    g = torch.Generator().manual_seed(2)
    z, codebook = torch.randn(33, 12, generator=g).to(dtype), torch.randn(70, 12, generator=g).to(dtype)
    check(z, codebook, metric, *nearest(z, codebook, metric, backend))


def test_integer_data_exact_ties(backend):
    """Small integers: many codes at exactly equal distances; the lowest index must win everywhere."""
    g = torch.Generator().manual_seed(2)
    codebook = torch.randint(-2, 3, (200, 3), generator=g).float()  # many exact duplicates and ties
    z = torch.randint(-3, 4, (50, 3), generator=g).float()
    check(z, codebook, "l2", *nearest(z, codebook, "l2", backend))


@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_codes_lowest_index(backend, metric):
    g = torch.Generator().manual_seed(3)
    K, d = 130, 12
    codebook = torch.randn(K, d, generator=g)
    # duplicates inside one code tile, across tile boundaries (32/64) and in the last partial tile
    pairs = [(3, 4), (10, 70), (31, 32), (63, 64), (100, 129)]
    for lo, hi in pairs:
        codebook[hi] = codebook[lo]
    z = torch.stack([codebook[hi] for _, hi in pairs] + [codebook[lo] for lo, _ in pairs])
    idx, dist = nearest(z, codebook, metric, backend)
    lows = torch.tensor([lo for lo, _ in pairs])
    assert torch.equal(idx, torch.cat([lows, lows]))
    assert (dist == 0).all(), dist
    check(z, codebook, metric, idx, dist)


def test_duplicated_codebook_as_the_issue_reports(backend):
    """vq_nearest(cb, cat([cb, cb])): every row is a code of the first copy (the reference returned index 4
    for row 1 on this machine: its two copies' GEMM scores differed in the last bit)."""
    cb = torch.randn(3, 12, generator=torch.Generator().manual_seed(0))
    for metric in METRICS:
        idx, dist = nearest(cb, torch.cat([cb, cb]), metric, backend)
        assert idx.tolist() == [0, 1, 2] and (dist == 0).all(), (metric, idx)


def hard_codebooks(M: int = 24, K: int = 64, d: int = 12) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(z, codebook) pairs that broke the mean-centred ranking (the issue's cases, at test size)."""
    g = torch.Generator().manual_seed(4)
    out = {}
    for offset in (1e3, 1e4):
        c = torch.randn(K, d, generator=g)
        c[K // 2 :] += offset  # two clusters; rows near the first
        out[f"clustered {offset:g}"] = (torch.randn(M, d, generator=g), c)
    c = torch.randn(K, d, generator=g)
    c[K // 2 :] += 1e4
    z = torch.randn(M, d, generator=g)
    z[::2] += 1e4  # rows in both clusters, in the same row block
    out["clustered mixed"] = (z, c)
    for value in (3e19, -1e30):
        c = torch.randn(K, d, generator=g)
        c[7] = value
        out[f"outlier {value:g}"] = (torch.randn(M, d, generator=g), c)
    # far from the origin with near-duplicates (distances 3e-4 .. 0.3): fp32 ||c||^2 - 2 z.c loses these
    base = torch.randn(K // 2, d, generator=g, dtype=torch.float64)
    step = torch.logspace(-3.5, -0.5, K // 2, dtype=torch.float64)[:, None]
    direction = torch.nn.functional.normalize(torch.randn(K // 2, d, generator=g, dtype=torch.float64), dim=1)
    c = torch.cat([base, base + step * direction]) + 100.0
    z = c[torch.randint(0, K, (M,), generator=g)] + 1e-3 * torch.randn(M, d, generator=g, dtype=torch.float64)
    out["far + near-duplicates"] = (z.float(), c.float())
    return out


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("case", list(hard_codebooks()))
def test_hard_codebooks_match_contract(backend, case, metric):
    z, codebook = hard_codebooks()[case]
    check(z, codebook, metric, *nearest(z, codebook, metric, backend))


def test_clustered_codebook_as_the_issue_reports():
    """The issue's case at its size: 636 of 4096 rows got a wrong code (offset 1e4: 98%); now none."""
    g = torch.Generator().manual_seed(5)
    for offset in (1e3, 1e4):
        c = torch.randn(1024, 12, generator=g)
        c[512:] += offset
        z = torch.randn(4096, 12, generator=g)
        idx, dist = vq_nearest(z, c)
        want = torch.cdist(z.double(), c.double()).argmin(1)
        assert torch.equal(idx, want), f"offset {offset}: {(idx != want).sum()} rows wrong"
        check(z[:300], c, "l2", idx[:300], dist[:300])


@pytest.mark.parametrize("metric", METRICS)
def test_nonfinite_codes_never_chosen(backend, metric):
    """A code holding inf or NaN ranks after every finite code; a row holding NaN or inf gets the lowest finite
    code (distance NaN / inf); only an all-non-finite codebook returns one of them (the lowest, NaN)."""
    g = torch.Generator().manual_seed(6)
    z, codebook = torch.randn(8, 12, generator=g), torch.randn(70, 12, generator=g)
    codebook[0, 3] = float("nan")  # the lowest index: a NaN-propagating argmin would pick it
    codebook[[5, 66], [2, 0]] = float("inf")
    codebook[[9, 67], [1, 4]] = -float("inf")
    z[[1, 3]] = codebook[[5, 9]]  # rows sitting on non-finite codes
    z[2, 5], z[4, 0] = float("nan"), float("inf")
    idx, dist = nearest(z, codebook, metric, backend)
    assert not np.isin(idx.numpy(), [0, 5, 9, 66, 67]).any(), idx
    check(z, codebook, metric, idx, dist)
    assert idx[2] == 1 and torch.isnan(dist[2])
    allbad = torch.full((10, 12), float("nan"))
    allbad[4:, 0] = float("inf")
    idx, dist = nearest(z, allbad, metric, backend)
    assert (idx == 0).all() and torch.isnan(dist).all()


def test_nonfinite_codes_through_splits():
    """Several programs per row block (vq-v2: through the atomic min): the same answer for any split."""
    from spectralar_kernels.vq.triton import vq_nearest_fwd

    g = torch.Generator().manual_seed(11)
    z, codebook = torch.randn(20, 12, generator=g), torch.randn(100, 12, generator=g)
    z[3, 2] = float("nan")  # its row block is then ranked by the exact scan
    codebook[[0, 40, 90], 4] = float("nan")
    for metric in METRICS:
        want = contract(z, codebook, metric)
        for impl in IMPLS:
            for split in (3,):
                idx, dist = vq_nearest_fwd(z, codebook, metric, impl, split=split)
                assert np.array_equal(idx.numpy(), want[0][:, 0]), (metric, impl, split)
                np.testing.assert_array_equal(dist.numpy(), want[1][:, 0])


@pytest.mark.parametrize("impl", IMPLS)
def test_kernel_codebook_splits(impl):
    """Ties across split boundaries: the lowest index, whatever the number of codebook slices."""
    g = torch.Generator().manual_seed(8)
    codebook = torch.randint(-2, 3, (130, 3), generator=g).float()  # exact ties everywhere
    for lo, hi in [(10, 70), (31, 32), (63, 64), (100, 129)]:
        codebook[hi] = codebook[lo]
    z = torch.cat([torch.randint(-3, 4, (16, 3), generator=g).float(), codebook[[70, 32, 64, 129]]])
    for split in (2, 5):
        check(z, codebook, "l2", *nearest(z, codebook, "l2", f"triton:{impl}", split=split))


@pytest.mark.parametrize("chunk_elems", [13, 200, 1000])
@pytest.mark.parametrize("metric", METRICS)
def test_reference_chunking_preserves_result(chunk_elems, metric):
    """Row and code chunks (each row chunk with its own shift) change nothing: the ranking is exact."""
    z, codebook = hard_codebooks(M=31, K=90)["clustered mixed"]
    full = ref.vq_nearest_ref(z, codebook, metric, chunk_elems=1 << 30)
    idx, dist = ref.vq_nearest_ref(z, codebook, metric, chunk_elems=chunk_elems)
    assert torch.equal(idx, full[0]) and torch.equal(dist, full[1])
    check(z, codebook, metric, idx, dist)


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_reference_exact_under_reduced_matmul_precision(precision):
    """float32_matmul_precision "high"/"medium" lets BLAS round the GEMM coarser: the bound widens, the result
    stays exact (on CPUs whose BLAS honours it)."""
    z, codebook = hard_codebooks()["far + near-duplicates"]
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        for metric in METRICS:
            check(z, codebook, metric, *ref.vq_nearest_ref(z, codebook, metric))
    finally:
        torch.set_float32_matmul_precision(old)


class MaxNumel(TorchDispatchMode):
    """What aten ops allocate while active: the largest tensor (`max_numel`, `max_nbytes`) and the peak of the
    bytes alive at once (`peak`; a storage counts once, until freed). Views (a transposed codebook, a slice of a
    reused buffer), `out=` results and the `inputs` allocate nothing and are not counted."""

    def __init__(self, *inputs: torch.Tensor):
        super().__init__()
        self.max_numel = self.max_nbytes = self.current = self.peak = 0
        self.live = {t.untyped_storage().data_ptr(): 0 for t in inputs}

    def _free(self, ptr):
        self.current -= self.live.pop(ptr, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):  # a view, or an `out=` buffer
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.live:
                self.max_numel = max(self.max_numel, t.numel())
                self.max_nbytes = max(self.max_nbytes, t.numel() * t.element_size())
                storage = t.untyped_storage()
                self.live[storage.data_ptr()] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._free, storage.data_ptr())
        return out


@pytest.mark.parametrize("metric", METRICS)
def test_reference_never_allocates_m_by_k(metric):
    M, K, d = 1100, 4096, 12  # M * K > the default chunk of 2^22 scores
    z, codebook = torch.randn(M, d), torch.randn(K, d)
    with MaxNumel(z, codebook) as mode:
        idx, dist = ref.vq_nearest_ref(z, codebook, metric)
    assert mode.max_numel <= ref.CHUNK_ELEMS < M * K, mode.max_numel
    with MaxNumel(z, codebook) as mode:  # a small chunk: every temporary stays within it (the code flags aside)
        small_idx, small_dist = ref.vq_nearest_ref(z[:300], codebook, metric, chunk_elems=5000)
    assert mode.max_numel <= max(5000, K), mode.max_numel
    assert torch.equal(small_idx, idx[:300]) and torch.equal(small_dist, dist[:300])


@pytest.mark.parametrize("metric", METRICS)
def test_reference_memory_with_a_huge_codebook(metric):
    """16 rows against 2^19 codes (24 MiB): the temporaries stay within a few chunks whatever K (they were 8x
    the codebook in float64, 192 MiB here, 3.8 GB at 2^23 codes); with smaller chunks, smaller still."""
    codebook, z = torch.empty(2**19, 12).normal_(), torch.randn(16, 12)
    for chunk in (ref.CHUNK_ELEMS, 2**18):
        with MaxNumel(codebook, z) as mode:
            idx, dist = ref.vq_nearest_ref(z, codebook, metric, chunk_elems=chunk)
        bound = 6 * chunk * 4 + 2 * codebook.shape[0]  # six chunks of fp32, and two bytes of flags per code
        assert mode.peak <= bound, f"chunk {chunk}: peak {mode.peak / 2**20:.1f} MiB > {bound / 2**20:.1f} MiB"
    check(z, codebook[:4096], metric, *ref.vq_nearest_ref(z, codebook[:4096], metric))


@pytest.mark.parametrize("impl", IMPLS)
def test_triton_launcher_allocates_only_vectors(impl):
    from spectralar_kernels.vq import triton as vq_triton

    M, K, d = 100, 300, 3
    z, codebook = torch.randn(M, d), torch.randn(K, d)
    vq_triton.clear_cache()
    with MaxNumel(z, codebook) as mode:
        idx, dist = vq_triton.vq_nearest_fwd(z, codebook, "l2", impl)
    # the padded [K, 16] fp32 codebook, the [splits, M] keys and [M] vectors: nothing near M x K
    assert mode.max_nbytes <= 8 * K * 16 < M * K * 4, mode.max_nbytes
    check(z, codebook, "l2", idx, dist)


def test_zero_vectors_cosine(backend):
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    codebook = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    idx, dist = nearest(z, codebook, "cosine", backend)
    # zero row: cos = 0 to every code, tie -> index 0, distance 1; row 1: the parallel code, distance 0
    assert idx.tolist() == [0, 2] and dist.tolist() == [1.0, 0.0]
    check(z, codebook, "cosine", idx, dist)


def test_public_function_dispatch_and_mixed_inputs(backend):
    g = torch.Generator().manual_seed(6)
    base = torch.randn(20, 24, generator=g)
    z = base[:, ::2]  # non-contiguous [20, 12]
    codebook = torch.randn(45, 12, generator=g, dtype=torch.float32).to(torch.bfloat16)
    z_fp16 = z.to(torch.float16).requires_grad_()
    idx, dist = vq_nearest(z_fp16, codebook)  # fp16 rows against a bf16 codebook
    check(z_fp16.detach(), codebook, "l2", idx, dist)
    check(z, codebook.float(), "cosine", *vq_nearest(z, codebook.float(), "cosine"))


def test_reference_upcast_returns_float64_distances():
    g = torch.Generator().manual_seed(7)
    z, codebook = torch.randn(30, 12, generator=g), torch.randn(50, 12, generator=g)
    for metric in METRICS:
        idx, dist = ref.vq_nearest_ref(z, codebook, metric, upcast=True)
        assert dist.dtype == torch.float64
        want_idx, want_dist = contract(z, codebook, metric)
        assert np.array_equal(idx.numpy(), want_idx[:, 0])
        np.testing.assert_array_equal(dist.float().numpy(), want_dist[:, 0])


@pytest.mark.parametrize(
    "z, codebook, metric, match",
    [
        (torch.randn(12), torch.randn(5, 12), "l2", "z must be"),
        (torch.randn(4, 12), torch.randn(12), "l2", "codebook must be"),
        (torch.randn(4, 12), torch.randn(5, 11), "l2", "code dim mismatch"),
        (torch.ones(4, 12, dtype=torch.int64), torch.randn(5, 12), "l2", "float32, float16 or bfloat16"),
        (torch.randn(4, 12), torch.ones(5, 12, dtype=torch.int32), "l2", "float32, float16 or bfloat16"),
        (torch.randn(4, 12, dtype=torch.float64), torch.randn(5, 12), "l2", "float32, float16 or bfloat16"),
        (torch.randn(0, 12), torch.randn(5, 12), "l2", "empty"),
        (torch.randn(4, 12), torch.randn(0, 12), "l2", "empty"),
        (torch.randn(4, 0), torch.randn(5, 0), "l2", "empty"),
        (torch.randn(4, 12), torch.randn(5, 12, device="meta"), "l2", "one device"),
        (torch.randn(4, 12), torch.randn(5, 12), "dot", "metric must be one of"),
        ([[1.0, 2.0]], torch.randn(5, 2), "l2", "torch.Tensor"),
    ],
)
def test_value_errors(backend, z, codebook, metric, match):
    with pytest.raises(ValueError, match=match):
        vq_nearest(z, codebook, metric)


def test_public_function_runs_the_chosen_impl(monkeypatch):
    from spectralar_kernels.vq import triton as vq_triton

    seen = []
    real = vq_triton.vq_nearest_fwd
    monkeypatch.setattr(vq_triton, "vq_nearest_fwd", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    z, codebook = torch.randn(4, 12), torch.randn(9, 12)
    for mode, want in [("triton:vq-v1", "vq-v1"), ("triton:vq-v2", "vq-v2"), ("triton", "vq-v2")]:
        with use_backend(mode):
            vq_nearest(z, codebook, "l2")
        assert seen[-1] == want


@pytest.mark.gpu
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7, 12), (70, 257, 12), (9, 40, 40), (4096, 16384, 12)], ids=str)
def test_cuda_kernel_matches_reference(shape, dtype, metric, impl):
    """The compiled kernels on a real GPU (3xTF32 on tensor cores, atomics, the certified shortlist) give the
    reference's answer; the reference is checked against the brute force above on CPU."""
    from spectralar_kernels.vq.triton import vq_nearest_fwd

    M, K, d = shape
    g = torch.Generator().manual_seed(M + K + d)
    z, codebook = torch.randn(M, d, generator=g).to(dtype), torch.randn(K, d, generator=g).to(dtype)
    cases = {"random": (z, codebook), **(hard_codebooks(M=min(M, 300), d=d) if d == 12 else {})}
    for name, (zc, cc) in cases.items():
        zc, cc = zc.to(dtype), cc.to(dtype)
        out = (torch.full((len(zc),), -1, dtype=torch.int64, device="cuda"),
               torch.full((len(zc),), float("nan"), device="cuda"))  # fmt: skip
        idx, dist = vq_nearest_fwd(zc.cuda(), cc.cuda(), metric, impl, out=out)
        want_idx, want_dist = ref.vq_nearest_ref(zc, cc, metric)
        assert torch.equal(idx.cpu(), want_idx), name
        assert torch.equal(dist.cpu(), want_dist) or metric == "cosine", name  # cosine: torch's CPU sqrt


@pytest.mark.parametrize("impl", IMPLS)
def test_kernels_certify_typical_rows_without_scanning(impl, monkeypatch):
    """The exact scan is the rare path: random, far-from-origin and clustered data never take it (each row's
    candidates are certified), a NaN row does (and only its row block scans)."""
    from spectralar_kernels.vq import shared
    from spectralar_kernels.vq.triton import vq_nearest_fwd

    scans = []
    real = shared._exact_scan
    monkeypatch.setattr(shared, "_exact_scan", lambda *a, **k: scans.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(12)
    z, codebook = torch.randn(40, 12, generator=g), torch.randn(150, 12, generator=g)
    clustered = torch.cat([codebook[:75], codebook[75:] + 1000])
    for zc, cc in [(z, codebook), (z + 100, codebook + 100), (z, clustered)]:
        for metric in METRICS if impl == "vq-v2" else ["l2"]:  # vq-v1's cosine is not centred: scans at +100
            check(zc, cc, metric, *vq_nearest_fwd(zc, cc, metric, impl))
    assert scans == []
    z[5, 0] = float("nan")
    check(z, codebook, "l2", *vq_nearest_fwd(z, codebook, "l2", impl))
    assert scans


@pytest.mark.parametrize("split", [1, 3])
def test_v2_workspace_left_clean(split):
    """The last program of each row block resets the keys and the ticket, so no launch needs a memset."""
    from spectralar_kernels.vq import triton as vq_triton

    g = torch.Generator().manual_seed(10)
    z, codebook = torch.randn(150, 12, generator=g), torch.randn(300, 12, generator=g)
    for _ in range(2):
        check(z, codebook, "l2", *nearest(z, codebook, "l2", "triton:vq-v2", split=split))
        keys, tickets = vq_triton._workspace(z.device, z.shape[0], 3)
        assert (keys == ref.KEY_NONE).all() and (tickets == 0).all()


def test_codebook_cache_follows_in_place_changes(monkeypatch):
    """vq-v2 reuses its prepared codebook until the codebook changes, and only then: in-place ops, a new storage;
    `cache=False` always prepares afresh."""
    from spectralar_kernels.vq import triton as vq_triton

    builds = []
    real = vq_triton._build
    monkeypatch.setattr(vq_triton, "_build", lambda *a: builds.append(1) or real(*a))
    g = torch.Generator().manual_seed(9)
    z, codebook = torch.randn(30, 12, generator=g), torch.randn(70, 12, generator=g)
    vq_triton.clear_cache()

    def run(expect_builds, metric="l2", cb=codebook, **kw):
        idx, dist = vq_triton.vq_nearest_fwd(z, cb, metric, **kw)
        assert len(builds) == expect_builds, (len(builds), expect_builds)
        check(z, cb, metric, idx, dist)
        return idx

    run(1)
    run(1, cb=codebook.detach())  # same storage, same version: a hit
    run(2, "cosine")  # another metric: its own entry
    codebook[5:9] = z[:4] + 1e-3  # in place: rows 0-3 now have a new nearest code
    assert run(3)[:4].tolist() == [5, 6, 7, 8]
    codebook.mul_(-1.0)
    run(4)
    run(5, cache=False)
    run(5)
    strided = torch.randn(12, 70, generator=g).T  # prepared from the caller's tensor, so it hits too
    run(6, cb=strided)
    run(6, cb=strided)
    for n in range(3):  # a new tensor (possibly at a recycled address, same shape and version) never hits
        run(7 + n, cb=torch.randn(70, 12, generator=g))


def test_trained_codebook_never_served_stale():
    """A codebook that requires grad is prepared afresh every call: fused optimizers (fused=True) update it in
    place without bumping its version counter, so a version-keyed cache would return the previous step's codes."""
    g = torch.Generator().manual_seed(13)
    z = torch.randn(30, 12, generator=g)
    codebook = torch.nn.Parameter(torch.randn(70, 12, generator=g))
    with use_backend("triton:vq-v2"):
        for opt in [torch.optim.SGD([codebook], lr=1.0, fused=True), torch.optim.Adam([codebook], lr=1.0, fused=True),
                    torch.optim.SGD([codebook], lr=1.0, foreach=True)]:  # fmt: skip
            vq_nearest(z, codebook)
            version = codebook._version
            codebook.grad = torch.randn(70, 12, generator=g)
            opt.step()
            assert codebook._version == version or not opt.defaults.get("fused")  # why the cache cannot key on it
            check(z, codebook.detach(), "l2", *vq_nearest(z, codebook))


@pytest.mark.parametrize(
    "registers, shared, warps, arch, want",
    [
        (156, 25600, 4, (9, 0), 3),  # vq-v2 before: planned 4 programs per SM where 156 registers allow 3
        (152, 25600, 4, (9, 0), 3),
        (216, 25600, 4, (9, 0), 2),
        (64, 100 * 1024, 4, (9, 0), 2),  # shared memory bound
        (32, 0, 4, (9, 0), 16),  # threads bound (2048 per SM)
        (32, 0, 1, (9, 0), 32),  # resident-CTA bound
        (40, 0, 4, (8, 6), 12),  # 1536 threads per SM on sm_86
        (255, 0, 8, (9, 0), 1),
    ],
)
def test_ctas_per_sm(registers, shared, warps, arch, want):
    from spectralar_kernels.vq.shared import ctas_per_sm

    assert ctas_per_sm(registers, shared, warps, arch) == want


def test_launch_plan_fills_one_wave():
    """Never more programs than fit at once (a second, partial wave doubled the time of the last programs)."""
    from spectralar_kernels.vq.shared import MIN_TILES_PER_SPLIT, launch_plan

    for M, K, ctas in [(4096, 16384, 3), (4096, 4096, 2), (64, 16384, 3), (100000, 1024, 2), (1, 7, 1)]:
        per_split, n_split = launch_plan(M, K, 64, 32, 132, ctas)
        programs = -(-M // 64) * n_split
        assert n_split == 1 or programs <= ctas * 132, (M, K, programs)
        assert n_split == 1 or per_split >= MIN_TILES_PER_SPLIT * 32
        assert (n_split - 1) * per_split < K <= n_split * per_split  # every code in exactly one split
    # the audit's case: 4 planned where 3 fit gave 9 splits x 64 row blocks = 576 programs = 1.45 waves
    assert launch_plan(4096, 16384, 64, 64, 132, 3)[1] * 64 <= 3 * 132


@pytest.mark.slow
def test_launch_estimates_match_the_compiled_kernels():
    """Each configuration's programs-per-SM estimate (used where no compiled kernel reports its registers) is
    what the sm_90 ahead-of-time compile's registers, shared memory and warps allow (vq.aot, JIT-like)."""
    from spectralar_kernels.testing import aot
    from spectralar_kernels.vq.shared import ctas_per_sm
    from spectralar_kernels.vq.triton import V2_CONFIGS
    from spectralar_kernels.vq.triton_v1 import V1

    results, missing = aot.compile_all(("vq.aot",), (90,))
    assert not missing
    for r in results:
        if r.kernel == "_vq_keys_min_kernel":
            continue
        cfg = V1 if r.label.startswith("vq-v1") else V2_CONFIGS[int(r.label.split("BLOCK_D=")[1])]
        got = ctas_per_sm(r.registers, r.shared_bytes, r.num_warps, (9, 0))
        assert got >= cfg.ctas_per_sm, f"{r.label}: {r.registers} registers allow {got} per SM, config says {cfg}"
