"""What bench/compare_peers.py (forward), bench/compare_backward.py and
bench/compare_varlen.py share: the problem (bf16, head dim 128, 16 heads), the named
patterns, FlashAttention-4's own masks for them, CUDA-event timing, the rows of results
(JSON lines, --rows / --table) and their table."""
import json
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
    "neighborhood": {"type": "neighborhood", "grid": [256, 256], "window": [13, 13]},
}

# FlashAttention-4's own masks: (causal, window_size) per case; absent where it has none.
FA4_CASES = {"dense": (False, (None, None)), "causal": (True, (None, None)), "window": (False, (512, 512)),
             "causal_window": (False, (1024, 0))}


def add_row_options(ap):
    """--rows FILE (each row appended as it is measured, so a run cut short keeps what it
    measured) and --table FILE (only print the table of such a file)."""
    ap.add_argument("--rows", help="append each row (a JSON line) to this file as it is measured")
    ap.add_argument("--table", help="only print the table of the rows in this file (from --rows)")


def read_rows(path):
    """The rows of a --rows file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def report_row(row, rows, path):
    """A measured row: kept in `rows`, printed as a JSON line, appended to `path` if given."""
    rows.append(row)
    print(json.dumps(row), flush=True)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


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


def print_table(rows, title, cols, width, tail_header, tail):
    """Per row: case, sequence, density, spattn's ms and TF/s, then for each (name, key) of
    `cols` that peer's ms (columns `width` wide) and its ratio to spattn's, then tail(row)."""
    def fmt(x, spec):
        return format(x, spec) if isinstance(x, (int, float)) else "-"

    gpu = rows[0]["gpu"] if rows else "?"
    print(f"\n{title} on {gpu} (bf16, hd128, B=1, H={H}); ms, and x = peer ms / spattn ms")
    print(f"{'case':<14}{'seq':>6}{'density':>8}{'spattn ms':>10}{'TF/s':>6}"
          + "".join(f"{name + ' ms':>{width}}{'x':>6}" for name, _ in cols) + "  " + tail_header)
    for r in rows:
        s = r.get("spattn_ms")
        ratio = lambda key: (r[key] / s) if (s and key in r) else None  # noqa: E731
        print(f"{r['case']:<14}{r['seq']:>6}{r['density']:>8.4f}{fmt(s, '10.3f'):>10}"
              f"{fmt(r.get('spattn_tflops'), '6.0f'):>6}"
              + "".join(f"{fmt(r.get(key), f'{width}.3f'):>{width}}{fmt(ratio(key), '6.2f'):>6}" for _, key in cols)
              + "  " + tail(r))
