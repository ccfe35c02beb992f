"""Files afb trusts: refuse those that other users could change, or read when secret.

A JWT key ring, a public key that verifies tokens, the client's users file:
whoever can write one of them can let themselves in, and a running server
re-reads its key ring by itself, so such a write becomes a login within
seconds.  In the spirit of OpenSSH's StrictModes, :func:`check_trusted_file`
accepts a file only if

* it is a regular file owned by root or by the user afb runs as;
* group and others cannot write it (a secret: cannot read it either);
* its folder is owned by root or that user, and group and others cannot
  write that folder (whoever may write the folder can replace the file);
* no folder above it is writable by others, unless it has the sticky bit
  (as ``/tmp``), which keeps others from renaming what they do not own.
  Group-writable folders further up are let through: Debian gives each user
  a private group (umask 002), and refusing those would refuse most homes.

:func:`check_secret_file` is the older check of key and token files: mode
only.  Every refusal is a :class:`~afb.errors.ConfigError` of one line that
names the file, what is wrong and the command that fixes it.  Pure checks on
``os.stat``; nothing is opened.

:func:`write_secret` and :func:`write_atomic` are the other side: how afb
writes keys and tokens (a temporary file in the same folder, created 0600,
then renamed over), so no other user can read one and no reader sees half
of one.  They live here, not beside the key generation in :mod:`afb.keys`,
so that a client storing a refreshed token imports no X.509 code.
"""

import os
import pwd
import stat
import tempfile

from afb.errors import ConfigError


def _refuse(msg):
    return ConfigError(msg, errors=[msg])


def _stat(path, what):
    try:
        return os.stat(path)
    except OSError as exc:
        raise _refuse("%s %s: cannot read it: %s" % (what, path, exc.strerror or exc)) from None


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "uid %d" % uid


def _owned_well(info):
    """Owned by root or by the user this process runs as."""
    return info.st_uid in (0, os.geteuid())


def _owner_problem(path, info):
    """``is owned by bob, not by root; fix: chown root PATH`` (or root or afb's own user)."""
    me = os.geteuid()
    allowed = "root" if me == 0 else "root or %s (who runs afb)" % _user(me)
    return "is owned by %s, not by %s; fix: chown %s %s" % (
        _user(info.st_uid), allowed, "root" if me == 0 else _user(me), path)


#: (mode bits refused, what group or others could do, the fix) of a secret / a trusted file.
_SECRET = (0o077, "access", "chmod 600")
_TRUSTED = (0o022, "write", "chmod go-w")


def _check_mode(path, what, rule):
    """A regular file none of whose ``rule`` bits are set -> its stat; else ConfigError."""
    bits, verb, fix = rule
    info = _stat(path, what)
    if not stat.S_ISREG(info.st_mode):
        raise _refuse("%s %s is not a regular file" % (what, path))
    mode = stat.S_IMODE(info.st_mode)
    if mode & bits:
        raise _refuse("%s %s has mode %04o: group or others can %s it; fix: %s %s"
                      % (what, path, mode, verb, fix, path))
    return info


def check_secret_file(path, what="secret file"):
    """Refuse (ConfigError) a secret file that group or others may read or write.

    Also refuses a missing or non-regular file.  The message names the file,
    its mode and the fix, e.g. ``... has mode 0644 ...; fix: chmod 600 FILE``.
    """
    return _check_mode(path, what, _SECRET)


def check_trusted_file(path, what, secret=False):
    """Refuse (ConfigError) a file others could change (see the module doc).

    ``secret``: group and others may not read it either (as
    :func:`check_secret_file`).  ``what`` names it in the message, e.g.
    ``"JWT key ring"``.
    """
    info = _check_mode(path, what, _SECRET if secret else _TRUSTED)
    if not _owned_well(info):
        raise _refuse("%s %s %s" % (what, path, _owner_problem(path, info)))
    _check_folders(path, what)


def _check_folders(path, what):
    """The folder holding ``path`` (strict) and every folder above it (not world-writable).

    Both the folders of the path as named and of the file a symbolic link
    leads to are checked.
    """
    checked = {}        # folder -> checked as the file's own folder (the stricter check)
    for start in (os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path))):
        directory, own = start, True
        while directory not in checked or (own and not checked[directory]):
            checked[directory] = own
            _check_folder(directory, _stat(directory, "folder of %s %s" % (what, path)), what,
                          path, own)
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory, own = parent, False


def _check_folder(directory, info, what, path, own):
    """``own``: the folder holding the file itself (owner, no group/other write);
    else a folder further up (no world write without the sticky bit)."""
    mode = stat.S_IMODE(info.st_mode)
    subject = "%s %s" % (what, path)
    if own:
        if not _owned_well(info):
            raise _refuse("%s: its folder %s %s" % (subject, directory,
                                                    _owner_problem(directory, info)))
        if mode & 0o022:
            raise _refuse("%s: its folder %s has mode %04o: group or others can replace files "
                          "in it; fix: chmod go-w %s" % (subject, directory, mode, directory))
    elif mode & 0o002 and not mode & stat.S_ISVTX:
        raise _refuse("%s: folder %s has mode %04o: anyone can replace what is inside it; "
                      "fix: chmod o-w %s" % (subject, directory, mode, directory))


# --- writing: what afb writes, others cannot read or half-read ---------------------

def write_atomic(path, data, mode):
    """Write ``data`` to ``path`` via a temporary file + rename, with ``mode``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".afb-", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_secret(path, data):
    """Atomically write a secret (bytes or str) readable by its owner only (0600)."""
    write_atomic(path, data, 0o600)
