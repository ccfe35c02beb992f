"""``afb config backup`` and ``afb config restore``: the commands around :mod:`afb.backup`.

A restore unpacks the archive into a staging folder beside ``/etc/afb``
(same file system, so the swap is two renames), checks every
``server*.conf`` and ``client*.conf`` in it with the checks of ``afb config
check`` (the files they name mapped to the staged copies), and only then
moves ``/etc/afb`` and the state folder aside (``NAME.replaced-TIMESTAMP``)
and the staged ones into place.  Any refusal leaves both untouched.
Loaded by :mod:`afb.cli` when a config command runs; never imports gevent.
"""

import errno
import getpass
import os
import re
import shutil
import socket
import sys
import tempfile
import time

import afb
from afb.backup import ROOTS, BackupError
from afb.cli_common import DEFAULT_KEY_DIR, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, _err
from afb.errors import ConfigError

DEFAULT_STATE_DIR = "/var/lib/afb"
PASSPHRASE_ENV = "AFB_BACKUP_PASSPHRASE"
#: The names ``afb config backup --dir`` gives, and the only files ``--keep`` removes.
ARCHIVE_NAME = re.compile(r"^afb-backup-[A-Za-z0-9._-]*-\d{8}T\d{6}Z\.tar\.gz(\.enc)?$")
CONFIG_NAME = re.compile(r"^(server|client)[A-Za-z0-9@._-]*\.conf$")


def add_parsers(csub):
    """``backup`` and ``restore`` under ``afb config``."""
    where = "(default %s)"
    c = csub.add_parser("backup", help="write /etc/afb and the state store to a compressed "
                                       "archive (mode 0600), optionally encrypted")
    c.add_argument("file", nargs="?", help="the archive (default: afb-backup-HOST-TIME.tar.gz"
                                           "[.enc] in --dir)")
    c.add_argument("--dir", help="folder of the archive when FILE is not given (default .)")
    c.add_argument("--keep", type=int, metavar="N",
                   help="with --dir: then remove all but the newest N afb-backup-* archives")
    c.add_argument("--encrypt", action="store_true",
                   help="encrypt; without --passphrase-file or $%s, ask on the terminal"
                        % PASSPHRASE_ENV)
    c.set_defaults(func=cmd_backup)
    r = csub.add_parser("restore", help="check an archive and every config in it, then put it "
                                        "in place of /etc/afb and the state folder (these are "
                                        "kept aside)")
    r.add_argument("file", help="the archive")
    r.set_defaults(func=cmd_restore)
    for p in (c, r):
        p.add_argument("--etc", default=DEFAULT_KEY_DIR, help="config folder " + where
                       % DEFAULT_KEY_DIR)
        p.add_argument("--state", help="state folder (default: [server] state_dir of "
                                       "server.conf, else %s)" % DEFAULT_STATE_DIR)
        p.add_argument("--passphrase-file", metavar="FILE",
                       help="read the passphrase from FILE (its first line), never from "
                            "the command line; or set $%s" % PASSPHRASE_ENV)


def _passphrase(args, confirm):
    """The passphrase from --passphrase-file, the environment or the terminal; None if none
    is given; BackupError when one is needed but cannot be had."""
    if args.passphrase_file:
        try:
            with open(args.passphrase_file, encoding="utf-8") as handle:
                text = handle.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise BackupError("cannot read the passphrase file %s: %s"
                              % (args.passphrase_file, getattr(exc, "strerror", exc))) from None
        if not text:
            raise BackupError("the passphrase file %s is empty" % args.passphrase_file)
        return text
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if confirm is None:             # no encryption asked for
        return None
    if not sys.stdin.isatty():
        raise BackupError("a passphrase is needed: --passphrase-file FILE or $%s"
                          % PASSPHRASE_ENV)
    text = getpass.getpass("passphrase: ")
    if confirm and text != getpass.getpass("the same again: "):
        raise BackupError("the passphrases differ")
    if not text:
        raise BackupError("an empty passphrase")
    return text


def _state_dir(args, etc, conf=None):
    """--state, else the ``state_dir`` of server.conf (that in ``etc``, or ``conf``
    read as if it were there), else the package's folder."""
    if args.state:
        return os.path.abspath(args.state)
    from afb.config import load_config

    path = conf or os.path.join(etc, "server.conf")
    if os.path.isfile(path):
        try:
            state = load_config(path, "server")["server"]["state_dir"]
            return _under(state, os.path.dirname(path), etc)
        except ConfigError:
            pass
    return DEFAULT_STATE_DIR


