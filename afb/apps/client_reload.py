"""What a client's SIGHUP changes: the config read again, compared with the running one.

Pure code: two validated client configs in, a :class:`Plan` out.  Each key
falls in one of three groups:

* what a tunnel is dialled with (:data:`TUNNEL_KEYS`: the server URL, pin,
  CA file, upstream proxy, token place, E2E key and cipher; a ``[servers]``
  subsection) -- a change opens a new tunnel, make before break (the token
  itself is compared by the caller, which reads the token file);
* what needs a restart (:data:`RESTART_KEYS`: the listening socket and the
  local proxy's users and their bans) -- kept as running, with one warning;
* everything else (timeouts, windows, backoff, ``tunnels``, ``strategy``,
  ``allow_sources``, ``fast_open``, ``log_level``, ``[qos]``, ``[udp]``: for the
  next UDP associations) -- applied in
  place, for new streams and the next dial (``[qos]`` rates, ``device_rates``
  and ``device_weights``: for the streams open too; ``priority_ports`` /
  ``priority_hosts``: for the streams opened after it).
"""

#: (section, key) of what a new tunnel is dialled with.
TUNNEL_KEYS = (("client", "server"), ("client", "pin"), ("client", "ca_file"),
               ("client", "upstream_proxy"), ("client", "token_place"),
               ("client", "token_cookie"), ("e2e", "server_key"), ("e2e", "cipher"))
#: (section, key) that only a restart applies.
RESTART_KEYS = (("client", "listen"), ("client", "users_file"),
                ("client", "max_auth_failures"), ("client", "auth_failure_window"),
                ("client", "ban_time"), ("client", "metrics_listen"),
                ("client", "control_socket"))
#: Where the token comes from: the caller compares the tokens themselves.
TOKEN_KEYS = (("client", "token"), ("client", "token_file"))


#: The name of the server of ``[client] server`` (the single-server form).
SINGLE = "server"


def tunnel_settings(cfg, name=SINGLE):
    """The keyword arguments of ``TunnelClient.configure`` for the server ``name`` of a
    client config: its ``[servers]`` subsection, whose empty keys take [client]'s
    and [e2e]'s values; ``[client] server`` itself for :data:`SINGLE`."""
    client, e2e = cfg["client"], cfg["e2e"]
    own = cfg["servers"][name] if name in cfg["servers"].sections else {}
    return dict(url=own.get("url") or client["server"], pin=own.get("pin") or client["pin"],
                ca_file=own.get("ca_file") or client["ca_file"],
                proxy=own.get("upstream_proxy") or client["upstream_proxy"],
                token_place=client["token_place"], token_cookie=client["token_cookie"],
                e2e_key=own.get("server_key") or e2e["server_key"] or None,
                e2e_cipher=None if e2e["cipher"] == "auto" else e2e["cipher"])


def server_names(cfg):
    """The servers of a client config, the preferred first."""
    return list(cfg["servers"].sections) or [SINGLE]


def token_place(cfg, name):
    """``(token, token_file)`` of the server ``name``: its own, else [client]'s."""
    own = cfg["servers"][name] if name in cfg["servers"].sections else {}
    if own.get("token") or own.get("token_file"):
        return own.get("token", ""), own.get("token_file", "")
    return cfg["client"]["token"], cfg["client"]["token_file"]


def tunnel_parameters(cfg):
    """The TunnelClient attributes a client config sets, besides its settings."""
    tunnel = cfg["tunnel"]
    return dict(window=tunnel["stream_window"], max_message=tunnel["max_message"],
                buffer_limit=tunnel["max_buffer"], connect_timeout=tunnel["connect_timeout"],
                ping_interval=tunnel["ping_interval"], ping_timeout=tunnel["ping_timeout"],
                reconnect_min=tunnel["reconnect_min"], reconnect_max=tunnel["reconnect_max"],
                drain_timeout=cfg["client"]["drain_timeout"], resume_grace=tunnel["resume_grace"])


def label(section, key):
    return "[%s] %s" % (section, key)


class Plan:
    """What changed between two configs: ``tunnel`` (a new tunnel), ``restart``
    (kept as running) and ``applied`` (in place): lists of ``[section] key``."""

    def __init__(self, tunnel=(), restart=(), applied=()):
        self.tunnel = list(tunnel)
        self.restart = list(restart)
        self.applied = list(applied)

    def __repr__(self):
        return "Plan(tunnel=%r, restart=%r, applied=%r)" % (self.tunnel, self.restart,
                                                            self.applied)


def reload_plan(old, new):
    """The :class:`Plan` from the running config ``old`` to the new one ``new``."""
    plan = Plan()
    for section in ("client", "tunnel", "e2e", "alerts", "qos"):
        for key in new[section]:
            if old[section].get(key) == new[section][key] or (section, key) in TOKEN_KEYS:
                continue
            if (section, key) in TUNNEL_KEYS:
                plan.tunnel.append(label(section, key))
            elif (section, key) in RESTART_KEYS:
                plan.restart.append(label(section, key))
            else:
                plan.applied.append(label(section, key))
    for name in new["servers"].sections:
        if old["servers"].get(name) != new["servers"][name]:
            plan.tunnel.append("[servers] %s" % name)
    plan.tunnel += ["[servers] %s (no longer listed)" % name for name in old["servers"].sections
                    if name not in new["servers"].sections]
    return plan


def keep_running_values(old, new):
    """Copy the :data:`RESTART_KEYS` of the running config into ``new``: the
    running client still has them, and the next SIGHUP compares with them."""
    for section, key in RESTART_KEYS:
        new[section][key] = old[section][key]
    return new
