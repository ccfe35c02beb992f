"""afb(1) and afb.conf(5) (afb/manpages.py): complete, deterministic, valid roff.

The pages are generated from the parser and the configspecs; these tests walk
those sources with their own means (argparse's subparsers, configobj's reading
of the specs) and look for every command, option and key in the pages.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

import pytest
from configobj import ConfigObj

from afb import manpages
from afb.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_DIR = os.path.join(ROOT, "afb", "configspec")
EPOCH = "1767225600"    # 2026-01-01


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("man")
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = EPOCH
    try:
        paths = manpages.write_pages(str(out))
    finally:
        if old is None:
            del os.environ["SOURCE_DATE_EPOCH"]
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old
    texts = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            texts[os.path.basename(path)] = f.read()
    return paths, texts


def spec_keys(role):
    """{(section, key)} of a configspec, as configobj reads it."""
    spec = ConfigObj(os.path.join(SPEC_DIR, role + ".spec"), list_values=False, _inspec=True)
    return {(section, key) for section in spec.sections for key in spec[section].scalars}


def documented_keys(text):
    """{role: {(section, key)}} of the keys afb.conf(5) gives an entry (.TP/.TQ tag)."""
    found, role, section, tag_next = {}, None, None, False
    for line in text.splitlines():
        match = re.match(r'^\.SH "(SERVER|CLIENT) CONFIGURATION"$', line)
        if match:
            role, section = match.group(1).lower(), None
            found[role] = set()
        elif line.startswith(".SH"):
            role = None
        elif re.match(r'^\.SS "\[\w+\]"$', line) and role:
            section = line[6:-2]
        elif line in (".TP", ".TQ"):
            tag_next = True
            continue
        elif tag_next and role and section:
            key = re.match(r"^\\fB(\w+)\\fR", line)
            if key:
                found[role].add((section, key.group(1)))
        tag_next = False
    return found


def test_every_configspec_key_is_in_afb_conf_5(pages):
    found = documented_keys(pages[1]["afb.conf.5"])
    for role in ("server", "client"):
        wanted = spec_keys(role)
        assert len(wanted) > 40
        assert wanted - found[role] == set(), role
        assert found[role] - wanted == set(), role


def walk(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from walk(sub, path + (name,))


def test_every_subcommand_and_option_is_in_afb_1(pages):
    text = pages[1]["afb.1"]
    commands = list(walk(build_parser()))
    names = {" ".join(path) for path, _sub in commands}
    assert {"server", "client", "token issue", "token revoke", "token list", "config check",
            "keygen", "report", "tui", "demo"} <= names
    for path, sub in commands:
        section = text.split('.SS "%s"\n' % manpages.esc("afb " + " ".join(path)))
        assert len(section) == 2, path
        body = section[1].split("\n.SS ")[0].split("\n.SH ")[0]
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert "\\fB%s\\fR" % manpages.esc(option) in body, (path, option)
    assert "\\fB\\-\\-version\\fR" in text


def test_pages_are_the_same_bytes_every_run(pages, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    again = manpages.write_pages(str(tmp_path))
    for first, second in zip(pages[0], again, strict=True):
        with open(first, "rb") as a, open(second, "rb") as b:
            assert a.read() == b.read(), second
    assert '.TH "AFB" "1" "2026-01-01" "afb ' in pages[1]["afb.1"]
    assert '.TH "AFB.CONF" "5" "2026-01-01" "afb ' in pages[1]["afb.conf.5"]


def test_the_date_without_source_date_epoch_is_debian_changelogs(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    changelog = tmp_path / "changelog"
    changelog.write_text("afb (0.1.0) unstable; urgency=medium\n\n  * x\n\n"
                         " -- A <a@example.org>  Tue, 01 Dec 2026 23:30:00 +0000\n")
    assert manpages.build_date(str(changelog)) == "2026-12-01"
    assert manpages.build_date(str(tmp_path / "missing")) == ""


@pytest.mark.parametrize("name", ["afb.1", "afb.conf.5"])
def test_groff_and_man_read_the_pages_without_a_warning(pages, name):
    path = [p for p in pages[0] if os.path.basename(p) == name][0]
    if not shutil.which("groff"):
        pytest.skip("no groff (make apt-deps installs groff-base)")
    result = subprocess.run(["groff", "-ww", "-z", "-man", path], capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    if shutil.which("man"):   # what lintian's manpage-has-errors-from-man runs
        result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", path],
                                capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"))
        assert (result.returncode, result.stderr) == (0, "")
        assert "Every key below shows its default value" in result.stdout or name == "afb.1"


def test_every_check_the_specs_use_has_a_value_type_entry():
    for role in ("server", "client"):
        for check, _args, _kwargs in manpages.read_spec(
                os.path.join(SPEC_DIR, role + ".spec")).values():
            assert check in manpages.VALUE_TYPES, check


def _stated_defaults(prose, count):
    """The values a comment's last "Default: ..." / "Defaults: a, b and c" names."""
    match = re.search(r"Defaults?: (.*)$", " ".join(prose))
    if not match:
        return None
    text = re.sub(r"\s*\(.*\)\s*$", "", match.group(1)).strip()
    items = [text] if count == 1 else re.split(r",? and |, ", text)
    items = [item.split(" ")[0] if count > 1 else item for item in items]
    return items * count if len(items) == 1 else items     # audience, issuer: "afb"


@pytest.mark.parametrize("role", ["server", "client"])
def test_defaults_the_comments_state_are_the_configspecs(role):
    """The comments say "Default: ..." for readers of the file; they must not drift."""
    spec = manpages.read_spec(os.path.join(SPEC_DIR, role + ".spec"))
    conf = os.path.join(ROOT, "conf", "afb-%s.conf" % role)
    checked = 0
    for section, _intro, groups in manpages.sections(spec, manpages.read_conf(conf)[1], conf):
        for names, prose in groups:
            stated = _stated_defaults(prose, len(names))
            if stated is None:
                continue
            assert len(stated) == len(names), (section, names, stated)
            for name, value in zip(names, stated, strict=True):
                default = manpages._value(spec[(section, name)][2]["default"])
                assert value == (default or "empty"), (section, name)
                checked += 1
    assert checked > 40


def test_a_key_in_one_source_only_is_an_error(tmp_path):
    spec = manpages.read_spec(os.path.join(SPEC_DIR, "client.spec"))
    conf = os.path.join(ROOT, "conf", "afb-client.conf")
    header, entries = manpages.read_conf(conf)
    with pytest.raises(ValueError, match=r"\[tunnel\] ping_timeout"):
        manpages.sections(spec, [e for e in entries if e[1] != "ping_timeout"], conf)
    extra = entries + [("tunnel", "new_key", ["An undocumented key."])]
    with pytest.raises(ValueError, match="not in the configspec"):
        manpages.sections(spec, extra, conf)


def test_the_generator_imports_no_gevent_and_no_daemon(tmp_path):
    code = ("import sys, afb.manpages as m; m.write_pages(sys.argv[1]); "
            "bad = [n for n in sys.modules if n.split('.')[0] in ('gevent', 'configobj') "
            "or n.startswith(('afb.apps', 'afb.transport'))]; print(bad)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT, env=dict(os.environ,
                                                                       PYTHONPATH=ROOT))
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr
