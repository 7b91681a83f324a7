"""spattn.selective_scan / spattn.SelectiveScan and spattn.Performer on the GPU with torch
tensors: the scan against a sequential float64 reference written here (lengths 1, odd and
past a chunk; with and without gate, skip, bias and softplus; x and z as halves of one
projection; the final state), Performer against a float64 reference of the same estimator
with the features the wrapper reports (non-causal with GQA, causal, after a redraw), and
the wrapper's errors (CPU tensors, wrong dtype, tensors that need gradients). Exits 77
(ctest: skipped) without PyTorch or a CUDA GPU.

Tolerance per element |out - ref| <= rtol |ref| + atol max|ref|, as the C++ tests:
  scan fp32 (1e-4, 1e-4)  bf16 (2^-8, 4e-3);  performer fp32 (1e-4, 1e-4)  bf16 (2^-8, 8e-3)."""
import math
import sys

try:
    import torch
except ImportError:
    print("skipped: PyTorch is not installed")
    sys.exit(77)
if not torch.cuda.is_available():
    print("skipped: no CUDA GPU")
    sys.exit(77)

import spattn  # noqa: E402

TOL_SCAN = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2 ** -8, 4e-3)}
TOL_PERF = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2 ** -8, 8e-3)}
failures = []
gen = torch.Generator(device="cuda").manual_seed(11)


def rand(shape, lo, hi, dtype=torch.float32):
    return (torch.rand(shape, device="cuda", generator=gen) * (hi - lo) + lo).to(dtype)


def check(name, out, ref, tol):
    rtol, atol = tol
    out, ref = out.double(), ref.double()
    bound = rtol * ref.abs() + atol * ref.abs().max()
    bad = ~((out - ref).abs() <= bound)  # NaN counts as bad
    worst = (out - ref).abs().max().item()
    print(f"{name}: max err {worst:.2e}, {int(bad.sum())} of {out.numel()} outside")
    if bad.any():
        failures.append(f"{name}: {int(bad.sum())} elements outside the tolerance (max err {worst:.2e})")


def scan_reference(x, delta, a_log, b, c, d, z, bias, softplus):
    x, delta, b, c = (t.double() for t in (x, delta, b, c))
    B, L, D = x.shape
    A = -torch.exp(a_log.double())  # [D, N]
    dt = delta + (bias.double() if bias is not None else 0)
    if softplus:
        dt = torch.nn.functional.softplus(dt)
    h = torch.zeros(B, D, A.shape[1], dtype=torch.float64, device=x.device)
    ys = []
    for t in range(L):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * b[:, t, None, :]
        y = (h * c[:, t, None, :]).sum(-1)
        if d is not None:
            y = y + d.double() * x[:, t]
        if z is not None:
            zt = z[:, t].double()
            y = y * zt * torch.sigmoid(zt)
        ys.append(y)
    return torch.stack(ys, 1), h


for dtype in (torch.float32, torch.bfloat16):
    for L, D, N, gate, skip, bias_on, softplus, packed in [
        (1, 37, 16, True, True, True, True, False),
        (77, 64, 8, False, False, False, False, False),
        (300, 100, 16, True, True, True, True, True),
        (513, 40, 32, True, False, True, True, False),
    ]:
        B = 2
        if packed:  # x and z as halves of one [B, L, 2D] projection output
            xz = rand((B, L, 2 * D), -1, 1, dtype)
            x, z = xz[..., :D], xz[..., D:]
        else:
            x, z = rand((B, L, D), -1, 1, dtype), rand((B, L, D), -3, 3, dtype)
        # Δ must stay positive without softplus (a negative Δ makes exp(ΔA) grow).
        delta = rand((B, L, D), -4, 1, dtype) if softplus else rand((B, L, D), 0, 2, dtype)
        b, c = rand((B, L, N), -1, 1, dtype), rand((B, L, N), -1, 1, dtype)
        a_log = torch.log(torch.arange(1, N + 1, device="cuda", dtype=torch.float32)).repeat(D, 1) + rand((D, N), -.3, .3)
        d, bias = rand((D,), -1, 1), rand((D,), -.5, .5)
        args = dict(d=d if skip else None, z=z if gate else None, delta_bias=bias if bias_on else None,
                    delta_softplus=softplus)
        y, state = spattn.selective_scan(x, delta, a_log, b, c, return_final_state=True, **args)
        ref_y, ref_state = scan_reference(x, delta, a_log, b, c, args["d"], args["z"], args["delta_bias"], softplus)
        name = f"scan {dtype} L={L} D={D} N={N} gate={gate} skip={skip} bias={bias_on} softplus={softplus} packed={packed}"
        check(name + " y", y, ref_y, TOL_SCAN[dtype])
        check(name + " state", state, ref_state, TOL_SCAN[torch.float32])
        if y.dtype != dtype or tuple(y.shape) != (B, L, D):
            failures.append(f"{name}: y is {y.dtype} {tuple(y.shape)}")

