"""Console-script entry point: ``afb ...``.

gevent must monkey-patch the standard library before anything else imports
``socket``, ``ssl`` or ``threading``.  So this module imports nothing at module
level but ``sys``; the daemons' subcommands patch first, then load the CLI.
Commands that need no network (``keygen``, ``token``, ``config``, ``tui``)
never load gevent at all, so the Textual dashboard stays gevent-free.
"""

import sys

#: Subcommands that run gevent servers and therefore need monkey-patching.
GEVENT_COMMANDS = frozenset({"server", "client", "demo"})


def patch_gevent():
    """Monkey-patch the standard library for gevent (idempotent).

    Everything but ``signal`` (the daemons install their handlers with
    ``gevent.signal_handler``) and ``queue``, which they never use.
    (``subprocess`` stays patched although they spawn nothing: with ``os``
    patched and ``subprocess`` not, a Popen after the hub ran hung, measured.)
    And gevent, at every patch, asks :mod:`importlib.metadata` for plugins
    that subscribe to its patch events: that import alone (email, zipfile,
    csv...) is 3.7 MiB of a router's memory, for plugins afb never
    installs.  So gevent is shown, while it patches, a stand-in that lists
    none; the real module is importable as before afterwards.
    """
    from gevent import monkey

    if monkey.is_module_patched("socket"):
        return
    with _no_gevent_plugins():
        monkey.patch_all(signal=False, queue=False)


class _no_gevent_plugins:
    """While patching: ``importlib.metadata`` is a stand-in without entry points."""

    def __enter__(self):
        import types

        self.real = sys.modules.get("importlib.metadata")
        if self.real is None:
            stand_in = types.ModuleType("importlib.metadata")
            stand_in.entry_points = lambda **_selection: ()
            sys.modules["importlib.metadata"] = self.stand_in = stand_in
        return self

    def __exit__(self, *_exc):
        if self.real is None:
            sys.modules.pop("importlib.metadata", None)
            import importlib

            if getattr(importlib, "metadata", None) is self.stand_in:
                del importlib.metadata


def raise_open_files_limit():
    """Daemons hold two sockets per stream: lift the soft descriptor limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in GEVENT_COMMANDS:
        patch_gevent()
        raise_open_files_limit()
    from afb import cli  # noqa: E402  (after patching, on purpose)

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
