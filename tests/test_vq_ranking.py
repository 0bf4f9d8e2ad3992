"""The reference's ranking machinery at the sizes where it has levels: top-k over codebooks of 1100 and 4500 codes,
both of its CPU paths (numpy for the sparse steps when installed, torch alone otherwise: the path CUDA runs), its
pieces (the k-th smallest bound, the merge of candidate keys, the reused buffers) and its memory.

Every ranking is compared exactly with the brute-force contract of test_vq.py.
"""

import threading
import tracemalloc

import numpy as np
import pytest
import test_vq
import torch
from test_vq import METRICS, MaxNumel, contract, hard_codebooks
from test_vq_groups import check_topk

from spectralar_kernels.vq import codes as vq_codes
from spectralar_kernels.vq import keys as vq_keys
from spectralar_kernels.vq import ref

pytestmark = test_vq.pytestmark
# (M, K): one level of group minima (1100 codes: 138 groups of ref.FIRST = 8), two levels (4500: 563 groups, then 141)
SIZES = [(70, 1100), (40, 4500)]


def test_sizes_exercise_one_and_two_levels():
    assert [ref._plan(K, k) for _, K in SIZES for k in (1, 4)] == [[ref.FIRST]] * 2 + [[ref.FIRST, 4]] * 2


@pytest.fixture(params=["numpy", "torch"])
def path(request, monkeypatch):
    """The CPU path with numpy's sparse steps, then torch alone (what runs without numpy, and on CUDA)."""
    if request.param == "torch":
        monkeypatch.setattr(ref, "_np", None)
        monkeypatch.setattr(vq_keys, "_np", None)
        monkeypatch.setattr(vq_codes, "_np", None)
    return request.param


