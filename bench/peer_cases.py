"""What bench/compare_peers.py (forward) and bench/compare_backward.py share: the problem
(bf16, head dim 128, 16 heads), the named patterns, FlashAttention-4's own masks for
them, and CUDA-event timing."""
import statistics

import torch

H, D = 16, 128
DT = torch.bfloat16

CASES = {
    "dense": {"type": "dense"},
    "causal": {"type": "dense", "causal": True},
    "window": {"type": "local_window", "window": 1024},
    "causal_window": {"type": "local_window", "left": 1024, "right": 0},
    "global_local": {"type": "global_local", "global": 128, "window": 512},
    "longnet": {"type": "longnet", "segments": [2048, 4096, 8192], "rates": [1, 2, 4]},
    "strided": {"type": "strided", "stride": 64, "mode": "relative"},
    "hierarchy": {"preset": "standard"},
}

# FlashAttention-4's own masks: (causal, window_size) per case; absent where it has none.
FA4_CASES = {"dense": (False, (None, None)), "causal": (True, (None, None)), "window": (False, (512, 512)),
             "causal_window": (False, (1024, 0))}


def time_ms(fn, reps, warmup=3):
    """Median of `reps` CUDA-event timings of fn() after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)
