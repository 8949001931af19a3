"""The one compiled module of lockgate (the rest is in pyproject.toml): the ring's writer, built
against numpy's C API (reading an array's type and data is a macro there, a buffer request
through the buffer protocol)."""

import numpy
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lockgate.monitor._ringwrite",
            ["src/lockgate/monitor/_ringwrite.c"],
            include_dirs=[numpy.get_include()],
            extra_compile_args=["-O2", "-std=c11"],
        )
    ]
)
