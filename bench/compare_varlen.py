#!/usr/bin/env python3
"""Packed variable-length documents, forward: spattn.attention_varlen against the same work
as one batched problem (where every document has one length), FlexAttention's
document-mask formulation (Triton and, where the CUTLASS DSL is installed, its FLASH
backend) and FlashAttention-4's varlen (flash_attn.cute, where installed): same process,
same GPU, same inputs.

bf16, head dim 128, H=16, --total tokens (default 65536) split into documents, each a
problem of its own under --pattern (default causal: each document causal within itself).
Cases: "16x4096" (16 documents of 4096 tokens), "64x1024", "mixed" (lengths uniform in
[--min-len, --max-len] from --seed, the last one taking what is left). Times are
CUDA-event medians over --reps runs after warm-up; spattn is timed with check_lengths=False
(nothing waits on the host) after one untimed call with the check on. Useful TFLOP/s =
4 * D * H * (allowed pairs summed over the documents) / time: L (L + 1) / 2 pairs for a
causal document of L tokens, spattn.pattern_stats per distinct length for other patterns.
Ratios are peer ms / spattn ms (> 1: spattn is faster); "rel" columns of the rows are the
rel L2 difference of each peer's output from spattn's.

    python3 bench/compare_varlen.py [--cases 16x4096,64x1024,mixed] [--pattern causal_window]
    python3 bench/compare_varlen.py --rows F ; python3 bench/compare_varlen.py --table F
"""
import argparse
import inspect
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import torch  # noqa: E402

import spattn  # noqa: E402

import peer_cases  # noqa: E402
from peer_cases import CASES, DT, FA4_CASES, H, D, time_ms  # noqa: E402


# ---- the documents -------------------------------------------------------------------

def document_lengths(case, total, seed, lo, hi):
    """Lengths of a case: "NxL" is N documents of L tokens; "mixed" draws uniform lengths in
    [lo, hi] from `seed` until `total` tokens, the last one taking the rest (so it may be
    longer than hi, or the only one)."""
    if case == "mixed":
        rng = random.Random(seed)
        lengths, left = [], total
        while left > 0:
            n = rng.randint(lo, hi)
            if left - n < lo:
                n = left
            lengths.append(n)
            left -= n
        return lengths
    count, length = (int(x) for x in case.split("x"))
    return [length] * count


def pattern_of(name_or_json):
    """(name, pattern): a name of peer_cases.CASES, or pattern JSON (named if it is one of them)."""
    if name_or_json in CASES:
        return name_or_json, CASES[name_or_json]
    pattern = json.loads(name_or_json)
    names = [n for n, p in CASES.items() if p == pattern]
    return (names[0] if names else "custom"), pattern


