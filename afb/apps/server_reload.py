"""What ``afb server`` reads again on SIGHUP (and the control socket's ``reload``).

A mixin of :class:`~afb.apps.server.TunnelServer`, kept apart so that the
server module holds the tunnel's life and this one what may change under
it: the ``[qos]`` section and the state store's per-user limits (applied
to live tunnels), and the TLS certificate and key (for new connections).
Everything else needs a restart.  A file that is no longer valid, or a
new certificate that does not load, changes nothing: one ERROR line, and
the running settings stay.
"""

import logging

from afb.config import load_config
from afb.errors import AfbError
from afb.keys import spki_pin
from afb.state import STORE_ERRORS, StateUnavailable
from afb.transport import tls
from afb.transport.shaper import qos_settings

log = logging.getLogger(__name__)


class ServerReload:
    """SIGHUP for :class:`~afb.apps.server.TunnelServer` (``cfg``, ``state``, ``qos``,
    ``users``, ``sessions``, ``ssl_context``, ``wsgi``)."""

    def reload(self):
        """SIGHUP: the certificate and key, the ``[qos]`` section and the per-user limits."""
        self.reload_qos()
        return self.reload_tls()

    def _user_limits(self):
        """The state store's per-user limits ({} when it cannot be read: one log line)."""
        try:
            return self.state.user_limits()
        except StateUnavailable as exc:     # read again when the store is back
            log.warning("per-user limits not read, the [qos] defaults apply until the state "
                        "store is back: %s", exc)
            return {}
        except STORE_ERRORS as exc:
            log.error("cannot read the per-user limits from the state store: %s", exc)
            return {}

    def _store_back(self):
        """The shared store answers again: its per-user limits (unread while it was down)."""
        limits = self._user_limits()
        if limits != self.qos.overrides:
            self.users.configure_qos(self.qos.settings, limits)
            log.info("per-user limits read from the state store: %d users", len(limits))

    def reload_qos(self):
        """Read ``[qos]`` of the config file and the store's limits again; live tunnels too.

        Only ``[qos]`` changes; a file that is not valid any more changes nothing.
        """
        path = getattr(self.cfg, "filename", None)
        settings = qos_settings(self.cfg["qos"])
        if path:
            try:
                settings = qos_settings(load_config(path, "server")["qos"])
            except (AfbError, OSError) as exc:
                errors = getattr(exc, "errors", None) or [str(exc)]
                log.error("reload: %s is not valid, [qos] unchanged: %s", path, errors[0])
                return False
        limits = self._user_limits()
        self.users.configure_qos(settings, limits)
        self.cfg["qos"].update({key: value for key, value in settings.items()})
        log.info("reload: [qos] %s; %d users with limits of their own; %d users live",
                 ", ".join("%s=%g" % item for item in sorted(settings.items()) if item[1])
                 or "unlimited", len(limits), len(self.users))
        return True

    def reload_tls(self):
        """SIGHUP: load the certificate and key again; open tunnels are not touched.

        A new context is built and swapped in for new connections, so a bad
        new pair (unreadable, or key and certificate not matching) leaves the
        old one serving.
        """
        if self.ssl_context is None:
            return False
        server = self.cfg["server"]
        try:
            context = tls.server_context(server["cert"], server["key"])
        except (OSError, ValueError) as exc:
            log.error("certificate reload failed, keeping the old one: %s", exc)
            return False
        self.ssl_context = context
        self.wsgi.wrap_socket = context.wrap_socket     # what gevent wraps new connections with
        with open(server["cert"], "rb") as handle:
            pin = spki_pin(handle.read())
        log.info("certificate reloaded from %s (pin %s); %d tunnels kept", server["cert"], pin,
                 len(self.sessions))
        return True

