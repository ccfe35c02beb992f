"""Config backups: ``/etc/afb`` and the state store in one archive, optionally encrypted.

An archive is a gzip-compressed tar whose first member is ``afb-backup.json``
(the manifest: format, version, and the SHA-256 and size of every file),
then the folders and regular files of ``/etc/afb`` under ``etc/`` and those
of the state folder under ``state/``.  The state store is copied with
SQLite's online backup API (:func:`snapshot_store`), a consistent copy even
while the server writes; its ``-wal``/``-shm`` files are left out.  Symbolic
links, sockets and other special files are never archived, and a restore
refuses an archive holding one (:func:`member_problem`).

Encrypted archives (``.tar.gz.enc``) are those bytes in chunks sealed with
AES-256-GCM under a key derived by scrypt from a passphrase, behind a 39-byte
header (magic ``AFBBAK``, version, cipher, scrypt parameters and salt, chunk
size, nonce prefix) that is the associated data of every chunk; the nonce
ends with the chunk number and a last-chunk flag (the STREAM construction, as
in age and Tink), so a reordered or truncated file fails authentication like
a changed byte.  ``docs/backup.rst`` has the byte layout.  Readers refuse
scrypt memory above 256 MiB and chunks above 16 MiB before deriving a key,
so a hostile header cannot exhaust memory.

The encryption is sans-IO (:class:`Sealer`, :class:`Opener`,
:func:`parse_header`); the file functions here read and write file objects.
"""

import gzip
import hashlib
import io
import json
import os
import sqlite3
import stat
import struct
import tarfile
import zlib

FORMAT, VERSION = "afb-backup", 1
MANIFEST = "afb-backup.json"
ROOTS = ("etc", "state")
#: Files of the state folder that belong to the live store, not copied as files.
STORE_SIDE_FILES = ("-wal", "-shm", "-journal")
#: A restore stops at this much unpacked data (a gzip bomb ends here).
MAX_TOTAL = 1 << 30

MAGIC = b"AFBBAK"
HEADER = struct.Struct(">6sBBBBBBI16s7s")
CIPHER_AES256GCM = 1
TAG = 16
DEFAULT_LOG2N, DEFAULT_R, DEFAULT_P, DEFAULT_CHUNK = 16, 8, 1, 65536
MAX_SCRYPT_MEMORY = 256 << 20
MAX_CHUNK = 16 << 20


class BackupError(Exception):
    """An archive that cannot be written or is refused; the message is one line."""


# --- encryption (sans-IO) -------------------------------------------------------------

class Header:
    """The parsed header of an encrypted archive; ``raw`` is its bytes (the AAD)."""

    def __init__(self, raw, cipher, log2n, r, p, chunk, salt, prefix):
        self.raw, self.cipher, self.log2n, self.r, self.p = raw, cipher, log2n, r, p
        self.chunk, self.salt, self.prefix = chunk, salt, prefix


def is_encrypted(first_bytes):
    return first_bytes[:len(MAGIC)] == MAGIC


def parse_header(data):
    """The :class:`Header` at the start of ``data``; None while it is shorter than a
    header; BackupError for a foreign file or parameters outside the accepted bounds."""
    if len(data) < HEADER.size:
        if not MAGIC.startswith(bytes(data[:len(MAGIC)])):
            raise BackupError("not an encrypted afb backup (no AFBBAK magic)")
        return None
    raw = bytes(data[:HEADER.size])
    magic, version, cipher, log2n, r, p, reserved, chunk, salt, prefix = HEADER.unpack(raw)
    if magic != MAGIC:
        raise BackupError("not an encrypted afb backup (no AFBBAK magic)")
    if version != VERSION:
        raise BackupError("encrypted backup of format version %d; this afb reads version %d"
                          % (version, VERSION))
    if cipher != CIPHER_AES256GCM:
        raise BackupError("encrypted backup with unknown cipher %d" % cipher)
    if reserved or not (10 <= log2n <= 24 and 1 <= r <= 32 and 1 <= p <= 16) \
            or 128 * r * (1 << log2n) > MAX_SCRYPT_MEMORY:
        raise BackupError("encrypted backup with unacceptable scrypt parameters "
                          "(N=2**%d, r=%d, p=%d)" % (log2n, r, p))
    if not 1 <= chunk <= MAX_CHUNK:
        raise BackupError("encrypted backup with unacceptable chunk size %d" % chunk)
    return Header(raw, cipher, log2n, r, p, chunk, salt, prefix)


def _key(passphrase, header):
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    return Scrypt(salt=header.salt, length=32, n=1 << header.log2n, r=header.r,
                  p=header.p).derive(passphrase)


class _Chunks:
    def __init__(self, passphrase, header):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.header = header
        self.aead = AESGCM(_key(passphrase, header))
        self.count = 0
        self.done = False

    def _nonce(self, last):
        if self.done:
            raise BackupError("data after the last chunk")
        if self.count >= 1 << 32:
            raise BackupError("too many chunks")
        nonce = self.header.prefix + struct.pack(">IB", self.count, 1 if last else 0)
        self.count += 1
        self.done = last
        return nonce


