"""What one AVX2 division costs on this CPU next to a multiplication: the throughput of vdivps and
vmulps on 8 independent chains, one thread, in ns per vector of 8 floats.

Grad-CAM++'s terms take a division per element (cam_methods.h); this tells how much of a kernel's
time the divisions can be: at 8 elements per vector, elements x (ns per vdivps) / 8 / threads.

    python benchmarks/tools/cpu_divide_cost.py
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common
from common import machine, write_result  # noqa: E402

SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
#define CHAINS(OP) \
  for (long i = 0; i < n; ++i) { \
    a = OP(a, d); b = OP(b, d); c = OP(c, d); e = OP(e, d); f = OP(f, d); g = OP(g, d); h = OP(h, d); k = OP(k, d); }
#define TIME(NAME, OP) { \
  a = b = c = e = f = g = h = k = _mm256_set1_ps(1); double best = 1e9; \
  for (int rep = 0; rep < 5; ++rep) { double t = now(); CHAINS(OP) t = now() - t; if (t < best) best = t; } \
  float out[8]; _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, e)), \
                                                     _mm256_add_ps(_mm256_add_ps(f, g), _mm256_add_ps(h, k)))); \
  printf("%s %.4f %g\n", NAME, best / (8.0 * n) * 1e9, out[0]); }
int main(void) {
  const long n = 20000000;
  const __m256 d = _mm256_set1_ps(1.0000001f);
  __m256 a, b, c, e, f, g, h, k;
  TIME("vdivps", _mm256_div_ps)
  TIME("vmulps", _mm256_mul_ps)
}
"""


def main():
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = os.path.join(tmp, "divide.c"), os.path.join(tmp, "divide")
        open(source, "w").write(SOURCE)
        subprocess.run(["gcc", "-O2", "-mavx2", "-o", binary, source], check=True)
        lines = subprocess.run([binary], check=True, capture_output=True, text=True).stdout.split("\n")
    ns = {name: float(value) for name, value, _ in (line.split() for line in lines if line)}
    info = machine("cpu")
    info["device"] = info["device"].rsplit(" (", 1)[0] + " (1 thread)"
    header = ["instruction", "ns per 8-float vector", "x vmulps"]
    rows = [[name, f"{ns[name]:.3f}", f"{ns[name] / ns['vmulps']:.2f}"] for name in ("vdivps", "vmulps")]
    table, paths = write_result("cpu_divide_cost", info, header, rows)
    print(table)
    print("written:", ", ".join(paths))


if __name__ == "__main__":
    main()
