#!/usr/bin/env python3
"""Coefficients of the piecewise GELU (erf form) that the AVX-512 epilogue
evaluates: [-8, 8) cut into 32 intervals of width 1/2, on each a degree-4
polynomial in u = x - (the interval's expansion point), fitted in float64 by
weighted least squares (weights 1/|GELU|, so the negative tail keeps its
relative accuracy) on 64 Chebyshev nodes, then rounded to f32. The point is
the interval's centre, except for the two intervals that meet at 0: there it
is 0 and the constant term is left out, so that GELU(x) ~ x/2 keeps its
relative accuracy near 0 (a centred fit would cancel to 1e-5 there). Prints
the Rust tables that `crates/tessera-kernels/src/elementwise.rs` holds
(GELU_ERF_POINTS, GELU_ERF_PIECES).

Run: python3 scripts/gelu_table.py  (numpy only)
"""
import math

import numpy as np

LO, WIDTH, PIECES, DEGREE = -8.0, 0.5, 32, 4


def gelu(x):
    x = np.asarray(x, dtype=np.float64)
    erfc = np.vectorize(math.erfc)
    # x * Phi(x), with Phi(-a) = erfc(a / sqrt 2) / 2 so the tail keeps its digits.
    return np.where(x < 0, x * 0.5 * erfc(-x / math.sqrt(2)), x * (1 - 0.5 * erfc(x / math.sqrt(2))))


def point(i):
    lo = LO + i * WIDTH
    return 0.0 if lo in (-WIDTH, 0.0) else lo + WIDTH / 2


def table():
    rows = []
    for i in range(PIECES):
        mid, at = LO + (i + 0.5) * WIDTH, point(i)
        k = np.arange(64)
        xs = mid + WIDTH / 2 * np.cos((2 * k + 1) * np.pi / 128)
        y = gelu(xs)
        u = xs - at
        first = 1 if at == 0.0 else 0
        basis = np.stack([u**d for d in range(first, DEGREE + 1)], axis=1) / np.abs(y)[:, None]
        coef, *_ = np.linalg.lstsq(basis, y / np.abs(y), rcond=None)
        coef = np.concatenate([np.zeros(first), coef])
        rows.append(coef.astype(np.float32))  # c0 .. c<DEGREE>
    return np.array(rows)


def main():
    t = table()
    points = ", ".join(np.format_float_scientific(np.float32(point(i)), unique=True, trim="0") for i in range(PIECES))
    print(f"const GELU_ERF_POINTS: [f32; {PIECES}] = [{points}];")
    print(f"const GELU_ERF_PIECES: [[f32; {PIECES}]; {DEGREE + 1}] = [")
    for d in range(DEGREE + 1):
        vals = ", ".join(np.format_float_scientific(v, unique=True, trim="0") for v in t[:, d])
        print(f"    [{vals}],")
    print("];")


if __name__ == "__main__":
    main()
