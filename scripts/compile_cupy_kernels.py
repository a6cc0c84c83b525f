"""Compile the CUDA source of npvae's fused CuPy kernels with NVRTC, without a GPU.

    pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12
    python scripts/compile_cupy_kernels.py

A check for machines with no GPU: each kernel body of ``npvae.fast.cupy_kernels.SOURCES`` is put
into a device function with the parameters CuPy would give it (inputs by value, outputs by
reference), for T = float and T = double, and compiled by NVRTC; so is each row sum of
``ROW_SUMS``, as its summed term (assigned to ``a``) followed by its output line, which needs the CUDA
compiler library only, not a device. It catches a typo or a type error in a body; it does not
run anything (``tests/test_gpu.py`` does that, on a GPU). Uses ``cupy_backends``' NVRTC
binding, which is CuPy-internal.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cupy_backends.cuda.libs import nvrtc  # noqa: E402

from npvae.fast.cupy_kernels import ROW_SUMS, SOURCES  # noqa: E402


def device_function(name, in_params, out_params, operation, ctype):
    inputs = [p.split()[1] for p in in_params.split(",")]
    outputs = [p.split()[1] for p in out_params.split(",")]
    args = [f"const {ctype} {n}" for n in inputs] + [f"{ctype}& {n}" for n in outputs]
    return f'extern "C" __device__ void npvae_{name}({", ".join(args)}) {{ typedef {ctype} T; {operation}; }}\n'


def main():
    failures = 0
    bodies = dict(SOURCES)
    for name, (in_params, out_params, term, output) in ROW_SUMS.items():
        bodies[name] = (in_params, out_params, f"T a = {term}; {output}")
    for name, (in_params, out_params, operation) in bodies.items():
        for ctype in ("float", "double"):
            program = nvrtc.createProgram(device_function(name, in_params, out_params, operation, ctype), f"{name}.cu", [], [])
            try:
                nvrtc.compileProgram(program, ["-arch=compute_80", "-default-device"])
                print(f"compiles: {name} with T = {ctype}")
            except nvrtc.NVRTCError:
                failures += 1
                print(f"FAILS:    {name} with T = {ctype}\n{nvrtc.getProgramLog(program)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