def cases(M: int, K: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(M + K)
    out = {"random": (torch.randn(M, 12, generator=g), torch.randn(K, 12, generator=g))}
    c = torch.randint(-2, 3, (K, 12), generator=g).float()  # small integers: exact scores, many exact ties
    out["integer ties"] = (torch.randint(-2, 3, (M, 12), generator=g).float(), c)
    c = torch.randn(K, 12, generator=g)
    c[100:140] = c[3]  # forty copies of one code: its rows have more candidates than any bound leaves
    z = torch.randn(M, 12, generator=g)
    z[::3] = c[3] + 1e-3 * torch.randn(12, generator=g)
    out["many copies"] = (z, c)
    hard = hard_codebooks(M, K)
    for name in ("clustered 10000", "far + near-duplicates", "outlier 3e+19"):
        out[name] = hard[name]
    return out


@pytest.mark.parametrize("k", [1, 2, 4, 16, 17])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_topk_with_levels_matches_contract(path, size, k):
    check_cases(size, k)


def check_cases(size: tuple[int, int], k: int) -> None:
    """Every case of `cases(*size)` and metric: the reference's top-k is the contract's."""
    for name, (z, codebook) in cases(*size).items():
        for metric in METRICS:
            idx, dist = ref.vq_nearest_ref(z, codebook, metric, topk=k)
            try:
                check_topk(z, codebook, metric, idx, dist, k)
            except AssertionError as e:
                raise AssertionError(f"{name}, {metric}: {e}") from None


@pytest.mark.parametrize("row_major", [True, False], ids=["row-major", "lanes"])
@pytest.mark.parametrize("k", [4, 16])
def test_codes_level_read_row_major_or_by_lanes(row_major, k, monkeypatch):
    """The codes' level from the second, row-major product or lane by lane from the first: the contract either way
    (forced at these sizes by a small MEMBERS_AT_ONCE; 70 x 1100 has one level of group minima)."""
    calls = []
    real = ref._members_row_major
    monkeypatch.setattr(ref, "_members_row_major", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(ref, "MEMBERS_AT_ONCE", 64)
    monkeypatch.setattr(ref, "ROW_MAJOR_CODES", 10**6 if row_major else 0)
    check_cases(SIZES[0], k)
    assert bool(calls) == row_major


def test_numpy_and_torch_paths_give_the_same_bits(monkeypatch):
    """NaN and inf rows and codes, duplicates, zero and near-zero vectors (cosine's clamped branch), several code
    chunks (8000: the codebook too large to copy whole): both paths return identical tensors (on data without a
    square-root tie: see test_cosine_keys_round_the_square_root_correctly)."""
    g = torch.Generator().manual_seed(3)
    z, codebook = torch.randn(90, 12, generator=g), torch.randn(1500, 12, generator=g)
    z[5, 2], z[6, 0] = float("nan"), float("inf")
    codebook[10, 1], codebook[700, 4] = float("inf"), float("nan")
    codebook[900:910] = codebook[20]
    z[7], codebook[30] = 0.0, 0.0
    z[8] *= 1e-14
    codebook[31] *= 1e-14
    runs = {}
    for path in ("numpy", "torch"):
        if path == "torch":
            monkeypatch.setattr(ref, "_np", None)
            monkeypatch.setattr(vq_keys, "_np", None)
        chunks = (ref.CHUNK_ELEMS, 20000, 8000)
        runs[path] = [ref.vq_nearest_ref(z, codebook, metric, topk=k, chunk_elems=chunk)
                      for metric in METRICS for k in (None, 3, 16) for chunk in chunks]  # fmt: skip
    for a, b in zip(runs["numpy"], runs["torch"]):  # distances bit for bit (NaN included)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1].view(torch.int32), b[1].view(torch.int32))
    check_topk(z, codebook, "l2", *runs["numpy"][3], 3)  # l2, k = 3, one chunk


def test_cosine_keys_round_the_square_root_correctly():
    """The contract's float64 square root is IEEE's (correctly rounded, as numpy's and CUDA's); torch 2.13's CPU
    sqrt is not always (about 0.7% of float64 values one ulp off on an x86 VM), and here that one ulp decides the
    order: z = (2, 2) and the codes (1, 1) and (1.0016e19, 1.0016e19) have unit vectors equal in exact arithmetic,
    and in float64 they differ by one ulp for the second code only, so (1, 1) comes first at distance 0 and the
    other at 1.2e-32. On CPU with numpy every key (candidates and rows ranked exactly alike) follows the contract;
    the torch-only path (no numpy) inherits torch's square root and returns (0, 2) at 0 and 0 here."""
    z = torch.tensor([[2.0, 2.0]] * 3)
    codebook = torch.tensor([[1.0016005571271983e19] * 2, [3.0, 4.0], [1.0, 1.0]] + [[5.0, -1.0]] * 40)
    want_idx, want_dist = contract(z, codebook, "cosine", 2)
    assert want_idx[0].tolist() == [2, 0] and want_dist[0, 0] == 0.0 < want_dist[0, 1], (want_idx, want_dist)
    idx, dist = ref.vq_nearest_ref(z, codebook, "cosine", topk=2)
    assert np.array_equal(idx.numpy(), want_idx) and np.array_equal(dist.numpy(), want_dist)
    idx, dist64 = ref.vq_nearest_ref(z, codebook, "cosine", topk=2, upcast=True)  # float64 distances alike
    assert np.array_equal(idx.numpy(), want_idx) and np.array_equal(dist64.float().numpy(), want_dist)


@pytest.mark.parametrize("path", ["passes", "partition"])
def test_kth_smallest_is_an_upper_bound(path, monkeypatch):
    """At least k entries of a column are at most its bound, and the bound is at least the k-th smallest entry; on
    ordinary values it is that value exactly. The passes (any k on CUDA or without numpy) give at least the k-th
    smallest distinct value, numpy's partition (larger k on CPU) the k-th smallest entry. Ties, zeros, subnormal
    gaps and +inf included. A column the bound cannot serve (NaN, -inf; for the passes also fewer than k distinct
    values) gets NaN or +inf: its row is ranked exactly."""
    monkeypatch.setattr(ref, "KTH_PASSES_K", 1 << 30 if path == "passes" else 1)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 300, generator=g)
    x[:, :50] = torch.randint(-3, 9, (64, 50), generator=g).float()  # many ties and exact zeros
    x[:, 50:60] = torch.randint(0, 40, (64, 10), generator=g).float() * 2.0**-140  # subnormal values and gaps
    x[:20, 60:70] = float("inf")
    x[0, 70:80] = float("-inf")
    x[3, 80] = float("nan")
    x[:, 81:90] = torch.randint(0, 3, (64, 9), generator=g).float()  # three distinct values
    x[:, 90] = float("inf")
    for k in (1, 2, 4, 9, 16):
        bound = ref.kth_smallest(x, k)
        for j in range(300):
            col, b = x[:, j], bound[j]
            distinct, entries = torch.unique(col), col.sort().values
            if not torch.isfinite(b):  # only for NaN or -inf in the column, or too few finite values
                few = int(torch.isfinite(distinct if path == "passes" else entries).sum()) < k
                assert torch.isnan(col).any() or (col == float("-inf")).any() or few, (k, j, b)
                continue
            assert (col <= b).sum() >= k and b >= entries[k - 1], (k, j, b)
            if path == "passes":
                assert b >= distinct[k - 1], (k, j, b)
            else:
                assert b == entries[k - 1], (k, j, b)
            if j > 90:
                assert b == distinct[k - 1], (k, j)
        assert torch.isnan(bound[80]) and not torch.isfinite(bound[70]) and not torch.isfinite(bound[90])
        assert bool(torch.isfinite(bound[81:90]).all()) == (path == "partition" or k <= 3)


@pytest.mark.parametrize("path", ["passes", "partition"])
@pytest.mark.parametrize("shape", [(59, 1), (1, 7), (64, 300)], ids=str)
def test_kth_smallest_leaves_the_scores_alone(path, shape, monkeypatch):
    """The scores it bounds are read again afterwards: neither path may write them, whatever the shape (numpy's
    transpose of a [G, 1] array is already contiguous, so a partition "on a contiguous copy" could run in place)."""
    monkeypatch.setattr(ref, "KTH_PASSES_K", 1 << 30 if path == "passes" else 1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    saved = x.clone()
    for k in range(1, min(shape[0], 6) + 1):
        bound = ref.kth_smallest(x, k)
        assert torch.equal(x, saved), (k, "scores changed")
        assert torch.equal(bound, saved.sort(0).values[k - 1]), k


def awkward_columns(G: int, seed: int) -> torch.Tensor:
    """[G, 200] scores the top level can hold: ties, zeros, subnormals, both signs, huge values, inf, NaN."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(G, 200, generator=g) * 10.0 ** torch.randint(-6, 7, (1, 200), generator=g)
    x[:, :40] = torch.randint(-3, 4, (G, 40), generator=g).float()  # many exact ties, exact zeros
    x[:, 40:50] = torch.randint(-20, 20, (G, 10), generator=g).float() * 2.0**-140  # subnormal values and gaps
    x[:, 50:60] -= 1e5  # far below zero: the bits order the other way
    x[: G // 2, 60:70] = float("inf")  # fewer than k finite values in the columns of small G
    x[0, 70], x[G - 1, 71], x[G // 2, 72] = float("-inf"), float("nan"), -1e35
    x[:, 73:80] = torch.randn(G, 7, generator=g) * 1e34  # beyond REGULAR
    x[:, 80] = 1.0 + torch.arange(G) * 2.0**-22  # distinct values closer than the index bits resolve
    return x


@pytest.mark.parametrize("G", [1, 5, 100, 128, 255])
def test_top_groups_selects_the_k_smallest_and_bounds_the_kth(G):
    """Per column: k distinct entries, each at most the bound; the bound at least the k-th smallest entry and within
    the index bits' resolution of it; every unselected entry at least the largest selected one up to that
    resolution. Columns the bound cannot serve: NaN (NaN or a value below -REGULAR) or +inf (beyond REGULAR)."""
    x = awkward_columns(G, G)
    res = 2.0 ** -(23 - max(1, (G - 1).bit_length()))  # relative resolution of the embedded values
    for k in sorted({1, min(G, 2), min(G, 4), min(G, 16), G}):
        top = x.clone()
        sel, ub = ref.top_groups(top, k)
        sel, ub = torch.from_numpy(sel), torch.from_numpy(ub)
        assert sel.shape == (k, 200) and ub.shape == (200,)
        for j in range(200):
            col, b = x[:, j], float(ub[j])
            kth = float(col.sort().values[k - 1])
            if torch.isnan(col).any() or float(col.min()) < -ref.REGULAR:
                assert np.isnan(b), (k, j, b)
                continue
            if kth > ref.REGULAR:
                assert b == float("inf"), (k, j, b)
                continue
            picked = sel[:, j]
            assert len(set(picked.tolist())) == k, (k, j, picked)
            assert bool((col[picked] <= b).all()) and b >= kth, (k, j, b, kth)
            assert b <= kth + abs(kth) * 2 * res + 2.0**-140, (k, j, b, kth)
            rest = torch.ones(G, dtype=torch.bool)
            rest[picked] = False
            if rest.any():
                top_sel = float(col[picked].max())
                assert float(col[rest].min()) >= top_sel - abs(top_sel) * 2 * res - 2.0**-140, (k, j)
        # what it leaves: +inf exactly at the selected entries, finite or NaN elsewhere
        marked = torch.zeros_like(top, dtype=torch.bool).scatter_(0, sel, True)
        assert bool((top[marked] == float("inf")).all()) and not bool(torch.isinf(top[~marked]).any())


@pytest.mark.parametrize("G", [5, 128, 255])
def test_extra_groups_finds_every_other_entry_within_the_threshold(G):
    """Selected entries plus the extras cover every entry at most the threshold (ties beyond the k-th, clusters, a
    generous threshold), with no entry twice and none past the threshold beyond the index bits' resolution."""
    x = awkward_columns(G, 7 * G)
    res = 2.0 ** -(23 - max(1, (G - 1).bit_length()))
    g = torch.Generator().manual_seed(G)
    for k in (1, min(G, 4)):
        top = x.clone()
        sel, ub = ref.top_groups(top, k)
        base = torch.from_numpy(ub).nan_to_num(0.0, 0.0, 0.0)  # any finite threshold must work
        for thr in (base, base + base.abs() * 1e-3 + 1.0, base + torch.rand(200, generator=g) * 3):
            extra = ref._extra_groups(top.numpy(), thr.float().numpy())
            pairs = set() if extra is None else set(zip(extra[0].tolist(), extra[1].tolist()))
            n_extra = 0 if extra is None else extra[0].shape[0]
            assert len(pairs) == n_extra
            chosen = {(int(sel[i, j]), j) for i in range(k) for j in range(200)}
            assert not pairs & chosen
            want = {(gi, j) for gi, j in (x <= thr).nonzero().tolist()} - chosen
            assert want <= pairs, sorted(want - pairs)[:5]
            for gi, j in pairs - want:  # within the resolution of the threshold
                t = float(thr[j])
                assert float(x[gi, j]) <= t + abs(t) * 2 * res + 2.0**-140, (gi, j)


@pytest.mark.parametrize("k", [1, 3, 4, 5, 16])
def test_merge_smallest_every_path_agrees(k, monkeypatch):
    """The repacked sort (numpy and torch), the scatter-min passes and the dense top-k: the same k smallest keys per
    row as a brute force, whatever `best` already holds (KEY_NAN and KEY_BAD classes included)."""
    g = torch.Generator().manual_seed(k)
    m, K, n = 37, 3000, 400
    rows = torch.randint(0, m, (n,), generator=g)
    bits = torch.randint(0, 2**31 - 1, (n,), generator=g).clamp_max_(0x7F800000)
    bits[::7], bits[3::11] = vq_keys.KEY_NAN, vq_keys.KEY_BAD
    keys = (bits << 32) | torch.randperm(K, generator=g)[:n]  # distinct code indices: keys of a row are distinct
    best = torch.full((k, m), ref.KEY_NONE, dtype=torch.int64)
    held = (torch.randint(0, 2**30, (k, 10), generator=g) << 32) | (K + torch.arange(k * 10).view(k, 10))
    best[:, :10] = held.sort(0).values
    expect = torch.full((k, m), ref.KEY_NONE, dtype=torch.int64)
    for i in range(m):
        mine = torch.cat([best[:, i][best[:, i] != ref.KEY_NONE], keys[rows == i]]).sort().values[:k]
        expect[: mine.numel(), i] = mine
    codes = K + k * 10
    got = {"packed, numpy": ref.merge_smallest(best, rows, keys, codes=codes)}
    got["passes or dense"] = ref.merge_smallest(best, rows, keys, codes=2**40)  # too wide to repack
    monkeypatch.setattr(ref, "_np", None)
    got["packed, torch"] = ref.merge_smallest(best, rows, keys, codes=codes)
    for name, out in got.items():
        assert torch.equal(out, expect), name


def test_reused_buffers_never_leak_between_calls_or_threads():
    """Big, small, big again, and two threads at once: every answer equals a fresh single-threaded one."""
    g = torch.Generator().manual_seed(8)
    problems = [(torch.randn(m, 12, generator=g), torch.randn(K, 12, generator=g)) for m, K in
                [(600, 2000), (30, 1100), (600, 2000), (200, 5000)]]  # fmt: skip
    want = [ref.vq_nearest_ref(z, c, topk=5) for z, c in problems]
    for (z, c), (idx, dist) in zip(problems, want):
        check_topk(z, c, "l2", idx, dist, 5)
    for _ in range(2):
        for (z, c), (idx, dist) in zip(problems, want):
            got = ref.vq_nearest_ref(z, c, topk=5)
            assert torch.equal(got[0], idx) and torch.equal(got[1], dist)
    results, errors = {}, []

    def worker(i):
        try:
            for j in range(3):
                z, c = problems[(i + j) % len(problems)]
                results[(i, j)] = ref.vq_nearest_ref(z, c, topk=5)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (i, j), (idx, dist) in results.items():
        expect = want[(i + j) % len(problems)]
        assert torch.equal(idx, expect[0]) and torch.equal(dist, expect[1])


def test_cpu_path_memory_stays_within_chunks():
    """1100 x 4096 top-8 (an M x K score matrix would be 18 MB): torch temporaries within a score chunk, numpy's
    (traced by tracemalloc) within a few MB."""
    z, codebook = torch.randn(1100, 12), torch.randn(4096, 12)
    with MaxNumel(z, codebook) as mode:
        idx, dist = ref.vq_nearest_ref(z, codebook, topk=8)
    assert mode.max_numel <= ref.CHUNK_ELEMS < z.shape[0] * codebook.shape[0], mode.max_numel
    tracemalloc.start()  # a call of its own: the dispatch mode above imports modules on first use
    try:
        again = ref.vq_nearest_ref(z, codebook, topk=8)
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert numpy_peak < 8 * 2**20 < 4 * z.shape[0] * codebook.shape[0], numpy_peak
    assert torch.equal(again[0], idx) and torch.equal(again[1], dist)
    want_idx, want_dist = contract(z[:50], codebook, "l2", 8)
    assert np.array_equal(idx[:50].numpy(), want_idx) and np.array_equal(dist[:50].numpy(), want_dist)


def test_cpu_sweep_prints_its_table(monkeypatch, capsys):
    """`python -m bench.vq_cpu_sweep`: one line per shape with both timings and their ratio; bad counts refused."""
    from bench import vq_cpu_sweep

    threads = torch.get_num_threads()
    monkeypatch.setattr(vq_cpu_sweep, "SHAPES", [(64, 300)])
    try:
        vq_cpu_sweep.main(["--threads", "1", "--rounds", "2"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "threads=1" in out and "64 x 300" in out and out.count("x)") == 3, out
    with pytest.raises(SystemExit) as e:
        vq_cpu_sweep.main(["--threads", "0"])
    assert e.value.code == 2


def test_cpu_sweep_small_compares_the_two_paths(monkeypatch, capsys):
    """`--small`: per shape and metric, the dense path against the general one (same codes checked), cdist for l2;
    the dense path's limit is restored afterwards."""
    from bench import vq_cpu_sweep
    from spectralar_kernels.vq import dense

    threads, limit = torch.get_num_threads(), dense.DENSE_ELEMS
    monkeypatch.setattr(vq_cpu_sweep, "SMALL_SHAPES", [(8, 50)])
    try:
        vq_cpu_sweep.main(["--threads", "1", "--rounds", "2", "--small"])
    finally:
        torch.set_num_threads(threads)
    lines = [line for line in capsys.readouterr().out.splitlines() if "8 x 50" in line]
    assert len(lines) == 2 and "l2" in lines[0] and "cosine" in lines[1], lines
    assert lines[0].count("cdist") == 2 and "cdist" not in lines[1] and lines[1].count("x)") == 2, lines
    assert dense.DENSE_ELEMS == limit