def _under(path, old, new):
    """``path`` with the folder ``old`` at its start replaced by ``new``."""
    if path == old or path.startswith(old + os.sep):
        return new + path[len(old):]
    return path


# --- backup ---------------------------------------------------------------------------------

def cmd_backup(args):
    from afb import backup

    if args.file and (args.dir or args.keep is not None):
        _err("afb config backup: give FILE, or --dir (with --keep), not both")
        return EXIT_CONFIG
    if args.keep is not None and (not args.dir or args.keep < 1):
        _err("afb config backup: --keep N needs --dir and N >= 1")
        return EXIT_CONFIG
    etc = os.path.abspath(args.etc)
    try:
        passphrase = _passphrase(args, confirm=True if args.encrypt else None)
        if not os.path.isdir(etc):
            raise BackupError("%s is not a folder" % etc)
        state = _state_dir(args, etc)
        out = args.file or os.path.join(args.dir or ".", "afb-backup-%s-%s.tar.gz%s" % (
            re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host",
            time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), ".enc" if passphrase else ""))
        if args.dir:
            os.makedirs(args.dir, mode=0o700, exist_ok=True)
        notes, manifest = _write(backup, etc, state, os.path.abspath(out), passphrase)
    except (BackupError, OSError, backup.sqlite3.Error) as exc:
        _err("afb config backup: %s" % _one_line(exc))
        return EXIT_FAILURE
    _err(*notes)
    print("backup written to %s (%d files of %s%s, %s)" % (
        out, len(manifest["files"]), etc, " and %s" % state if manifest["state_included"] else "",
        "encrypted" if passphrase else "not encrypted: keep it as secret as /etc/afb"))
    if args.keep:
        for name in _rotate(args.dir, args.keep):
            print("removed old backup %s" % name)
    return EXIT_OK


def _write(backup, etc, state, out, passphrase):
    """Archive ``etc`` and ``state`` into ``out`` (a 0600 temporary file renamed over)."""
    directory = os.path.dirname(out)
    with tempfile.TemporaryDirectory(prefix=".afb-backup-", dir=directory) as work:
        store = os.path.join(state, "afb.sqlite3")
        entries, notes = [], []
        found, skipped = backup.walk(etc, skip=(state,))
        entries += [("etc",) + row for row in found]
        notes += skipped
        has_state = os.path.isdir(state)
        if has_state:
            found, skipped = backup.walk(state, store=store)
            notes += skipped
            for rel, full, is_dir in found:
                entries.append(("state", rel, full, is_dir))
                if full == store:              # the live database: its online copy instead
                    entries[-1] += (os.path.join(work, "afb.sqlite3"),)
                    backup.snapshot_store(store, entries[-1][-1])
        about = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "host": socket.gethostname(), "afb": afb.__version__, "etc_dir": etc,
                 "state_dir": state, "state_included": has_state}
        fd, tmp = tempfile.mkstemp(prefix=".afb-backup-", dir=directory)   # 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                if passphrase:
                    with tempfile.TemporaryFile(dir=work) as plain:
                        manifest = backup.write_archive(plain, entries, about)
                        plain.seek(0)
                        backup.encrypt_stream(plain, handle, passphrase)
                else:
                    manifest = backup.write_archive(handle, entries, about)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, out)
        except BaseException:
            os.unlink(tmp)
            raise
    return notes, manifest


def _rotate(directory, keep):
    """Remove all but the newest ``keep`` archives named as --dir names them."""
    names = sorted(name for name in os.listdir(directory) if ARCHIVE_NAME.match(name))
    names.sort(key=lambda name: name.split("-")[-1].split(".")[0])    # by the UTC time
    for name in names[:-keep]:
        os.unlink(os.path.join(directory, name))
        yield name


def _one_line(exc):
    text = getattr(exc, "strerror", None) and getattr(exc, "filename", None) \
        and "%s: %s" % (exc.filename, exc.strerror) or str(exc)
    return " ".join(text.split())


# --- restore ---------------------------------------------------------------------------------

