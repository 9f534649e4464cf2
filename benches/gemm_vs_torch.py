#!/usr/bin/env python3
"""GEMM throughput: Tessera's kernels (`tessera bench-gemm --json`) against
PyTorch's CPU matmul in bf16 and fp32, in one process run, joined per shape.

Shapes are M x N x K (C[M,N] = A[M,K] @ B[K,N], 2*M*N*K flops). Defaults:
2048x2048x2048 and the BERT-base GEMMs at M=128 and M=1024 (a batch of 8 x 128
tokens) with (K, N) in (768, 768) Q/K/V/output projection, (768, 2304) fused
QKV, (768, 3072) FFN up, (3072, 768) FFN down. --shapes takes a comma list of
MxNxK.

Tessera: `tessera bench-gemm --json [--threads T] [--shapes ...]` (flags passed
only where its --help lists them), expected to print a JSON list of rows
{kernel, m, n, k, threads, gflops, peak_gflops, pct_of_peak}. If the build has
no bench-gemm, that is said and only the torch half is printed. Shapes that
Tessera reports but --shapes lacks are measured in torch too.

PyTorch: torch.set_num_threads(T); A, B random normal cast to the dtype; C
preallocated (torch.mm(..., out=C)); W warm-ups, then the median of N timed
calls. If torch is not importable (as on the build machine), that is said and
Tessera's rows are printed alone.

Ratios: tessera GFLOP/s / torch GFLOP/s of each dtype (above 1: Tessera
faster). torch %peak divides by the probe Tessera took (random operand
tiles) around its plain bf16 tile case of the same shape and threads, else
the round's median of those probes for the same threads.

Order: each (shape, threads) runs Tessera's cases and then torch's right
after, so the two meet the machine in the same state (the lent Xeon's tile
unit changes speed by 2x within seconds). A build whose bench-gemm lacks
--shapes or --threads runs its own sweep once a round instead, and torch
measures every (shape, threads) it reports. --kernels and --seconds are
passed where bench-gemm lists them. --rounds R repeats the whole
sweep R times; the table then gives each row's median over the rounds
(GFLOP/s and ratios, each the median of its own) and the range of the bf16
ratio, and --json keeps every round's rows.
--smoke: one 128x768x768 shape, 1 thread, 1 warm-up, 3 timings.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BERT_KN = [(768, 768), (768, 2304), (768, 3072), (3072, 768)]
DEFAULT_SHAPES = [(2048, 2048, 2048)] + [(m, n, k) for m in (128, 1024) for k, n in BERT_KN]


def parse_shapes(s: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in s.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"--shapes: '{item}' is not MxNxK")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def shape_str(m: int, n: int, k: int) -> str:
    return f"{m}x{n}x{k}"


# ---------------------------------------------------------------- tessera


_FLAGS: dict[str, set[str] | str] = {}


def bench_gemm_flags(tessera: Path) -> set[str] | str:
    """The options `tessera bench-gemm --help` lists (read once), or why
    there are none."""
    key = str(tessera)
    if key not in _FLAGS:
        if not tessera.exists():
            _FLAGS[key] = f"{tessera} not found (cargo build --release -p tessera-cli)"
        else:
            h = subprocess.run([str(tessera), "bench-gemm", "--help"], capture_output=True, text=True)
            _FLAGS[key] = (set(re.findall(r"--[a-z][a-z0-9-]*", h.stdout)) if h.returncode == 0
                           else "this tessera build has no `bench-gemm` subcommand: torch half only")
    return _FLAGS[key]


def tessera_rows(tessera: Path, threads: list[int], shapes: list[tuple[int, int, int]], timeout: float,
                 extra: list[str] | None = None) -> tuple[list[dict], str]:
    """(rows, note). Rows as printed by bench-gemm; note says why there are none.
    `extra`: more bench-gemm arguments (only options its --help lists)."""
    flags = bench_gemm_flags(tessera)
    if isinstance(flags, str):
        return [], flags
    base = [str(tessera), "bench-gemm", "--json", *(extra or [])]
    if "--shapes" in flags:
        base += ["--shapes", ",".join(shape_str(*s) for s in shapes)]
    runs = [base + ["--threads", str(t)] for t in threads] if "--threads" in flags else [base]
    rows = []
    for cmd in runs:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return rows, f"`{' '.join(cmd)}` timed out after {timeout:.0f} s"
        if r.returncode != 0:
            msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
            return rows, f"`{' '.join(cmd)}` failed: {msg[-1] if msg else r.returncode}"
        start = r.stdout.find("[")
        try:
            got = json.loads(r.stdout[start:]) if start >= 0 else None
        except json.JSONDecodeError as e:
            return rows, f"bench-gemm JSON did not parse: {e}"
        if not isinstance(got, list):
            return rows, "bench-gemm printed no JSON list"
        need = {"kernel", "m", "n", "k", "threads", "gflops"}
        bad = [g for g in got if not need <= set(g)]
        if bad:
            return rows, f"bench-gemm rows lack {sorted(need - set(bad[0]))}: {bad[0]}"
        rows += got
    note = "" if "--threads" in flags else "bench-gemm has no --threads: its own thread counts are shown"
    if "--shapes" not in flags:
        note = (note + "; " if note else "") + "bench-gemm has no --shapes: its own shapes are joined with torch's"
    return rows, note


# ---------------------------------------------------------------- torch


def torch_info() -> tuple[object | None, str]:
    try:
        import torch
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"
    cap = ""
    try:
        cap = f", cpu capability {torch.backends.cpu.get_cpu_capability()}"
    except Exception:
        pass
    return torch, f"torch {torch.__version__}{cap}, mkldnn {'on' if torch.backends.mkldnn.is_available() else 'off'}"


def torch_gflops(torch, m: int, n: int, k: int, dtype, threads: int, warmup: int, iters: int) -> float:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    c = torch.empty(m, n, dtype=dtype)
    with torch.inference_mode():
        for _ in range(warmup):
            torch.mm(a, b, out=c)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            times.append(time.perf_counter() - t0)
    return 2.0 * m * n * k / statistics.median(times) / 1e9


# ---------------------------------------------------------------- report


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    head = ["shape MxNxK", "thr", "tessera kernel", "GFLOP/s", "%peak", "torch bf16", "torch fp32", "bf16 %peak", "t/bf16", "t/fp32",
            "t/bf16 range"]
    body = []
    for r in rows:
        body.append([r["shape"], str(r["threads"]), r.get("kernel") or "-", fmt(r.get("gflops"), ".1f"),
                     fmt(r.get("pct_of_peak"), ".1f"), fmt(r.get("torch_bf16_gflops"), ".1f"),
                     fmt(r.get("torch_fp32_gflops"), ".1f"), fmt(r.get("torch_bf16_pct_of_peak"), ".1f"),
                     fmt(r.get("ratio_vs_torch_bf16"), ".2f"), fmt(r.get("ratio_vs_torch_fp32"), ".2f"),
                     r.get("ratio_vs_torch_bf16_range") or "-"])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    for line in [head, *body]:
        print("  ".join(c.ljust(w) if i in (0, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default=None, help="comma list (default 1,2; smoke 1)")
    ap.add_argument("--shapes", default=None, help="comma list of MxNxK (default: 2048^3 and the BERT shapes)")
    ap.add_argument("--iters", type=int, default=None, help="timed torch calls per shape (default 20; smoke 3)")
    ap.add_argument("--warmup", type=int, default=None, help="default 3; smoke 1")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--tessera", default=str(REPO / "target/release/tessera"))
    ap.add_argument("--timeout", type=float, default=1800.0, help="per tessera command, seconds")
    ap.add_argument("--json", metavar="OUT", help="write the joined rows as JSON")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the sweep; the table gives medians over rounds")
    ap.add_argument("--kernels", default=None, help="passed to bench-gemm --kernels (default: all)")
    ap.add_argument("--seconds", type=float, default=None, help="passed to bench-gemm --seconds")
    args = ap.parse_args()

    threads = [int(t) for t in (args.threads or ("1" if args.smoke else "1,2")).split(",") if t.strip()]
    shapes = parse_shapes(args.shapes) if args.shapes else ([(128, 768, 768)] if args.smoke else DEFAULT_SHAPES)
    iters = args.iters or (3 if args.smoke else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)

    notes = []
    torch, torch_note = torch_info()
    if torch is None:
        notes.append(f"PyTorch not importable ({torch_note}): torch columns are empty; run this where torch is installed")
    tessera = Path(args.tessera)
    flags = bench_gemm_flags(tessera)
    flags = flags if isinstance(flags, set) else set()
    extra = []
    for opt, val in (("--kernels", args.kernels), ("--seconds", args.seconds)):
        if val:
            if opt in flags:
                extra += [opt, str(val)]
            else:
                notes.append(f"tessera: bench-gemm has no {opt}: {opt} {val} not passed")
    # Each (shape, threads) back to back with torch where bench-gemm can be
    # asked for one of each; an older build runs its own sweep once a round,
    # and torch then measures every key it reports.
    interleave = "--shapes" in flags and "--threads" in flags

    def bf16_probe(rows: list[dict]) -> float | None:
        """The plain bf16 tile case's probe among `rows` (AMX's, else the
        AVX-512 dot products'), for torch's %peak."""
        for kernel in ("amx-bf16", "avx512-bf16"):
            v = [float(r["peak_gflops"]) for r in rows
                 if r.get("kernel") == kernel and r.get("peak_gflops") and not r.get("stage")]
            if v:
                return statistics.median(v)
        return None

    def torch_ref(m: int, n: int, k: int, t: int) -> dict:
        if torch is None:
            return {}
        print(f"bench: torch {shape_str(m, n, k)} threads {t}", file=sys.stderr)
        return {"torch_bf16_gflops": torch_gflops(torch, m, n, k, torch.bfloat16, t, warmup, iters),
                "torch_fp32_gflops": torch_gflops(torch, m, n, k, torch.float32, t, warmup, iters)}

    def key_of(r: dict) -> tuple[int, int, int, int]:
        return int(r["m"]), int(r["n"]), int(r["k"]), int(r["threads"])

    rounds = []
    for rnd in range(max(1, args.rounds)):
        blocks = []  # (key, tessera rows of that key, torch numbers)
        if interleave:
            for (m, n, k) in shapes:
                for t in threads:
                    print(f"bench: round {rnd + 1}, {shape_str(m, n, k)} threads {t}", file=sys.stderr)
                    t_rows, t_note = tessera_rows(tessera, [t], [(m, n, k)], args.timeout, extra)
                    if t_note and f"tessera: {t_note}" not in notes:
                        notes.append(f"tessera: {t_note}")
                    blocks.append(((m, n, k, t), [r for r in t_rows if key_of(r) == (m, n, k, t)],
                                   torch_ref(m, n, k, t)))
        else:
            t_rows, t_note = tessera_rows(tessera, threads, shapes, args.timeout, extra)
            if t_note and f"tessera: {t_note}" not in notes:
                notes.append(f"tessera: {t_note}")
            keys = [(m, n, k, t) for (m, n, k) in shapes for t in threads]
            keys += [kk for kk in dict.fromkeys(key_of(r) for r in t_rows) if kk not in keys]
            for kk in keys:
                blocks.append((kk, [r for r in t_rows if key_of(r) == kk], torch_ref(*kk)))
        # torch %peak: the probe taken around the same block's bf16 tile
        # case (the state torch met right after), else the round's median
        # for the same threads.
        by_threads = {}
        for (_, _, _, t), rows, _ in blocks:
            p = bf16_probe(rows)
            if p:
                by_threads.setdefault(t, []).append(p)
        joined = []
        for (m, n, k, t), rows, ref in blocks:
            ref = dict(ref)
            peak = bf16_probe(rows) or (statistics.median(by_threads[t]) if t in by_threads else None)
            if ref.get("torch_bf16_gflops") and peak:
                ref["torch_bf16_pct_of_peak"] = 100.0 * ref["torch_bf16_gflops"] / peak
            for r in rows or [{}]:
                row = {"shape": shape_str(m, n, k), "m": m, "n": n, "k": k, "threads": t, "round": rnd + 1, **r, **ref}
                for dt in ("bf16", "fp32"):
                    tg, pg = row.get("gflops"), row.get(f"torch_{dt}_gflops")
                    if tg is not None and pg:
                        row[f"ratio_vs_torch_{dt}"] = float(tg) / pg
                joined.append(row)
        rounds.append(joined)

    # One row per (shape, threads, kernel, stage, blocking, epilogue, pages):
    # every number the median over the rounds (each of its own).
    table, order = {}, []
    for joined in rounds:
        for row in joined:
            key = (row["shape"], row["threads"], row.get("kernel"), row.get("stage"), row.get("blocking"),
                   row.get("epilogue"), row.get("huge_pages"))
            if key not in table:
                table[key] = []
                order.append(key)
            table[key].append(row)
    joined = []
    for key in order:
        rows = table[key]
        out = dict(rows[0])
        out.pop("round", None)
        for f, v in rows[0].items():
            if f in ("m", "n", "k", "threads", "round") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            vals = [float(r[f]) for r in rows if isinstance(r.get(f), (int, float))]
            out[f] = statistics.median(vals)
        for f in ("torch_bf16_pct_of_peak", "ratio_vs_torch_bf16", "ratio_vs_torch_fp32"):
            vals = [float(r[f]) for r in rows if r.get(f) is not None]
            if vals:
                out[f] = statistics.median(vals)
        ratios = [float(r["ratio_vs_torch_bf16"]) for r in rows if r.get("ratio_vs_torch_bf16") is not None]
        if len(ratios) > 1:
            out["ratio_vs_torch_bf16_range"] = f"{min(ratios):.2f}-{max(ratios):.2f}"
        joined.append(out)

    print(f"GEMM GFLOP/s, warmup {warmup}, median of {iters} torch calls; {torch_note if torch else 'torch absent'}"
          + (f"; medians over {len(rounds)} rounds" if len(rounds) > 1 else "")
          + ("  (smoke run: not a measurement)" if args.smoke else ""))
    print_table(joined)
    for n in notes:
        print(f"note: {n}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"notes": notes, "rows": joined, "rounds": rounds}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
