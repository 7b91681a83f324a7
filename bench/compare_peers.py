#!/usr/bin/env python3
"""Side-by-side forward timing: spattn (through python/spattn.py; its heuristic's kernel
family, and the sm80 family forced, on Hopper) against FlashAttention-4 (flash_attn.cute,
where installed: dense, causal, sliding windows), FlexAttention (Triton and, where the
CUTLASS DSL is installed, its FLASH backend) and SDPA (FlashAttention-2 and cuDNN
backends): same process, same GPU, same inputs.

bf16, head dim 128, B=1, H=16. Times are CUDA-event medians over --reps runs after
warm-up; useful TFLOP/s = 4 * D * allowed pairs * H / time (allowed pairs from spattn's
exact layout statistics); ratios are peer time / spattn time (> 1: spattn is faster).

    python3 bench/compare_peers.py [--seqs 16384,65536] [--cases window,longnet] [--quick]
    python3 bench/compare_peers.py --runs dense@16384,window@65536   # explicit (case, seq) list
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import spattn  # noqa: E402

import peer_cases  # noqa: E402
from peer_cases import CASES, DT, FA4_CASES, H, D, time_ms  # noqa: E402,F401


# ---- FlexAttention formulations of the same patterns ---------------------------------

def flex_mask_mod(name, n):
    if name in ("dense",):
        return None
    if name == "causal":
        return lambda b, h, q, kv: kv <= q
    if name == "window":
        return lambda b, h, q, kv: (q - kv).abs() <= 512
    if name == "global_local":
        return lambda b, h, q, kv: ((q - kv).abs() <= 256) | (kv < 128) | (q < 128)
    if name == "strided":
        return lambda b, h, q, kv: ((q - kv) % 64) == 0
    if name == "hierarchy":
        levels = [(64, 256, 64), (256, 1024, 128), (1024, -1, 256)]

        def mm(b, h, q, kv):
            allowed = torch.zeros_like(q, dtype=torch.bool)
            for stride, window, block in levels:
                s = max(1, stride // block)
                term = ((q // block) % s) == 0
                if window != -1:
                    term = term & (((q // block) - (kv // block)).abs() <= (window // block) // 2)
                allowed = allowed | term
            return allowed
        return mm
    raise KeyError(name)


def longnet_branch_mod(w, r):
    group = math.ceil(H / r)

    def mm(b, h, q, kv):
        o = h // group
        return ((q // w) == (kv // w)) & (((q % w) % r) == o) & (((kv % w) % r) == o)
    return mm


def run_flex(name, q, k, v, n, backend=None):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    compiled = torch.compile(flex_attention, dynamic=False)
    opts = {"kernel_options": {"BACKEND": backend}} if backend else {}

    def flex(*a, **kw):
        return compiled(*a, **kw, **opts)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # flex wants [B, H, N, D]
    if name == "longnet":
        # Per-head masks: create_block_mask materialises H x N x N booleans (512 GiB at
        # 64k), and its compiled path did not finish within minutes on an H200.
        if n > 16384:
            raise RuntimeError("skipped: FlexAttention's per-head LongNet block masks do not build at this length")
        masks = [create_block_mask(longnet_branch_mod(w, r), 1, H, n, n, device="cuda")
                 for w, r in ((2048, 1), (4096, 2), (8192, 4))]

        def fn():
            outs = [flex(qt, kt, vt, block_mask=m, return_lse=True) for m in masks]
            lse = torch.stack([l for _, l in outs])          # [3, B, H, N]
            w = torch.softmax(lse.nan_to_num(neginf=-1e30), dim=0).unsqueeze(-1)
            return sum(w[i] * outs[i][0] for i in range(3))
        return fn
    mm = flex_mask_mod(name, n)
    if mm is None:
        return lambda: flex(qt, kt, vt)
    bm = create_block_mask(mm, None, None, n, n, device="cuda")
    return lambda: flex(qt, kt, vt, block_mask=bm)




def run_fa4(name, q, k, v):
    if name not in FA4_CASES:
        return None
    from flash_attn.cute.interface import flash_attn_func
    causal, window = FA4_CASES[name]

    def fn():
        return flash_attn_func(q, k, v, causal=causal, window_size=window)
    return fn


def run_sdpa(backend, name, q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if name not in ("dense", "causal"):
        return None
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    b = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def fn():
        with sdpa_kernel(b):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=(name == "causal"))
    return fn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", default="16384,65536")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="16k only, fewer repetitions")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--runs", help="explicit case@seq list instead of --cases x --seqs")
    peer_cases.add_row_options(ap)
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()
    if args.table:
        print_table(peer_cases.read_rows(args.table))
        return
    seqs = [16384] if args.quick else [int(s) for s in args.seqs.split(",")]
    reps = 10 if args.quick else args.reps
    gpu = torch.cuda.get_device_name()
    rows = []
    runs = ([(r.split("@")[0], int(r.split("@")[1])) for r in args.runs.split(",")] if args.runs
            else [(name, n) for n in seqs for name in args.cases.split(",")])
    inputs = {}
    for name, n in runs:
        if n not in inputs:
            inputs.clear()
            gen = torch.Generator(device="cuda").manual_seed(n)
            inputs[n] = [torch.rand(1, n, H, D, device="cuda", dtype=torch.float32, generator=gen).mul_(2).sub_(1).to(DT)
                         for _ in range(3)]
        q, k, v = inputs[n]
        pattern = CASES[name]
        stats = spattn.pattern_stats(pattern, n, heads=H, head_dim=D)
        flops = 4.0 * D * stats["allowed_pairs"] * H
        row = {"case": name, "seq": n, "density": stats["density"], "gpu": gpu}
        try:
            attn = spattn.Attention(pattern)
            out = torch.empty_like(q)
            row["spattn_ms"] = time_ms(lambda: attn(q, k, v, out=out), reps)
            row["spattn_tflops"] = flops / row["spattn_ms"] / 1e9
            row["config"] = [l for l in attn.explain().splitlines() if l.startswith("config")][0].split()[1]
        except Exception as e:  # report and go on: one failing case must not hide the rest
            row["spattn_error"] = str(e).splitlines()[0]
        if row.get("config", "").startswith("sm90"):
            # The sm80 family on the same GPU, forced (its heuristic's tile for D = 128).
            try:
                a80 = spattn.Attention(pattern, config="128x64w4s1:longest")
                out = torch.empty_like(q)
                row["sm80_ms"] = time_ms(lambda: a80(q, k, v, out=out), reps)
            except Exception as e:
                row["sm80_error"] = str(e).splitlines()[0][:80]
        try:
            fn = run_fa4(name, q, k, v)
            if fn:
                row["fa4_ms"] = time_ms(fn, reps)
        except Exception as e:
            row["fa4_error"] = str(e).splitlines()[0][:80]
        for backend in ("flash", "cudnn"):
            try:
                fn = run_sdpa(backend, name, q, k, v)
                if fn:
                    row[f"{backend}_ms"] = time_ms(fn, reps)
            except Exception as e:
                row[f"{backend}_error"] = str(e).splitlines()[0][:80]
        if not args.no_flex:
            try:
                t0 = time.time()
                fn = run_flex(name, q, k, v, n)
                fn()
                torch.cuda.synchronize()
                row["flex_setup_s"] = time.time() - t0
                row["flex_ms"] = time_ms(fn, reps)
            except Exception as e:
                row["flex_error"] = str(e).splitlines()[0][:80]
            if name != "longnet":
                try:
                    fn = run_flex(name, q, k, v, n, backend="FLASH")
                    fn()
                    torch.cuda.synchronize()
                    row["flexflash_ms"] = time_ms(fn, reps)
                except Exception as e:
                    row["flexflash_error"] = str(e).splitlines()[0][:80]
        peer_cases.report_row(row, rows, args.rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print_table(rows)


def print_table(rows):
    cols = [("sm80", "sm80_ms"), ("fa4", "fa4_ms"), ("cudnn", "cudnn_ms"), ("fa2", "flash_ms"),
            ("flexFLASH", "flexflash_ms"), ("flex", "flex_ms")]
    peer_cases.print_table(rows, "spattn vs peers", cols, 13, "config",
                           lambda r: f"{r.get('config', r.get('spattn_error', ''))}")


if __name__ == "__main__":
    main()