# A forced configuration through the class, and its explanation.
scan = spattn.SelectiveScan(config="32x4x8")
x = rand((1, 200, 64), -1, 1)
y = scan(x, rand((1, 200, 64), -4, 1), torch.zeros(64, 16, device="cuda"), rand((1, 200, 16), -1, 1),
         rand((1, 200, 16), -1, 1))
torch.cuda.synchronize()
if "32x4x8" not in scan.explain():
    failures.append("explain() does not show the forced scan config: " + scan.explain())


def performer_reference(q, k, v, omega, causal):
    q, k, v, omega = (t.double() for t in (q, k, v, omega))
    D, M = q.shape[-1], omega.shape[0]
    G = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)

    def phi(x):
        xh = x * D ** -0.25
        return torch.exp(xh @ omega.T - (xh * xh).sum(-1, keepdim=True) / 2) / math.sqrt(M)

    w = torch.einsum("bihm,bjhm->bhij", phi(q), phi(k))
    if causal:
        w = w.tril()
    num = torch.einsum("bhij,bjhd->bihd", w, v)
    den = w.sum(-1).transpose(1, 2)[..., None]
    return torch.where(den > 0, num / den, torch.zeros_like(num))


for dtype in (torch.float32, torch.bfloat16):
    for causal in (False, True):
        Nq, Nk, H, Hkv, D = (190, 190, 4, 4, 64) if causal else (190, 257, 4, 2, 64)
        q, k, v = rand((2, Nq, H, D), -1, 1, dtype), rand((2, Nk, Hkv, D), -1, 1, dtype), rand((2, Nk, Hkv, D), -1, 1,
                                                                                                    dtype)
        perf = spattn.Performer(D, features=128, seed=3, causal=causal)
        for seed in (3, 9):
            if seed != 3:
                perf.redraw(seed)
            omega = perf.features().to(device="cuda", dtype=dtype)  # the kernels see ω rounded to the dtype
            out = perf(q, k, v)
            check(f"performer {dtype} causal={causal} seed={seed}", out, performer_reference(q, k, v, omega, causal),
                  TOL_PERF[dtype])

# Errors the wrapper reports itself, by name.
perf = spattn.Performer(64, features=64)
q = rand((1, 8, 2, 64), -1, 1, torch.bfloat16)
for call, expect in [
    (lambda: perf(q.cpu(), q.cpu(), q.cpu()), "CUDA device"),
    (lambda: perf(q.double(), q.double(), q.double()), "unsupported tensor dtype"),
    (lambda: perf(q.clone().requires_grad_(), q, q), "no backward pass"),
    (lambda: spattn.selective_scan(x, x, torch.zeros(64, 12, device="cuda"), x[..., :12], x[..., :12]),
     "state size 12 is not supported"),
]:
    try:
        call()
    except spattn.SpattnError as e:
        if expect not in str(e):
            failures.append(f"error '{e}' does not mention '{expect}'")
    else:
        failures.append(f"no error; expected one mentioning '{expect}'")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("ok")
