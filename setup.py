"""Builds odecore and its torch extension odecore._C against the installed torch.

Environment switches:
  FORCE_CUDA=1           build the CUDA kernels even if torch cannot see a GPU
  ODECORE_NO_EXTENSION=1 skip the extension; odecore then runs on its reference path
  DEBUG=1                build without optimisation and with debug symbols
  TORCH_CUDA_ARCH_LIST   CUDA architectures (read by torch.utils.cpp_extension)
  MAX_JOBS               parallel compile jobs (read by torch.utils.cpp_extension)
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _extensions():
    if _flag("ODECORE_NO_EXTENSION"):
        print("odecore: ODECORE_NO_EXTENSION is set; skipping odecore._C", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        sys.exit(
            "odecore: building odecore._C needs torch installed first, and pip's build isolation "
            "turned off so the build sees it:\n"
            "    pip install torch && pip install --no-build-isolation .\n"
            "(or set ODECORE_NO_EXTENSION=1 to install the pure-PyTorch reference path only)"
        )

    debug = _flag("DEBUG")
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(
        glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp"))
    )
    want_cuda = _flag("FORCE_CUDA") or (
        torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and torch.cuda.is_available()
    )
    with_cuda = want_cuda and bool(cuda_sources)
    if want_cuda and not cuda_sources:
        print("odecore: no CUDA sources in csrc/cuda yet; building the CPU kernels only", file=sys.stderr)

    define_macros = [("ODECORE_TORCH_VERSION", '"%s"' % torch.__version__.split("+")[0])]
    opt = ["-O0", "-g"] if debug else ["-O3"]
    extra_compile_args = {"cxx": list(opt)}  # the C++ standard is the one torch.utils.cpp_extension picks
    extension = cpp_extension.CppExtension
    if with_cuda:
        extension = cpp_extension.CUDAExtension
        sources += cuda_sources
        define_macros += [("ODECORE_WITH_CUDA", None), ("ODECORE_CUDA_VERSION", '"%s"' % torch.version.cuda)]
        extra_compile_args["nvcc"] = opt + ["--expt-relaxed-constexpr"]
        if debug:
            extra_compile_args["nvcc"].append("-lineinfo")
    ext = extension(
        name="odecore._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        py_limited_api=False,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["odecore", "odecore.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
