"""`afb config backup` / `afb config restore`: round trips, refusals, rotation, the format."""

import hashlib
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afb import backup
from afb.backup import HEADER, BackupError, Opener, Sealer, parse_header
from afb.cli import main
from afb.state import StateStore
from tests.support import ROOT, Setup

PASS = "correct horse battery staple"


@pytest.fixture
def site(tmp_path):
    """A working server + client set-up in tmp/etc, its state in tmp/var/afb, a token
    recorded in the store (as afb token issue records it)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    setup = Setup(etc)
    state = tmp_path / "var" / "afb"
    conf = (etc / "server.conf").read_text().replace("state_dir = state",
                                                     "state_dir = %s" % state)
    (etc / "server.conf").write_text(conf)
    assert main(["token", "issue", "--sub", "alice", "-c", setup.server_conf]) == 0
    setup.etc, setup.state, setup.tmp = str(etc), str(state), tmp_path
    return setup


def run(site, *args):
    return main(["config", *args, "--etc", site.etc, "--state", site.state])


def tree_hash(folder):
    """Names, modes and contents of everything under ``folder``."""
    digest = hashlib.sha256()
    for top, dirs, files in sorted(os.walk(folder)):
        for name in sorted(dirs + files):
            path = os.path.join(top, name)
            info = os.lstat(path)
            digest.update(("%s %o\n" % (os.path.relpath(path, folder), info.st_mode)).encode())
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    digest.update(handle.read())
    return digest.hexdigest()


def tokens(state):
    store = StateStore(os.path.join(state, "afb.sqlite3"), create=False)
    try:
        return [row["sub"] for row in store.list_tokens()]
    finally:
        store.close()


def leftovers(site):
    return [n for n in os.listdir(site.tmp) if n.startswith(".afb-")]


def test_round_trip_plain(site, capsys):
    out = str(site.tmp / "b.tar.gz")
    before = tree_hash(site.etc)
    assert run(site, "backup", out) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[0] == "afb-backup.json" and "etc/server.key" in names
    assert "state/afb.sqlite3" in names and not any(n.endswith("-wal") for n in names)
    # Then the admin breaks things: an edit, a new token, a key gone.
    with open(site.server_conf, "a") as handle:
        handle.write("# edited\n")
    assert main(["token", "issue", "--sub", "bob", "-c", site.server_conf]) == 0
    os.unlink(os.path.join(site.etc, "e2e.key"))
    capsys.readouterr()
    assert run(site, "restore", out) == 0
    said = capsys.readouterr().out
    assert tree_hash(site.etc) == before
    assert tokens(site.state) == ["alice"]
    aside = [n for n in os.listdir(site.tmp) if n.startswith("etc.replaced-")]
    assert len(aside) == 1 and aside[0] in said
    kept = site.tmp / aside[0]
    assert (kept / "server.conf").read_text().endswith("# edited\n")
    assert not (kept / "e2e.key").exists()
    assert sorted(tokens(str(site.tmp / "var" / ("afb." + aside[0].split(".", 1)[1])))) == [
        "alice", "bob"]
    assert not leftovers(site)
    assert main(["config", "check", site.server_conf]) == 0


def test_round_trip_encrypted(site, monkeypatch, capsys):
    out = str(site.tmp / "b.enc")
    monkeypatch.setenv("AFB_BACKUP_PASSPHRASE", PASS)
    assert run(site, "backup", out) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with open(out, "rb") as handle:
        data = handle.read()
    assert data.startswith(b"AFBBAK") and b"server.conf" not in data
    monkeypatch.delenv("AFB_BACKUP_PASSPHRASE")
    assert run(site, "restore", out) == 1         # no terminal, no passphrase
    assert "passphrase is needed" in capsys.readouterr().err
    (site.tmp / "pass").write_text(PASS + "\n")
    os.unlink(os.path.join(site.etc, "server.key"))
    assert run(site, "restore", out, "--passphrase-file", str(site.tmp / "pass")) == 0
    assert os.path.exists(os.path.join(site.etc, "server.key"))
    assert tokens(site.state) == ["alice"]


def test_wrong_passphrase_and_damage_leave_etc_alone(site, monkeypatch, capsys):
    out = site.tmp / "b.enc"
    monkeypatch.setenv("AFB_BACKUP_PASSPHRASE", PASS)
    assert run(site, "backup", str(out)) == 0
    data = out.read_bytes()
    before = tree_hash(site.etc), tree_hash(site.state)
    monkeypatch.setenv("AFB_BACKUP_PASSPHRASE", "not it")
    assert run(site, "restore", str(out)) == 1
    assert "wrong passphrase" in capsys.readouterr().err
    monkeypatch.setenv("AFB_BACKUP_PASSPHRASE", PASS)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    for damaged in (data[:-1], data[:HEADER.size + 20], data[:10], bytes(flipped),
                    data[:HEADER.size] + data[HEADER.size:][:0]):
        out.write_bytes(damaged)
        assert run(site, "restore", str(out)) == 1
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "unchanged" in err, err
    assert (tree_hash(site.etc), tree_hash(site.state)) == before
    assert not leftovers(site)


def test_truncated_or_foreign_plain_archives(site, capsys):
    out = site.tmp / "b.tar.gz"
    assert run(site, "backup", str(out)) == 0
    data = out.read_bytes()
    foreign = io.BytesIO()
    with tarfile.open(fileobj=foreign, mode="w:gz") as tar:
        tar.add(site.server_conf, arcname="etc/server.conf")
    before = tree_hash(site.etc)
    for damaged, says in ((data[: len(data) // 2], "truncated or corrupted"),
                          (b"hello world\n" * 10, "not a readable afb backup"),
                          (foreign.getvalue(), "not an afb backup")):
        out.write_bytes(damaged)
        assert run(site, "restore", str(out)) == 1
        err = capsys.readouterr().err
        assert says in err and len(err.splitlines()) == 1, err
    assert tree_hash(site.etc) == before
    assert not leftovers(site)


def _crafted(path, extra, manifest_names=None):
    """An archive with a good manifest and the members ``extra`` (TarInfo, bytes)."""
    files = {info.name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
             for info, data in extra if info.isreg()}
    names = manifest_names if manifest_names is not None else [
        info.name for info, _ in extra if not info.isreg()]
    body = json.dumps({"format": "afb-backup", "version": 1, "files": files,
                       "dirs": ["etc"] + names}).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("afb-backup.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        tar.addfile(_dir("etc"))
        for info, data in extra:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def _dir(name):
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o700
    return info


def _member(name, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o600
    return info


@pytest.mark.parametrize("member, says", [
    (_member("etc/../escaped"), "'..'"),
    (_member("/etc/passwd"), "absolute"),
    (_member("etc/link", tarfile.SYMTYPE, "/etc/shadow"), "symbolic link"),
    (_member("etc/hard", tarfile.LNKTYPE, "etc/server.conf"), "hard link"),
    (_member("etc/dev", tarfile.CHRTYPE), "character device"),
    (_member("home/x"), "outside etc/ and state/"),
])
def test_hostile_members_refused(site, capsys, member, says):
    out = str(site.tmp / "evil.tar.gz")
    _crafted(out, [(member, b"x")], manifest_names=[member.name])
    before = tree_hash(site.etc)
    assert run(site, "restore", out) == 1
    err = capsys.readouterr().err
    assert says in err and len(err.splitlines()) == 1, err
    assert tree_hash(site.etc) == before
    assert not (site.tmp / "escaped").exists() and not leftovers(site)


def test_member_not_in_manifest_or_bad_checksum(site, capsys):
    out = str(site.tmp / "evil.tar.gz")
    with tarfile.open(out, "w:gz") as tar:      # a member the manifest does not list
        body = json.dumps({"format": "afb-backup", "version": 1, "files": {},
                           "dirs": ["etc"]}).encode()
        info = tarfile.TarInfo("afb-backup.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        extra = _member("etc/extra")
        extra.size = 1
        tar.addfile(extra, io.BytesIO(b"x"))
    assert run(site, "restore", out) == 1
    assert "not in the manifest" in capsys.readouterr().err


def test_config_that_fails_check_is_refused(site, capsys):
    good = str(site.tmp / "good.tar.gz")
    assert run(site, "backup", good) == 0
    conf = open(site.server_conf).read()
    with open(site.server_conf, "w") as handle:       # the backup of a broken set-up
        handle.write(conf.replace("e2e.key", "gone.key"))
    os.unlink(os.path.join(site.etc, "server.key"))
    bad = str(site.tmp / "bad.tar.gz")
    assert run(site, "backup", bad) == 0
    with open(site.server_conf, "w") as handle:
        handle.write(conf)
    assert run(site, "restore", good) == 0            # a good set-up again
    before = tree_hash(site.etc), tree_hash(site.state)
    capsys.readouterr()
    assert run(site, "restore", bad) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "2 problem(s)" in err, err
    assert "%s/server.conf:" % site.etc in err and "gone.key does not exist" in err
    assert "%s/server.key does not exist" % site.etc in err
    assert (tree_hash(site.etc), tree_hash(site.state)) == before
    assert not leftovers(site)


def test_keep_rotation(site, capsys):
    folder = site.tmp / "backups"
    folder.mkdir()
    old = ["afb-backup-h-2020010%dT000000Z.tar.gz" % day for day in range(1, 5)]
    for name in old + ["notes.txt"]:
        (folder / name).write_text("x")
    assert run(site, "backup", "--dir", str(folder), "--keep", "2") == 0
    left = sorted(os.listdir(folder))
    assert len(left) == 3 and "notes.txt" in left and old[-1] in left
    [new] = [n for n in left if n not in old + ["notes.txt"]]
    assert backup_name_ok(new) and stat.S_IMODE(os.stat(folder / new).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) in (0o700, 0o755)
    assert run(site, "backup", "x", "--dir", str(folder)) == 2
    assert run(site, "backup", "--keep", "2") == 2


def backup_name_ok(name):
    from afb.cli_backup import ARCHIVE_NAME

    return bool(ARCHIVE_NAME.match(name))


def test_online_backup_while_a_writer_writes(site):
    """A process records tokens as fast as it can; each archive holds a consistent store."""
    writer = subprocess.Popen([sys.executable, "-c", """if True:
        import sys, time
        from afb.state import StateStore
        store = StateStore(sys.argv[1])
        n = 0
        while True:
            store.record_issued({"jti": "w%d" % n, "sub": "w", "iat": 1, "exp": 2**31})
            n += 1
            if n == 50:
                print("writing", flush=True)
        """, os.path.join(site.state, "afb.sqlite3")], cwd=ROOT, stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert writer.stdout.readline() == b"writing\n"
        counts = []
        for number in range(4):
            out = str(site.tmp / ("b%d.tar.gz" % number))
            assert run(site, "backup", out) == 0
            with tarfile.open(out) as tar:
                data = tar.extractfile("state/afb.sqlite3").read()
            copy = site.tmp / ("copy%d.sqlite3" % number)
            copy.write_bytes(data)
            db = sqlite3.connect(str(copy))
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            counts.append(db.execute("SELECT COUNT(*) FROM tokens WHERE sub = 'w'").fetchone()[0])
            db.close()
    finally:
        writer.kill()
        writer.wait()
    assert counts[0] >= 50 and counts == sorted(counts) and counts[-1] > counts[0]


def test_cli_refusal_is_one_line_without_traceback(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"AFBBAK" + os.urandom(100))
    etc = tmp_path / "etc"
    etc.mkdir()
    result = subprocess.run([sys.executable, "-m", "afb", "config", "restore", str(junk),
                             "--etc", str(etc), "--state", str(tmp_path / "s")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env=dict(os.environ, PYTHONPATH=ROOT, AFB_BACKUP_PASSPHRASE="x"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


# --- the encrypted format, sans-IO -----------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 1024, 2048, 2049, 5000])
def test_stream_round_trip_and_truncation(size):
    plain = os.urandom(size)
    sealed = io.BytesIO()
    backup.encrypt_stream(io.BytesIO(plain), sealed, "pw", log2n=10, chunk=1024)
    data = sealed.getvalue()
    opened = io.BytesIO()
    backup.decrypt_stream(io.BytesIO(data), opened, "pw")
    assert opened.getvalue() == plain
    for cut in {len(data) - 1, HEADER.size + 1040, HEADER.size + 2 * 1040} - {len(data)}:
        if cut < len(data):
            with pytest.raises(BackupError):
                backup.decrypt_stream(io.BytesIO(data[:cut]), io.BytesIO(), "pw")
    with pytest.raises(BackupError):       # a changed header parameter (the AAD)
        changed = bytearray(data)
        changed[HEADER.size - 1] ^= 1
        backup.decrypt_stream(io.BytesIO(bytes(changed)), io.BytesIO(), "pw")


def test_sealer_enforces_chunk_sizes_and_order():
    sealer = Sealer("pw", log2n=10, chunk=16)
    with pytest.raises(ValueError):
        sealer.seal(b"short", last=False)
    first = sealer.seal(b"x" * 16, last=False)
    last = sealer.seal(b"end", last=True)
    with pytest.raises(BackupError):              # chunks swapped
        Opener("pw", parse_header(sealer.header.raw)).open(last, last=False)
    opener = Opener("pw", parse_header(sealer.header.raw))
    assert opener.open(first, last=False) + opener.open(last, last=True) == b"x" * 16 + b"end"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_header_parser_fuzz(data):
    try:
        header = parse_header(data)
    except BackupError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    if header is None:
        assert len(data) < HEADER.size
    else:
        assert data.startswith(b"AFBBAK") and header.chunk >= 1
        assert 128 * header.r * (1 << header.log2n) <= backup.MAX_SCRYPT_MEMORY


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=HEADER.size - 6, max_size=HEADER.size - 6), st.integers(0, 38))
def test_header_parser_fuzz_after_magic(rest, cut):
    data = b"AFBBAK" + rest
    try:
        header = parse_header(data[:cut] if cut < 6 else data)
    except BackupError:
        return
    assert header is None or header.raw == data
