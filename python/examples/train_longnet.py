#!/usr/bin/env python3
"""A tiny training run through spattn's differentiable attention: a two-layer model with
LongNet attention learns to copy the token from a fixed distance back (a task only
attention can solve), on synthetic data; the loss falls from ~log(vocab) towards 0.

    PYTHONPATH=python SPATTN_LIB=build/libspattn.so python3 python/examples/train_longnet.py [--steps 300]
"""
import argparse
import math

import torch

import spattn

PATTERN = {"type": "longnet", "segments": [64, 128, 256], "rates": [1, 2, 4], "causal": True}


class Block(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
        self.attn = spattn.SparseAttention(PATTERN)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, self.head_dim).unbind(2)
        a = self.attn(q.contiguous(), k.contiguous(), v.contiguous())
        x = x + self.proj(a.reshape(b, n, -1))
        return x + self.mlp(self.norm2(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32)
    ap.add_argument("--lag", type=int, default=4)  # a multiple of every rate: the same residue class
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    dim, heads = 256, 4  # head dim 64
    emb = torch.nn.Embedding(args.vocab, dim).to(dev)
    pos = torch.nn.Parameter(torch.randn(args.seq, dim, device=dev) * 0.02)
    blocks = torch.nn.ModuleList([Block(dim, heads) for _ in range(2)]).to(dev)
    head = torch.nn.Linear(dim, args.vocab).to(dev)
    params = list(emb.parameters()) + [pos] + list(blocks.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    first = None
    for step in range(args.steps):
        tokens = torch.randint(0, args.vocab, (8, args.seq), device=dev)
        target = torch.roll(tokens, shifts=args.lag, dims=1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x = emb(tokens) + pos
            for blk in blocks:
                x = blk(x)
            logits = head(x)
        loss = torch.nn.functional.cross_entropy(logits[:, args.lag:].float().reshape(-1, args.vocab),
                                                 target[:, args.lag:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    print(f"loss {first:.3f} -> {loss.item():.3f} (chance: {math.log(args.vocab):.3f})")


if __name__ == "__main__":
    main()
