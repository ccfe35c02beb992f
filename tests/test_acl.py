"""Destination ACL: pure checks, no network traffic."""

import pytest

from afb.errors import REP_NOT_ALLOWED, NotAllowed
from afb.policy.acl import DestinationAcl, classify_address, format_destination, private_only
from afb.policy.acl_rules import parse_rule

REFUSED_BY_DEFAULT = [
    ("127.0.0.1", "loopback"),
    ("127.8.8.8", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("::", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fd00::1", "unique local"),
    ("fd00:ec2::254", "cloud metadata"),
    ("ff02::1", "multicast"),
    ("2002:7f00:1::1", "loopback via 6to4"),
    ("2002:a00:1::", "private via 6to4"),
    ("64:ff9b::7f00:1", "loopback via NAT64"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata via NAT64"),
    ("192.0.2.1", "documentation"),
    ("2001:db8::1", "documentation"),
]

ALLOWED_BY_DEFAULT = ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1",
                      "64:ff9b::101:101", "2002:101:101::1", "172.32.0.1", "100.128.0.1"]


@pytest.mark.parametrize("ip,reason", REFUSED_BY_DEFAULT)
def test_refused_by_default(ip, reason):
    acl = DestinationAcl()
    with pytest.raises(NotAllowed) as info:
        acl.check_address(ip, 443)
    exc = info.value
    assert exc.reply == REP_NOT_ALLOWED
    assert exc.reason == reason
    assert str(exc).endswith("is not allowed (%s)" % reason)
    assert classify_address(ip) == reason
    assert not acl.is_allowed(ip, 443)


@pytest.mark.parametrize("ip", ALLOWED_BY_DEFAULT)
def test_allowed_by_default(ip):
    acl = DestinationAcl()
    assert acl.check_address(ip, 443) is None
    assert classify_address(ip) is None


@pytest.mark.parametrize("ip,_reason", REFUSED_BY_DEFAULT)
def test_allow_private_lets_classes_through(ip, _reason):
    assert DestinationAcl(allow_private=True).check_address(ip, 80) is None


def test_message_format():
    acl = DestinationAcl()
    with pytest.raises(NotAllowed,
                       match=r"^destination 127\.0\.0\.1:22 is not allowed \(loopback\)$"):
        acl.check_address("127.0.0.1", 22)
    with pytest.raises(NotAllowed, match=r"^destination \[::1\]:22 is not allowed \(loopback\)$"):
        acl.check_address("::1", 22)
    with pytest.raises(NotAllowed, match=r"^destination evil\.test:80 \(127\.0\.0\.1\) "
                                         r"is not allowed \(loopback\)$"):
        acl.check_address("127.0.0.1", 80, host="evil.test")
    assert format_destination("::1", 1) == "[::1]:1"
    assert format_destination("example.com", 443) == "example.com:443"


@pytest.mark.parametrize("ip,port,ok", [
    ("127.0.0.1", 8000, True),
    ("127.0.0.1", 8100, True),
    ("127.0.0.1", 8050, True),
    ("127.0.0.1", 7999, False),
    ("127.0.0.1", 8101, False),
    ("127.0.0.2", 8000, False),
    ("::ffff:127.0.0.1", 8000, True),  # mapped form is the same destination
    ("::1", 8080, True),
    ("::1", 8081, False),
    ("10.1.2.3", 5432, True),
    ("10.1.2.3", 22, True),
    ("10.2.0.1", 22, False),
    ("fd00::5", 443, True),
    ("fd00::5", 80, False),
])
def test_allow_private_to_rules_with_ports(ip, port, ok):
    acl = DestinationAcl(allow_private_to=["127.0.0.1/32:8000-8100", "[::1]:8080", "10.1.0.0/16",
                                           "[fd00::/8]:443"])
    assert acl.is_allowed(ip, port) is ok


def test_deny_overrides_allow_private_to_and_allow_private():
    acl = DestinationAcl(allow_private_to=["10.0.0.0/8", "example.com"],
                         deny=["10.9.0.0/16", "0.0.0.0/0:25", "[::/0]:25", "example.com:22"],
                         allow_private=True)
    assert acl.is_allowed("10.1.1.1", 80)
    assert not acl.is_allowed("10.9.1.1", 80)
    assert not acl.is_allowed("1.1.1.1", 25)
    assert not acl.is_allowed("::ffff:1.1.1.1", 25)
    assert not acl.is_allowed("2606:4700::1111", 25)
    assert acl.is_allowed("1.1.1.1", 26)
    assert acl.is_allowed("93.184.216.34", 80, host="example.com")
    with pytest.raises(NotAllowed, match=r"denied by rule example\.com:22"):
        acl.check_address("93.184.216.34", 22, host="Example.COM.")
    with pytest.raises(NotAllowed, match=r"denied by rule 10\.9\.0\.0/16"):
        acl.check_address("10.9.0.1", 443)


def test_deny_matches_embedded_ipv4():
    acl = DestinationAcl(deny=["1.2.3.0/24"])
    assert not acl.is_allowed("::ffff:1.2.3.4", 80)
    assert not acl.is_allowed("2002:102:304::1", 80)  # 6to4 of 1.2.3.4
    assert not acl.is_allowed("64:ff9b::102:304", 80)  # NAT64 of 1.2.3.4
    assert acl.is_allowed("1.2.4.1", 80)


def test_own_address_refused_unless_explicitly_allowed():
    acl = DestinationAcl(own_addresses=["203.0.114.7", "2001:4860::7"], allow_private=True)
    with pytest.raises(NotAllowed, match=r"server's own address"):
        acl.check_address("203.0.114.7", 443)
    with pytest.raises(NotAllowed, match=r"server's own address"):
        acl.check_address("::ffff:203.0.114.7", 443)
    with pytest.raises(NotAllowed, match=r"server's own address"):
        acl.check_address("2001:4860::7", 443)
    assert acl.is_allowed("203.0.114.8", 443)
    acl = DestinationAcl(own_addresses=["203.0.114.7"], allow_private_to=["203.0.114.7:443"])
    assert acl.is_allowed("203.0.114.7", 443)
    assert not acl.is_allowed("203.0.114.7", 22)
    # allow alone restricts, it never opens an own address
    acl = DestinationAcl(own_addresses=["203.0.114.7"], allow=["203.0.114.7:443"])
    with pytest.raises(NotAllowed, match=r"server's own address"):
        acl.check_address("203.0.114.7", 443)


def test_own_endpoint_refused_even_when_allowed():
    """Step 0: an own address on the listening port, whatever allow and allow_private say."""
    own = ["127.0.0.0/8", "::1", "0.0.0.0", "::", "198.18.0.1", "2001:db8::5"]
    acl = DestinationAcl(own_addresses=own, own_port=443, allow_private=True,
                         allow_private_to=["198.18.0.1/32", "0.0.0.0/0", "::/0"])
    for ip in ("198.18.0.1", "::ffff:198.18.0.1", "2001:db8::5", "127.0.0.9", "::1", "0.0.0.0",
               "64:ff9b::c612:1"):             # the last one: NAT64 of 198.18.0.1
        with pytest.raises(NotAllowed, match=r"\(the server's own endpoint\)"):
            acl.check_address(ip, 443)
    assert acl.is_allowed("198.18.0.1", 22)          # other ports: allow_private_to opens them
    assert acl.is_allowed("198.18.0.2", 443)         # not ours


def test_own_loopback_follows_allow_private_on_other_ports():
    """Step 3 leaves loopback and unspecified addresses to step 4 (the demo's allow_private)."""
    own = ["127.0.0.0/8", "::1", "0.0.0.0", "::", "198.18.0.1"]
    private = DestinationAcl(own_addresses=own, own_port=443, allow_private=True)
    assert private.is_allowed("127.0.0.1", 8000) and private.is_allowed("::1", 8000)
    with pytest.raises(NotAllowed, match="server's own address"):
        private.check_address("198.18.0.1", 8000)
    strict = DestinationAcl(own_addresses=own, own_port=443)
    with pytest.raises(NotAllowed, match=r"\(loopback\)"):
        strict.check_address("127.0.0.1", 8000)
    many = DestinationAcl(own_addresses=["11.%d.%d.1" % (a, b) for a in range(40)
                                         for b in range(250)], own_port=1)
    assert len(many._own_hosts) == 10000 and not many._own_ranges      # one set lookup
    assert not many.is_allowed("11.39.249.1", 80) and many.is_allowed("11.39.249.2", 80)


def test_names_and_wildcards():
    acl = DestinationAcl(allow_private_to=["internal.corp:443", "*.svc.local"],
                         deny=["*.evil.com", "bad.example", "mail.example.org:25"])
    # check_name: deny rules before resolution
    for host in ("x.evil.com", "a.b.EVIL.com", "bad.example", "bad.example."):
        with pytest.raises(NotAllowed, match="denied by rule"):
            acl.check_name(host, 443)
    assert acl.check_name("evil.com", 443) is None  # wildcard does not match the apex
    assert acl.check_name("notevil.com", 443) is None
    assert acl.check_name("mail.example.org", 587) is None
    with pytest.raises(NotAllowed, match=r"^destination mail\.example\.org:25 is not allowed"):
        acl.check_name("mail.example.org", 25)
    assert acl.check_name("127.0.0.1", 22) is None  # literals are judged by check_address

    # allow_private_to by name lets a private address through, port permitting
    assert acl.is_allowed("10.0.0.5", 443, host="internal.corp")
    assert not acl.is_allowed("10.0.0.5", 80, host="internal.corp")
    assert acl.is_allowed("10.0.0.6", 80, host="db.svc.local")
    assert not acl.is_allowed("10.0.0.6", 80, host="svc.local")
    # a name resolving to loopback is refused like the literal
    assert not acl.is_allowed("127.0.0.1", 80, host="evil.test")
    # a host that is an IP literal gets no name-rule treatment
    assert not acl.is_allowed("127.0.0.1", 80, host="127.0.0.1")


@pytest.mark.parametrize("entry,kind,lo,hi", [
    ("10.0.0.0/8", "net", 1, 65535),
    ("1.2.3.4", "net", 1, 65535),
    ("1.2.3.4:443", "net", 443, 443),
    ("127.0.0.1/32:8000-8100", "net", 8000, 8100),
    ("::1/128", "net", 1, 65535),
    ("2001:db8::1", "net", 1, 65535),
    ("[::1]:8080", "net", 8080, 8080),
    ("[2001:db8::]/32:443", "net", 443, 443),
    ("[2001:db8::/32]:1-1024", "net", 1, 1024),
    ("example.com", "name", 1, 65535),
    ("Example.COM.:443", "name", 443, 443),
    ("*.example.com", "wildcard", 1, 65535),
    ("*.example.com:80-81", "wildcard", 80, 81),
])
def test_parse_rule(entry, kind, lo, hi):
    rule = parse_rule(entry)
    assert (rule.kind, rule.port_lo, rule.port_hi) == (kind, lo, hi)
    assert rule.text == entry


@pytest.mark.parametrize("entry", [
    "", "   ", "10.0.0.1/8", "10.0.0.0/33", "1.2.3", "300.1.1.1", "example.com:0",
    "example.com:65536", "example.com:http", "example.com:90-80", "example.com:",
    "*", "*:443", "foo.*.com", "ex ample.com", "-bad.com", "::1:80:x", "[::1", "[::1]80",
    "[::1]:", "[nothost]:80", ":443", "a..b", 42, None,
])
def test_bad_rule_raises_value_error(entry):
    with pytest.raises(ValueError) as info:
        DestinationAcl(allow=[entry])
    assert repr(entry) in str(info.value)
    with pytest.raises(ValueError):
        DestinationAcl(deny=[entry])
    with pytest.raises(ValueError):
        DestinationAcl(allow_private_to=[entry])


def test_bad_own_address():
    with pytest.raises(ValueError, match="not-an-ip"):
        DestinationAcl(own_addresses=["not-an-ip"])


def test_single_string_rule_list():
    acl = DestinationAcl(allow="1.1.1.1:80", allow_private_to="127.0.0.1:80")
    assert acl.is_allowed("1.1.1.1", 80) and acl.is_allowed("127.0.0.1", 80)
    assert not acl.is_allowed("1.1.1.1", 81) and not acl.is_allowed("127.0.0.1", 81)


def test_remembered_verdicts_never_widen_what_is_allowed():
    acl = DestinationAcl(allow_private_to=["203.0.113.7:443"], deny=["8.8.8.8"])
    for _ in range(3):                       # the second and third answers come from memory
        assert acl.is_allowed("203.0.113.7", 443)
        assert not acl.is_allowed("8.8.8.8", 443)
        assert not acl.is_allowed("127.0.0.1", 443)
        with pytest.raises(NotAllowed):
            acl.check_address("10.0.0.1", 80, "intranet.example")
    # A name rule still applies to a remembered address under another name.
    named = DestinationAcl(deny=["*.blocked.example"])
    assert named.is_allowed("93.184.216.34", 443, "ok.example")
    assert not named.is_allowed("93.184.216.34", 443, "x.blocked.example")
    # The memory is bounded.
    wide = DestinationAcl()
    for port in range(1, 5000):
        wide.check_address("93.184.216.34", port)
    assert wide._allowed.cache_info().currsize <= 4096


def test_a_non_empty_allow_is_the_only_way_out():
    """``allow`` lists the only destinations; private ones it names stay refused."""
    acl = DestinationAcl(allow=["93.184.216.0/24:443", "*.example.org", "10.0.0.5"],
                         allow_private_to=["10.0.0.6:8080"], deny=["93.184.216.9"])
    assert acl.is_allowed("93.184.216.34", 443)
    assert acl.is_allowed("1.1.1.1", 80, host="www.example.org")       # the name is listed
    for ip, port, host in [("93.184.216.34", 80, None), ("1.1.1.1", 443, None),
                           ("1.1.1.1", 443, "example.org"), ("2606:4700::1111", 443, None)]:
        with pytest.raises(NotAllowed, match=r"\(not in \[acl\] allow\)$"):
            acl.check_address(ip, port, host)
    with pytest.raises(NotAllowed, match=r"\(private\)$"):       # listed, still private
        acl.check_address("10.0.0.5", 80)
    with pytest.raises(NotAllowed, match=r"\(loopback\)$"):      # a listed name resolving to it
        acl.check_address("127.0.0.1", 80, host="evil.example.org")
    assert acl.is_allowed("10.0.0.6", 8080)                       # the exception, not in allow
    assert not acl.is_allowed("10.0.0.6", 8081)
    with pytest.raises(NotAllowed, match=r"denied by rule 93\.184\.216\.9"):
        acl.check_address("93.184.216.9", 443)
    # allow_private lifts the class block; allow still restricts
    lan = DestinationAcl(allow=["10.0.0.0/8"], allow_private=True)
    assert lan.is_allowed("10.1.2.3", 22) and not lan.is_allowed("192.168.1.1", 22)
    assert not lan.is_allowed("1.1.1.1", 443)


def test_an_empty_allow_leaves_every_public_destination_open():
    acl = DestinationAcl(allow_private_to=["10.0.0.6:8080"])
    assert acl.is_allowed("1.1.1.1", 443) and acl.is_allowed("10.0.0.6", 8080)
    assert not acl.is_allowed("10.0.0.7", 8080)


@pytest.mark.parametrize("entry,reason", [
    ("10.0.0.5:8080", "private"), ("127.0.0.1/32:80", "loopback"), ("[::1]:22", "loopback"),
    ("192.168.0.0/16", "private"), ("169.254.169.254", "cloud metadata"),
    ("[fd00::/8]:443", "unique local"), ("1.1.1.1", None), ("0.0.0.0/0", None),
    ("example.com", None), ("*.corp.example", None),
])
def test_private_only(entry, reason):
    assert private_only(parse_rule(entry)) == reason
