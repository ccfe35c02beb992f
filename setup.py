from setuptools import Extension, find_packages, setup

setup(
    name="afb",
    version="0.1.0",
    description="Anti-Filter Bridge: SOCKS5/HTTP CONNECT over a multiplexed TLS WebSocket tunnel",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["afb", "afb.*", "tui", "tui.*"]),
    package_data={"afb": ["configspec/*.spec", "decoy/*"], "tui": ["*.tcss"]},
    # Floors are what Debian 13 (trixie) ships or older: the .deb runs on those.
    install_requires=[
        "gevent>=23.9",
        "wsaccel>=0.6.3",       # 0.6.3: what Debian 13 ships
        "PySocks>=1.7.1",
        "PyJWT>=2.8",
        "cryptography>=41",
        "configobj>=5.0.8",
        "psutil>=5.9",
        "prometheus-client>=0.16",
    ],
    # The dashboard (tui/, `afb tui`) is its own Debian package, afb-tui: a router
    # that runs only the client does not install Textual.
    # Several servers sharing a Redis store ([server] state = redis://...): only
    # those servers need redis-py (Debian: python3-redis, 4.3 in Debian 12).
    extras_require={"tui": ["textual>=2.1"],
                    "redis": ["redis>=4.3"],
                    "test": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.2",
                             "ruff>=0.6", "textual>=2.1", "pytest-textual-snapshot>=1.0",
                             "redis>=4.3"],
                    # bench/fuzz only (coverage-guided fuzzing of the parsers): a
                    # libFuzzer build per CPython, not needed to run or test afb.
                    "fuzz": ["atheris>=2.3"]},
    # Optional: WebSocket masking in C, 64 bits at a time; without a compiler
    # afb falls back to wsaccel.
    ext_modules=[Extension("afb._xormask", ["afb/_xormask.c"], optional=True,
                           extra_compile_args=["-O3"])],
    entry_points={"console_scripts": ["afb = afb.entry:main"]},
)
