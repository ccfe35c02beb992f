# conf/afb-client.conf -> /etc/afb/client.conf of the package (debian/rules).
# The service runs as _afb under ProtectSystem=strict: /etc/afb is read-only
# to it, so the token it rewrites on refresh lives in its StateDirectory.
s|^# File holding the token; must be 0600 (afb refuses it otherwise). Default: empty|&\
# Packaged service: keep it in /var/lib/afb, owned by _afb (the client rewrites\
# it when the server refreshes the token), e.g.\
#   install -o _afb -g _afb -m 600 /dev/null /var/lib/afb/client.token|
s|^token_file = /etc/afb/client.token$|token_file = /var/lib/afb/client.token|
