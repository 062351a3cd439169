"""Benchmark the Triton scoring/compaction kernels against the torch reference.

On a GPU: times ``attention_scores`` (Triton vs torch reference) at N = 4k/32k/128k with the
default shapes (Hkv 8, Hq 32, D 128, m 32, bf16) and reports the achieved bandwidth, counting
one read of K as the floor (``B * Hkv * N * D * itemsize`` bytes), against the device's peak
memory bandwidth (from its memory clock and bus width, or ``--peak-gbps``) and a measured
device-to-device copy. It also times the compaction (``gather_kv``: Triton kernel vs
``torch.gather``) at ``--keep`` of the tokens. Prints markdown tables.

On CPU: prints the reference timings only (small N); GPU figures need a GPU.

    python benchmarks/kernel_speed.py                 # GPU: full table
    python benchmarks/kernel_speed.py --n 4096 32768  # other lengths
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import torch


def peak_bandwidth_gbps(device: torch.device) -> float | None:
    """Theoretical DRAM bandwidth in GB/s from the device properties (double data rate), if exposed."""
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second), GB/s."""
    import triton.testing

    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def make_inputs(args, n: int, device: torch.device):
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(args.batch, args.hq, args.m, args.d, device=device, dtype=dtype, generator=gen)
    k = torch.randn(args.batch, args.hkv, n, args.d, device=device, dtype=dtype, generator=gen)
    v = torch.randn(args.batch, args.hkv, n, args.d, device=device, dtype=dtype, generator=gen)
    key_mask = torch.ones(args.batch, n, dtype=torch.bool, device=device)
    return q, k, v, key_mask


def score_kwargs(args, n: int, key_mask):
    return dict(scaling=args.d**-0.5, key_mask=key_mask, causal_offset=n - args.m, num_out=n - args.m)


def cpu_report(args, kernels) -> None:
    device = torch.device("cpu")
    print("No GPU: torch reference timings on CPU only; GPU figures (Triton vs torch, GB/s) need a GPU.\n")
    print(f"Hkv {args.hkv}, Hq {args.hq}, D {args.d}, m {args.m}, {args.dtype}, batch {args.batch}\n")
    print("| N | reference ms | K read GB/s |")
    print("|---:|---:|---:|")
    for n in args.cpu_n:
        q, k, _, key_mask = make_inputs(args, n, device)
        kw = score_kwargs(args, n, key_mask)
        kernels.reference.attention_scores(q, k, **kw)
        reps = 3
        t0 = time.perf_counter()
        for _ in range(reps):
            kernels.reference.attention_scores(q, k, **kw)
        ms = (time.perf_counter() - t0) / reps * 1e3
        gbps = k.numel() * k.element_size() / (ms * 1e-3) / 1e9
        print(f"| {n} | {ms:.2f} | {gbps:.2f} |")


def gpu_report(args, kernels) -> None:
    import triton.testing

    ref = sys.modules[kernels.__name__ + ".reference"]
    ts = importlib.import_module(kernels.__name__ + ".triton_scoring")
    tg = importlib.import_module(kernels.__name__ + ".triton_gather")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = args.peak_gbps or peak_bandwidth_gbps(device)
    copy = copy_bandwidth_gbps(device)
    print(f"Device: {name}; peak DRAM bandwidth: {f'{peak:.0f} GB/s' if peak else 'unknown'}; ")
    print(f"measured copy bandwidth: {copy:.0f} GB/s\n")
    print(f"Hkv {args.hkv}, Hq {args.hq}, D {args.d}, m {args.m}, {args.dtype}, batch {args.batch}; ")
    print("GB/s counts one read of K (the floor); the Triton kernel reads K twice.\n")

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep)

    print("### attention_scores\n")
    print("| N | torch ms | triton ms | speedup | triton GB/s | % of peak | % of copy | max abs err |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.n:
        q, k, v, key_mask = make_inputs(args, n, device)
        kw = score_kwargs(args, n, key_mask)
        want = ref.attention_scores(q, k, **kw)
        got = ts.attention_scores(q, k, **kw)
        err = (got - want).abs().max().item()
        t_ref = bench(lambda q=q, k=k, kw=kw: ref.attention_scores(q, k, **kw))
        t_tri = bench(lambda q=q, k=k, kw=kw: ts.attention_scores(q, k, **kw))
        gbps = k.numel() * k.element_size() / (t_tri * 1e-3) / 1e9
        pct_peak = f"{100 * gbps / peak:.0f}%" if peak else "n/a"
        print(
            f"| {n} | {t_ref:.3f} | {t_tri:.3f} | {t_ref / t_tri:.1f}x | {gbps:.0f} | {pct_peak} "
            f"| {100 * gbps / copy:.0f}% | {err:.1e} |"
        )
        del q, k, v, key_mask, want, got
        torch.cuda.empty_cache()

    print(f"\n### gather_kv (keep {args.keep:.0%} of the tokens, K and V)\n")
    print("| N | torch.gather ms | triton ms | speedup | triton GB/s (read + write) | % of copy |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.n:
        _, k, v, _ = make_inputs(args, n, device)
        keep = max(1, int(n * args.keep))
        scores = torch.rand(args.batch, args.hkv, n, device=device)
        idx = scores.topk(keep, dim=-1).indices.sort(dim=-1).values
        gk, gv = tg.gather_kv(k, v, idx)
        rk, rv = ref.gather_kv(k, v, idx)
        assert torch.equal(gk, rk) and torch.equal(gv, rv)
        t_ref = bench(lambda k=k, v=v, idx=idx: ref.gather_kv(k, v, idx))
        t_tri = bench(lambda k=k, v=v, idx=idx: tg.gather_kv(k, v, idx))
        moved = 2 * (gk.numel() * gk.element_size() + gv.numel() * gv.element_size())
        gbps = moved / (t_tri * 1e-3) / 1e9
        print(
            f"| {n} | {t_ref:.3f} | {t_tri:.3f} | {t_ref / t_tri:.2f}x | {gbps:.0f} | {100 * gbps / copy:.0f}% |"
        )
        del k, v, scores, idx, gk, gv, rk, rv
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 32768, 131072], help="key lengths (GPU)")
    parser.add_argument("--cpu-n", type=int, nargs="+", default=[1024, 4096], help="key lengths (CPU)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hkv", type=int, default=8)
    parser.add_argument("--hq", type=int, default=32)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--m", type=int, default=32, help="queries per head")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--keep", type=float, default=0.25, help="fraction of tokens kept by gather_kv")
    parser.add_argument("--peak-gbps", type=float, default=None, help="override the peak DRAM bandwidth")
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetition time (ms)")
    args = parser.parse_args(argv)
    from judgeq_cache import kernels  # the package installed from this checkout (make install)

    if torch.cuda.is_available():
        gpu_report(args, kernels)
    else:
        cpu_report(args, kernels)


if __name__ == "__main__":
    main()
