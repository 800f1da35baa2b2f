"""Build the optional C kernels (histogram binning, per-layer drift sums); without a compiler calibkit
falls back to NumPy."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "calibkit.stats._binning",
            ["calibkit/stats/_binning.c"],
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        ),
        Extension(
            "calibkit.compare._drift",
            ["calibkit/compare/_drift.c"],
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        ),
    ]
)