class Sealer(_Chunks):
    """Encrypts chunk by chunk: ``header`` first, then ``seal(chunk, last)`` in order."""

    def __init__(self, passphrase, log2n=DEFAULT_LOG2N, r=DEFAULT_R, p=DEFAULT_P,
                 chunk=DEFAULT_CHUNK):
        raw = HEADER.pack(MAGIC, VERSION, CIPHER_AES256GCM, log2n, r, p, 0, chunk,
                          os.urandom(16), os.urandom(7))
        super().__init__(passphrase, parse_header(raw))

    def seal(self, plaintext, last):
        if len(plaintext) > self.header.chunk or (not last and len(plaintext) != self.header.chunk):
            raise ValueError("every chunk but the last holds exactly %d bytes" % self.header.chunk)
        return self.aead.encrypt(self._nonce(last), plaintext, self.header.raw)


class Opener(_Chunks):
    """Decrypts what a :class:`Sealer` made: ``open(chunk, last)`` in order."""

    def open(self, ciphertext, last):
        from cryptography.exceptions import InvalidTag

        try:
            return self.aead.decrypt(self._nonce(last), bytes(ciphertext), self.header.raw)
        except InvalidTag:
            raise BackupError("wrong passphrase, or the archive is truncated or "
                              "corrupted (authentication failed)") from None


def encrypt_stream(src, dst, passphrase, **params):
    """Encrypt the file object ``src`` into ``dst``."""
    sealer = Sealer(passphrase, **params)
    dst.write(sealer.header.raw)
    size = sealer.header.chunk
    block = src.read(size)
    while True:
        following = src.read(size) if len(block) == size else b""
        dst.write(sealer.seal(block, last=not following))
        if not following:
            return
        block = following


def decrypt_stream(src, dst, passphrase):
    """Decrypt the file object ``src`` (header included) into ``dst``; BackupError if
    it is foreign, truncated, changed or the passphrase is wrong."""
    header = parse_header(src.read(HEADER.size))
    if header is None:
        raise BackupError("truncated archive: shorter than its header")
    opener = Opener(passphrase, header)
    size = header.chunk + TAG
    block = src.read(size)
    while True:
        following = src.read(size) if len(block) == size else b""
        dst.write(opener.open(block, last=not following))
        if not following:
            return
        block = following


# --- the archive: writing ------------------------------------------------------------

def snapshot_store(source, target):
    """Copy the SQLite database ``source`` to ``target`` with the online backup API."""
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            if dst.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise BackupError("the copy of the state store %s fails its check" % source)
        finally:
            dst.close()
    finally:
        src.close()


def walk(root, skip=(), store=None):
    """``([(relative path, full path, is_dir)], [skipped notes])`` of a folder: its
    folders and regular files; ``skip``: folders left out; ``store``: the SQLite file
    whose side files (``-wal``, ``-shm``) are left out."""
    found, notes = [(".", root, True)], []
    for top, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            full = os.path.join(top, name)
            rel = os.path.relpath(full, root)
            info = os.lstat(full)
            if stat.S_ISDIR(info.st_mode):
                if full in skip:
                    dirs.remove(name)
                else:
                    found.append((rel, full, True))
            elif stat.S_ISREG(info.st_mode):
                if store is None or not full.startswith(store) \
                        or full[len(store):] not in STORE_SIDE_FILES:
                    found.append((rel, full, False))
            elif stat.S_ISLNK(info.st_mode):
                notes.append("skipped symbolic link %s -> %s" % (full, os.readlink(full)))
                if name in dirs:
                    dirs.remove(name)
            elif not stat.S_ISSOCK(info.st_mode):
                notes.append("skipped special file %s" % full)
        dirs.sort()
    return found, notes


def _tarinfo(arcname, full, is_dir, size=0):
    info = os.stat(full)
    tinfo = tarfile.TarInfo(arcname)
    tinfo.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    tinfo.mode, tinfo.mtime, tinfo.size = stat.S_IMODE(info.st_mode), int(info.st_mtime), size
    tinfo.uid, tinfo.gid = info.st_uid, info.st_gid
    tinfo.uname, tinfo.gname = _name(info.st_uid, "pwd"), _name(info.st_gid, "grp")
    return tinfo


def _name(ident, module):
    import grp
    import pwd

    try:
        return (pwd.getpwuid(ident).pw_name if module == "pwd" else grp.getgrgid(ident).gr_name)
    except KeyError:
        return ""


