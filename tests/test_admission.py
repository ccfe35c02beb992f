"""afb.transport.admission: per-source caps and the descriptor high-water mark (pure code)."""

from afb.config import load_config
from afb.policy.access import parse_networks
from afb.transport.admission import Admission
from afb.transport.wsserver import front_door_options


def test_per_source_cap_ipv6_prefix_and_trusted_proxies():
    adm = Admission(per_source=2, per_proxy=3, proxies=parse_networks("10.0.0.1"), fd_limit=1000)
    assert adm.admit("192.0.2.1") is None and adm.admit("192.0.2.1") is None
    assert "limit 2" in adm.admit("192.0.2.1")
    assert adm.admit("192.0.2.2") is None                       # another source
    assert adm.admit("2001:db8::1") is None and adm.admit("2001:db8::2") is None
    assert adm.admit("2001:db8::ffff") is not None              # the same /64
    assert all(adm.admit("10.0.0.1") is None for _ in range(3))
    assert adm.admit("10.0.0.1") is not None
    adm.release("192.0.2.1")
    assert adm.admit("192.0.2.1") is None
    assert adm.total() == 2 + 1 + 2 + 3 and adm.refused == 3


def test_high_water_mark_and_off_switches():
    adm = Admission(fd_limit=1000, high_water=0.8)
    assert adm.fd_mark == 800
    assert not adm.over_high_water(799) and adm.over_high_water(800)
    off = Admission(per_source=0, high_water=0, fd_limit=1000)
    assert off.fd_mark is None and not off.over_high_water(10 ** 6)
    assert all(off.admit("192.0.2.9") is None for _ in range(100))


def test_front_door_defaults_are_nginx_timeouts(tmp_path):
    conf = tmp_path / "s.conf"
    conf.write_text("[server]\n")
    opts = front_door_options(load_config(str(conf), "server"))
    assert (opts["header_timeout"], opts["keepalive_timeout"]) == (60, 75)
    assert (opts["upstream"], opts["upstream_tls"], opts["upstream_proxy_protocol"]) == (
        None, True, False)
    assert (opts["max_pending_per_source"], opts["descriptor_high_water"]) == (32, 0.8)
    conf.write_text("[server]\n[decoy]\nupstream = nowhere\n")
    from afb.config import check_config
    errors = check_config(str(conf), "server")
    assert any("[decoy] upstream" in e for e in errors), errors
