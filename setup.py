"""Build the optional C binning kernel; without a compiler calibkit falls back to NumPy."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "calibkit.stats._binning",
            ["calibkit/stats/_binning.c"],
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
