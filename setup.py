"""Build script: the C++ CPU kernels in csrc/ as fresco_kernels._C (skip with FRESCO_BUILD_CPP=0)."""
import glob
import json
import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("FRESCO_BUILD_CPP", "1") != "0":
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    torch_version = torch.__version__.split("+")[0]
    ext_modules = [
        CppExtension(
            "fresco_kernels._C",
            sorted(glob.glob("csrc/*.cpp")),
            extra_compile_args=["-O3", "-fopenmp", "-std=c++17"],
            extra_link_args=["-fopenmp"],
            define_macros=[("FRESCO_TORCH_VERSION", f'"{torch_version}"')],
            py_limited_api=False,
        )
    ]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}
    # Read before loading the library: a _C built against another torch is not loaded (ABI).
    with open(os.path.join("fresco_kernels", "_C_build.json"), "w") as f:
        json.dump({"torch": torch_version}, f)

setup(ext_modules=ext_modules, cmdclass=cmdclass, package_data={"fresco_kernels": ["_C_build.json"], "fresco": ["assets/*"]})