def allowed_pairs(name, pattern, lengths):
    """Allowed (query, key) pairs per head summed over the documents."""
    if name == "causal":
        return sum(n * (n + 1) // 2 for n in lengths)
    per_length = {n: spattn.pattern_stats(pattern, n, heads=H, head_dim=D)["allowed_pairs"] for n in set(lengths)}
    return sum(per_length[n] for n in lengths)


# ---- the peers -------------------------------------------------------------------------

def flex_pair_mod(name):
    """The pattern as a predicate of positions relative to the document's start (Nq == Nk
    per document); None where this script has no FlexAttention formulation of it."""
    if name == "dense":
        return lambda qr, kr: qr >= 0
    if name == "causal":
        return lambda qr, kr: kr <= qr
    if name == "window":
        return lambda qr, kr: (qr - kr).abs() <= 512
    if name == "causal_window":
        return lambda qr, kr: (kr <= qr) & (qr - kr <= 1024)
    return None


def document_mask_mod(name, cu):
    """FlexAttention's mask_mod of packed documents (offsets cu, int32 [docs + 1]): the same
    document, and the pattern on positions relative to the document's start."""
    pair = flex_pair_mod(name)
    if pair is None:
        raise RuntimeError(f"skipped: no FlexAttention formulation of '{name}' here")
    # int32 captures: FlexAttention's FLASH backend (CuTe DSL) refuses int64 ones in a mask_mod.
    starts = cu[:-1].to(torch.int32)
    lengths = (cu[1:] - cu[:-1]).long()
    document = torch.repeat_interleave(torch.arange(len(lengths), device=cu.device, dtype=torch.int32), lengths)

    def mask_mod(b, h, q_idx, kv_idx):
        dq, dk = document[q_idx], document[kv_idx]
        return (dq == dk) & pair(q_idx - starts[dq], kv_idx - starts[dk])
    return mask_mod


def run_flex(name, q, k, v, cu, backend=None):
    """FlexAttention over the packed batch as one [1, H, total, D] problem with the document
    mask. Returns (fn, setup seconds); fn returns the output [1, H, total, D]."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    total = q.shape[0]
    mask_mod = document_mask_mod(name, cu)
    t0 = time.time()
    block_mask = create_block_mask(mask_mod, 1, 1, total, total, device=q.device)
    compiled = torch.compile(flex_attention, dynamic=False)
    opts = {"kernel_options": {"BACKEND": backend}} if backend else {}
    qt, kt, vt = (x.unsqueeze(0).transpose(1, 2) for x in (q, k, v))  # flex wants [B, H, N, D]

    def fn():
        return compiled(qt, kt, vt, block_mask=block_mask, **opts)
    fn()
    torch.cuda.synchronize()
    return fn, time.time() - t0


def run_fa4_varlen(name, q, k, v, cu, max_len):
    """FlashAttention-4's varlen forward (flash_attn.cute.interface.flash_attn_varlen_func);
    its keyword arguments are looked up in the installed version's signature. None where
    FA4 has no mask of this pattern."""
    if name not in FA4_CASES:
        return None
    from flash_attn.cute.interface import flash_attn_varlen_func
    causal, window = FA4_CASES[name]
    accepted = inspect.signature(flash_attn_varlen_func).parameters
    wanted = {"cu_seqlens_q": cu, "cu_seqlens_k": cu, "max_seqlen_q": max_len, "max_seqlen_k": max_len,
              "causal": causal, "window_size": window}
    missing = [key for key in ("cu_seqlens_q", "cu_seqlens_k") if key not in accepted]
    if missing:
        raise RuntimeError(f"flash_attn_varlen_func takes no {', '.join(missing)} in this version")
    kwargs = {key: value for key, value in wanted.items() if key in accepted}

    def fn():
        out = flash_attn_varlen_func(q, k, v, **kwargs)
        return out[0] if isinstance(out, tuple) else out
    return fn


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ---- one case --------------------------------------------------------------------------

def measure(case, lengths, name, pattern, args, gpu):
    total, docs, longest = sum(lengths), len(lengths), max(lengths)
    pairs = allowed_pairs(name, pattern, lengths)
    flops = 4.0 * D * H * pairs
    row = {"case": case, "seq": total, "docs": docs, "min_len": min(lengths), "max_len": longest,
           "pattern": name, "density": pairs / float(total) ** 2, "useful_tflop": flops / 1e12, "gpu": gpu}
    gen = torch.Generator(device="cuda").manual_seed(total + docs)
    q, k, v = (torch.rand(total, H, D, device="cuda", generator=gen).mul_(2).sub_(1).to(DT) for _ in range(3))
    cu_list = [0]
    for n in lengths:
        cu_list.append(cu_list[-1] + n)
    cu = torch.tensor(cu_list, dtype=torch.int32, device="cuda")
    reference = None

    def tflops(key):
        row[key + "_tflops"] = flops / row[key + "_ms"] / 1e9

    try:
        out = torch.empty_like(q)
        # The check on: one untimed call (it waits for the GPU's verdict on the lengths).
        checked = spattn.attention_varlen(q, k, v, cu, cu, longest, longest, pattern)
        row["spattn_ms"] = time_ms(lambda: spattn.attention_varlen(q, k, v, cu, cu, longest, longest, pattern,
                                                                   out=out, check_lengths=False), args.reps)
        tflops("spattn")
        torch.cuda.synchronize()
        row["checked_equal"] = bool(torch.equal(checked, out))
        reference = out
        explained = spattn.Attention(pattern, check_lengths=False)
        explained.forward_varlen(q, k, v, cu, cu, longest, longest)
        row["config"] = [line for line in explained.explain().splitlines() if line.startswith("config")][0].split()[1]
    except Exception as e:  # report and go on: one failing column must not hide the rest
        row["spattn_error"] = str(e).splitlines()[0][:120]

    if len(set(lengths)) == 1:
        # The same work as one batched problem [docs, L, H, D]: the same FLOPs, no documents.
        try:
            attn = spattn.Attention(pattern)
            qb, kb, vb = (x.view(docs, longest, H, D) for x in (q, k, v))
            ob = torch.empty_like(qb)
            row["batched_ms"] = time_ms(lambda: attn(qb, kb, vb, out=ob), args.reps)
            tflops("batched")
            if reference is not None:
                row["batched_rel"] = rel(ob.view(total, H, D), reference)
        except Exception as e:
            row["batched_error"] = str(e).splitlines()[0][:120]

    if not args.no_fa4:
        try:
            fn = run_fa4_varlen(name, q, k, v, cu, longest)
            if fn:
                row["fa4_ms"] = time_ms(fn, args.reps)
                tflops("fa4")
                if reference is not None:
                    row["fa4_rel"] = rel(fn(), reference)
        except Exception as e:
            row["fa4_error"] = str(e).splitlines()[0][:120]

    if not args.no_flex:
        for key, backend in (("flex", None), ("flexflash", "FLASH")):
            try:
                fn, setup = run_flex(name, q, k, v, cu, backend)
                row[key + "_setup_s"] = setup
                row[key + "_ms"] = time_ms(fn, args.reps)
                tflops(key)
                if reference is not None:
                    row[key + "_rel"] = rel(fn()[0].transpose(0, 1), reference)
            except Exception as e:
                row[key + "_error"] = str(e).splitlines()[0][:120]
    return row


# ---- the table -------------------------------------------------------------------------

PEERS = [("batched", "batched"), ("fa4 varlen", "fa4"), ("flexFLASH", "flexflash"), ("flex", "flex")]


def print_table(rows):
    """Per row: the case, its documents, spattn's ms and TF/s, then per peer its ms, TF/s
    and the ratio peer ms / spattn ms; then spattn's config (or its error)."""
    def fmt(x, spec):
        return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"

    gpu = rows[0]["gpu"] if rows else "?"
    pattern = rows[0]["pattern"] if rows else "?"
    print(f"\nspattn varlen vs peers on {gpu} (bf16, hd128, H={H}, {pattern} per document); ms, useful TF/s, and "
          "x = peer ms / spattn ms")
    print(f"{'case':<10}{'tokens':>7}{'docs':>5}{'lengths':>12}{'spattn ms':>10}{'TF/s':>6}"
          + "".join(f"{name + ' ms':>15}{'TF/s':>6}{'x':>6}" for name, _ in PEERS) + "  config")
    for r in rows:
        s = r.get("spattn_ms")
        lengths = f"{r['min_len']}-{r['max_len']}" if r["min_len"] != r["max_len"] else str(r["max_len"])
        line = (f"{r['case']:<10}{r['seq']:>7}{r['docs']:>5}{lengths:>12}{fmt(s, '10.3f'):>10}"
                f"{fmt(r.get('spattn_tflops'), '6.0f'):>6}")
        for _, key in PEERS:
            ms = r.get(key + "_ms")
            ratio = ms / s if (ms and s) else None
            line += f"{fmt(ms, '15.3f'):>15}{fmt(r.get(key + '_tflops'), '6.0f'):>6}{fmt(ratio, '6.2f'):>6}"
        print(line + "  " + r.get("config", r.get("spattn_error", "")))
    errors = [(r["case"], k[:-6], v) for r in rows for k, v in r.items() if k.endswith("_error")]
    for case, what, message in errors:
        print(f"  {case} {what}: {message}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="16x4096,64x1024,mixed", help="NxL (N documents of L tokens) or mixed")
    ap.add_argument("--total", type=int, default=65536, help="tokens of a mixed case")
    ap.add_argument("--min-len", type=int, default=256)
    ap.add_argument("--max-len", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0, help="of the mixed lengths")
    ap.add_argument("--pattern", default="causal",
                    help="per document: a name of bench/peer_cases.py (causal, causal_window, window, ...) or JSON")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-fa4", action="store_true")
    peer_cases.add_row_options(ap)
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()
    if args.table:
        print_table(peer_cases.read_rows(args.table))
        return
    name, pattern = pattern_of(args.pattern)
    gpu = torch.cuda.get_device_name()
    rows = []
    for case in args.cases.split(","):
        lengths = document_lengths(case, args.total, args.seed, args.min_len, args.max_len)
        row = measure(case, lengths, name, pattern, args, gpu)
        peer_cases.report_row(row, rows, args.rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print_table(rows)


if __name__ == "__main__":
    main()
