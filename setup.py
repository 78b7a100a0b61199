"""Builds fastops._C: the CPU kernels always, the CUDA kernels when nvcc and a CUDA torch are present.

Environment:
  FASTOPS_BUILD_CUDA=0|1   force the CUDA part off, or require it (the build fails if it cannot be made)
  TORCH_CUDA_ARCH_LIST     e.g. "8.0;9.0a" overrides the default archs (sm_80, sm_90a, and sm_100,
                           sm_120 when this nvcc supports them)
  MAX_JOBS                 parallel compile jobs (default: all cores)
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig


def find_cuda_home():
    """The toolkit folder holding bin/nvcc and include/cuda_runtime.h.

    torch guesses CUDA_HOME from the folder of the `nvcc` on PATH, which is wrong when that nvcc
    is a wrapper script (as on our build machines), so look for a real toolkit first.
    """
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "bin", "nvcc")) and \
                os.path.isfile(os.path.join(c, "include", "cuda_runtime.h")):
            return c
    return None


CUDA_HOME = find_cuda_home()
if CUDA_HOME and not os.environ.get("CUDA_HOME"):
    os.environ["CUDA_HOME"] = CUDA_HOME  # before torch.utils.cpp_extension reads it
os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda():
    flag = os.environ.get("FASTOPS_BUILD_CUDA")
    possible = CUDA_HOME is not None and torch.version.cuda is not None
    if flag == "1" and not possible:
        sys.exit(f"FASTOPS_BUILD_CUDA=1 but no CUDA build is possible: CUDA_HOME={CUDA_HOME}, "
                 f"torch.version.cuda={torch.version.cuda}")
    return possible and flag != "0"


def cuda_archs():
    """gencode flags and arch names, e.g. ['-gencode=arch=compute_90a,code=sm_90a'], ['sm_90a']."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        archs = [a.strip().replace(".", "").replace("+PTX", "") for a in env.replace(",", ";").split(";")]
    else:
        out = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--list-gpu-arch"],
                             capture_output=True, text=True).stdout.split()
        supported = {a.replace("compute_", "") for a in out}
        archs = ["80", "90a"] + [a for a in ("100a", "120a") if a.rstrip("a") in supported]
    archs = [a for a in archs if a]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs], [f"sm_{a}" for a in archs]


def cuda_library_includes():
    """CUDA headers that the torch CUDA wheels install (site-packages/nvidia/cu13/include, ...)."""
    site = sysconfig.get_paths()["purelib"]
    found = glob.glob(os.path.join(site, "nvidia", "cu[0-9]*", "include"))
    return sorted(p for p in found if os.path.isfile(os.path.join(p, "cuda_runtime_api.h")))


def extension():
    cpu_sources = sorted(glob.glob("csrc/bindings/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    includes = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    # -fno-math-errno: sqrtf (Adam) vectorises only without errno, and no kernel reads errno
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", f'-DFASTOPS_TORCH_VERSION="{torch.__version__}"']
    if not want_cuda():
        return CppExtension("fastops._C", cpu_sources, include_dirs=includes,
                            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    gencode, names = cuda_archs()
    cxx += ["-DFASTOPS_WITH_CUDA", f'-DFASTOPS_CUDA_ARCHS="{",".join(names)}"']
    nvcc = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr"] + gencode
    return CUDAExtension("fastops._C", cpu_sources + sorted(glob.glob("csrc/cuda/*.cu")),
                         include_dirs=includes + cuda_library_includes(),
                         extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])


setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension})
