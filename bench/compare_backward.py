#!/usr/bin/env python3
"""Backward-pass timing: spattn's backward (dQ, dK, dV from O, LSE and dO, through
python/spattn.py) against the backward passes of SDPA (FlashAttention-2 and cuDNN
backends) and FlashAttention-4 (flash_attn.cute, where installed) on the same inputs.

bf16, head dim 128, B=1, H=16. Only the backward is timed: the forward runs once, then
each repetition is one backward (for the peers, torch.autograd.grad with retain_graph).
Useful TFLOP/s = 10 * D * allowed pairs * H / time (the five matrix products of the
FlashAttention-2 backward: S recomputed, dP, dV, dK, dQ); ratios are peer ms / spattn ms.

    python3 bench/compare_backward.py [--runs dense@16384,window@65536] [--reps 10] [--rows F]
    python3 bench/compare_backward.py --table F
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import spattn  # noqa: E402

import peer_cases  # noqa: E402
from peer_cases import CASES, DT, FA4_CASES, H, D, time_ms  # noqa: E402,F401


def autograd_backward(forward, q, k, v, d_out):
    """A function that runs only the backward of forward(q, k, v) for d_out."""
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    out = forward(qg, kg, vg)
    return lambda: torch.autograd.grad(out, (qg, kg, vg), d_out, retain_graph=True)


def peer(name, which, q, k, v, d_out):
    if which in ("flash", "cudnn"):
        if name not in ("dense", "causal"):
            return None
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[which]

        def fwd(qg, kg, vg):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qg.transpose(1, 2), kg.transpose(1, 2), vg.transpose(1, 2),
                                                      is_causal=(name == "causal")).transpose(1, 2)
        return autograd_backward(fwd, q, k, v, d_out)
    if which == "fa4":
        if name not in FA4_CASES:
            return None
        from flash_attn.cute.interface import flash_attn_func
        causal, window = FA4_CASES[name]

        def fwd(qg, kg, vg):
            out = flash_attn_func(qg, kg, vg, causal=causal, window_size=window)
            return out[0] if isinstance(out, tuple) else out
        return autograd_backward(fwd, q, k, v, d_out)
    raise KeyError(which)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="dense@16384,causal@16384,window@65536,global_local@65536,longnet@65536,strided@65536")
    ap.add_argument("--reps", type=int, default=10)
    peer_cases.add_row_options(ap)
    ap.add_argument("--backward-config", help="force spattn's backward config (e.g. 64x128w8s1)")
    ap.add_argument("--deterministic", action="store_true", help="spattn's deterministic backward")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    if args.table:
        print_table(peer_cases.read_rows(args.table))
        return
    gpu = torch.cuda.get_device_name()
    rows = []
    for run in args.runs.split(","):
        name, n = run.split("@")[0], int(run.split("@")[1])
        gen = torch.Generator(device="cuda").manual_seed(n)
        q, k, v, d_out = (torch.rand(1, n, H, D, device="cuda", dtype=torch.float32, generator=gen)
                          .mul_(2).sub_(1).to(DT) for _ in range(4))
        stats = spattn.pattern_stats(CASES[name], n, heads=H, head_dim=D)
        flops = 10.0 * D * stats["allowed_pairs"] * H
        row = {"case": name, "seq": n, "density": stats["density"], "gpu": gpu,
               "variant": (args.backward_config or "heuristic") + (" deterministic" if args.deterministic else "")}
        try:
            attn = spattn.Attention(CASES[name], backward_config=args.backward_config,
                                    deterministic=args.deterministic)
            out = torch.empty_like(q)
            lse = torch.empty(1, H, n, device="cuda", dtype=torch.float32)
            attn.forward(q, k, v, out=out, lse=lse)
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            row["spattn_ms"] = time_ms(lambda: attn.backward(q, k, v, out, lse, d_out, dq, dk, dv), args.reps)
            row["spattn_tflops"] = flops / row["spattn_ms"] / 1e9
        except Exception as e:  # report and go on: one failing case must not hide the rest
            row["spattn_error"] = str(e).splitlines()[0][:120]
        for which in () if args.no_peers else ("flash", "cudnn", "fa4"):
            try:
                fn = peer(name, which, q, k, v, d_out)
                if fn:
                    row[f"{which}_ms"] = time_ms(fn, args.reps)
            except Exception as e:
                row[f"{which}_error"] = str(e).splitlines()[0][:120]
        peer_cases.report_row(row, rows, args.rows)
        del q, k, v, d_out
        torch.cuda.empty_cache()
    print_table(rows)


def print_table(rows):
    peer_cases.print_table(
        rows, "backward: spattn vs peers", [("fa2", "flash_ms"), ("cudnn", "cudnn_ms"), ("fa4", "fa4_ms")], 11,
        "spattn variant, errors",
        lambda r: f"{r.get('variant', '')} " + "; ".join(f"{k}: {v}" for k, v in r.items() if k.endswith("_error")))


if __name__ == "__main__":
    main()