def cmd_restore(args):
    etc = os.path.abspath(args.etc).rstrip(os.sep)
    parent = os.path.dirname(etc)
    staging = None
    try:
        if not os.path.isdir(parent):
            raise BackupError("%s does not exist" % parent)
        staging = tempfile.mkdtemp(prefix=".afb-restore-", dir=parent)
        manifest, problems, state = _stage(args, etc, staging)
        if problems:
            _err("afb config restore: refused, %s unchanged: %d problem(s) in the archive's "
                 "configs (afb config check's lines, paths as restored):"
                 % (etc, len(problems)), *problems)
            return EXIT_FAILURE
        aside = _swap(etc, state, staging)
    except BackupError as exc:
        _err("afb config restore: %s; %s unchanged" % (exc, etc))
        return EXIT_FAILURE
    except OSError as exc:
        _err("afb config restore: %s" % _one_line(exc))
        return EXIT_FAILURE
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    print("restored %s%s from %s (made %s on %s)" % (
        etc, " and %s" % state if manifest.get("state_included") else "", args.file,
        manifest.get("created", "?"), manifest.get("host", "?")))
    for path in aside:
        print("the replaced files are in %s" % path)
    print("restart the services that run: systemctl try-restart afb-server afb-client")
    return EXIT_OK


def _stage(args, etc, staging):
    """Unpack into ``staging`` and check -> (manifest, problem lines, state folder)."""
    from afb import backup

    targets = {root: os.path.join(staging, root) for root in ROOTS}
    try:
        source = open(args.file, "rb")
    except OSError as exc:
        raise BackupError("cannot read %s: %s" % (args.file, exc.strerror)) from None
    with source, tempfile.TemporaryFile(dir=staging) as plain:
        if backup.is_encrypted(source.read(len(backup.MAGIC))):
            passphrase = _passphrase(args, confirm=False)
            source.seek(0)
            backup.decrypt_stream(source, plain, passphrase)
            plain.seek(0)
            manifest = backup.unpack(plain, targets)
        else:
            source.seek(0)
            manifest = backup.unpack(source, targets)
    if not os.path.isdir(targets["etc"]):
        raise BackupError("the archive holds no etc/ folder")
    state = _state_dir(args, etc, os.path.join(targets["etc"], "server.conf"))
    staged = {etc: targets["etc"], state: targets["state"]}
    problems = []
    for name in sorted(os.listdir(targets["etc"])):
        path = os.path.join(targets["etc"], name)
        if CONFIG_NAME.match(name) and os.path.isfile(path):
            problems += _check(path, name.startswith("server") and "server" or "client",
                               _mapper(targets["etc"], etc, staged))
    for real, copy in staged.items():
        problems = [line.replace(copy, real) for line in problems]
    return manifest, problems, state


def _check(path, role, remap):
    from afb.config import check_config

    return check_config(path, role, remap=remap)


def _mapper(staged_etc, etc, staged):
    """``remap`` for :func:`afb.config.load_for_start`: a staged config's paths, as
    they would be once restored, pointed at the staged copies."""
    from afb.config import PATH_KEYS

    order = sorted(staged, key=len, reverse=True)       # state inside etc: state first

    def remap(cfg, role):
        for section, key in PATH_KEYS[role]:
            value = cfg[section][key]
            if value and value != "off":
                real = _under(value, staged_etc, etc)
                for target in order:
                    if _under(real, target, staged[target]) != real:
                        real = _under(real, target, staged[target])
                        break
                cfg[section][key] = real
    return remap


def _swap(etc, state, staging):
    """Move ``etc`` (and ``state``, if archived) aside and the staged copies in."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = []
    for root, target in (("etc", etc), ("state", state)):
        staged = os.path.join(staging, root)
        if not os.path.isdir(staged):
            continue
        if os.path.lexists(target):
            os.rename(target, "%s.replaced-%s" % (target, stamp))
            aside.append("%s.replaced-%s" % (target, stamp))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            try:
                os.rename(staged, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:          # another file system: copy
                    raise
                shutil.copytree(staged, target, copy_function=shutil.copy2)
                _copy_owners(staged, target)
        except OSError:
            if aside and aside[-1].startswith(target + ".replaced-"):
                shutil.rmtree(target, ignore_errors=True)
                os.rename(aside.pop(), target)        # put the replaced folder back
            raise
    return aside


def _copy_owners(src, dst):
    if os.geteuid() != 0:
        return
    for top, dirs, files in os.walk(src):
        for name in [""] + dirs + files:
            info = os.lstat(os.path.join(top, name))
            os.lchown(os.path.join(dst, os.path.relpath(os.path.join(top, name), src)),
                      info.st_uid, info.st_gid)