def write_archive(out, entries, about):
    """Write the gzip'd tar to the file object ``out``.  ``entries``: ``[(root, rel,
    full, is_dir[, source])]`` (root "etc" or "state"; ``source``: the file to read
    instead of ``full``, whose owner and mode are archived); ``about``: more manifest
    fields.  -> the manifest."""
    dirs, files, blobs = [], {}, {}
    for root, rel, full, is_dir, *source in entries:
        arcname = root if rel == "." else "%s/%s" % (root, rel.replace(os.sep, "/"))
        if is_dir:
            dirs.append((arcname, full))
            continue
        with open(source[0] if source else full, "rb") as handle:   # read once: hashed and
            data = handle.read()                                    # archived as read
        blobs[arcname] = (full, data)
        files[arcname] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = dict(about, format=FORMAT, version=VERSION, dirs=[name for name, _ in dirs],
                    files=files)
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode = len(body), 0o600
        tar.addfile(info, io.BytesIO(body))
        for arcname, full in dirs:
            tar.addfile(_tarinfo(arcname, full, True))
        for arcname, (full, data) in blobs.items():
            tar.addfile(_tarinfo(arcname, full, False, len(data)), io.BytesIO(data))
    return manifest


# --- the archive: reading and checking ------------------------------------------------

_KINDS = ((tarfile.SYMTYPE, "a symbolic link"), (tarfile.LNKTYPE, "a hard link"),
          (tarfile.CHRTYPE, "a character device"), (tarfile.BLKTYPE, "a block device"),
          (tarfile.FIFOTYPE, "a FIFO"))


def member_problem(info):
    """Why the tar member ``info`` may not be restored, or None."""
    name = info.name
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\0" in name:
        return "member %r has an absolute or odd path" % name
    if any(part in ("", ".", "..") for part in parts):
        return "member %r has an empty, '.' or '..' path component" % name
    if parts[0] not in ROOTS:
        return "member %r is outside etc/ and state/" % name
    for kind, what in _KINDS:
        if info.type == kind:
            return "member %r is %s" % (name, what)
    if not (info.isreg() or info.isdir()):
        return "member %r is neither a file nor a folder" % name
    return None


def read_manifest(tar):
    """The manifest, the archive's first member; BackupError for a foreign tar."""
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isreg() or first.size > 1 << 24:
        raise BackupError("not an afb backup (its first member is not %s)" % MANIFEST)
    try:
        manifest = json.loads(tar.extractfile(first).read().decode("utf-8"))
    except ValueError:
        raise BackupError("not an afb backup (%s is not JSON)" % MANIFEST) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError("not an afb backup (its manifest has no format %r)" % FORMAT)
    if manifest.get("version") != VERSION:
        raise BackupError("afb backup of format version %r; this afb reads version %d"
                          % (manifest.get("version"), VERSION))
    files, dirs = manifest.get("files"), manifest.get("dirs")
    if not isinstance(files, dict) or not isinstance(dirs, list) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values()):
        raise BackupError("afb backup with a malformed manifest")
    return manifest


def unpack(fileobj, targets):
    """Check and unpack the gzip'd tar ``fileobj``; ``targets``: ``{"etc": folder,
    "state": folder}``, created here (they must not exist).  -> the manifest."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r:gz") as tar:
            manifest = read_manifest(tar)
            return _unpack_members(tar, manifest, targets)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise BackupError("not a readable afb backup (truncated or corrupted: %s)"
                          % (exc or type(exc).__name__)) from None


def _unpack_members(tar, manifest, targets):
    expected = set(manifest["files"]) | set(manifest["dirs"])
    seen, total, modes = set(), 0, []
    for number, info in enumerate(tar):
        if number == 0:                         # the manifest, read already
            continue
        problem = member_problem(info)
        if problem is None and info.name not in expected:
            problem = "member %r is not in the manifest" % info.name
        if problem is None and info.name in seen:
            problem = "member %r appears twice" % info.name
        if problem:
            raise BackupError("refused: " + problem)
        seen.add(info.name)
        root, _, rel = info.name.partition("/")
        path = os.path.join(targets[root], *rel.split("/")) if rel else targets[root]
        if info.isdir():
            os.makedirs(path, mode=0o700, exist_ok=True)
        else:
            total += info.size
            if total > MAX_TOTAL:
                raise BackupError("refused: more than %d bytes unpacked" % MAX_TOTAL)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            _write_member(tar.extractfile(info), path, manifest["files"][info.name], info.name)
        modes.append((path, info))
    missing = expected - seen
    if missing:
        raise BackupError("truncated archive: %s missing" % ", ".join(sorted(missing)[:3]))
    for path, info in reversed(modes):       # folders last: a 0500 folder is filled first
        _owner(path, info)
        os.chmod(path, info.mode & 0o777)
    return manifest


def _write_member(src, path, expect, name):
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        for block in iter(lambda: src.read(1 << 16), b""):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != expect["sha256"]:
        raise BackupError("refused: %s does not match its checksum in the manifest" % name)


def _owner(path, info):
    """As root: the archived owner by name (uids differ between machines), else by id."""
    if os.geteuid() != 0:
        return
    import grp
    import pwd

    try:
        uid = pwd.getpwnam(info.uname).pw_uid if info.uname else info.uid
    except KeyError:
        uid = info.uid
    try:
        gid = grp.getgrnam(info.gname).gr_gid if info.gname else info.gid
    except KeyError:
        gid = info.gid
    os.lchown(path, uid, gid)
