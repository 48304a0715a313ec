"""Only declares the C extensions; all other configuration is in pyproject.toml."""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("engine._native", ["engine/_native.c"], depends=["engine/_tsc.h"],
                  extra_compile_args=["-O2", "-Wall"]),
        Extension("engine._book", ["engine/_book.c"], depends=["engine/_tsc.h"], extra_compile_args=["-O2", "-Wall"]),
        Extension("lab.analysis._kernels", ["lab/analysis/_kernels.c"], extra_compile_args=["-O2", "-Wall"]),
        Extension("lab.capture._walk", ["lab/capture/_walk.c"], extra_compile_args=["-O2", "-Wall"]),
    ],
)
