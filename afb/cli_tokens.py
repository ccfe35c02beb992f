"""``afb token issue|revoke|list``: user tokens and the state store that lists them.

Loaded by :mod:`afb.cli` when a ``token`` command runs; never imports gevent.
"""

import os
import time

from afb.cli_common import (
    DEFAULT_SERVER_CONF,
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    _err,
    _load,
    _utc,
)
from afb.errors import ConfigError
from afb.state import STORE_ERRORS


def _store(cfg, create):
    """The server's state store, or None (after a message) if it cannot be opened."""
    from afb.state import describe_store, open_store

    try:
        return open_store(cfg, create=create)
    except (OSError, *STORE_ERRORS) as exc:
        _err("%s: %s" % (describe_store(cfg), exc))
        return None


def _record(cfg, claims, kid):
    """Record an issued token in the state store; False (after a message) if that failed."""
    store = _store(cfg, create=True)
    if store is None:
        return False
    try:
        store.record_issued(claims, kid=kid)
        store.purge_expired()
        return True
    except (OSError, *STORE_ERRORS) as exc:      # a locked or broken database...
        _err("state store: %s" % exc)
        return False
    finally:
        store.close()


def cmd_token_issue(args):
    from afb.file_trust import write_secret
    from afb.policy.auth import ALGORITHM, parse_ttl
    from afb.policy.keyring import SingleKeySigner, make_signer

    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        _err("afb token issue: %s" % exc)
        return EXIT_FAILURE
    audience, issuer, cfg = "afb", "afb", None
    try:
        if args.key is not None:
            signer = SingleKeySigner(args.key, args.algorithm or ALGORITHM)
        else:
            cfg = _load(args.config or DEFAULT_SERVER_CONF, "server")
            if cfg is None:
                return EXIT_CONFIG
            if args.algorithm and args.algorithm != cfg["auth"]["algorithm"]:
                _err("afb token issue: --algorithm %s differs from [auth] algorithm = %s"
                     % (args.algorithm, cfg["auth"]["algorithm"]))
                return EXIT_FAILURE
            signer = make_signer(cfg)
            audience, issuer = cfg["auth"]["audience"], cfg["auth"]["issuer"]
        audience = args.audience or audience
        issuer = args.issuer or issuer
        token, claims, kid = signer.issue(args.sub, ttl, audience=audience, issuer=issuer)
        if args.out:
            write_secret(args.out, token + "\n")
    except (OSError, ValueError, TypeError, ConfigError) as exc:
        _err("afb token issue: %s" % exc)
        return EXIT_FAILURE
    if cfg is not None and not _record(cfg, claims, kid):
        _err("note: this token is not in the list of `afb token list`")
    expires = _utc(claims["exp"])
    if args.out:
        print("token for %s written to %s (expires %s)" % (args.sub, args.out, expires))
    else:
        print(token)
        _err("token for %s expires %s" % (args.sub, expires))
    return EXIT_OK


def cmd_token_revoke(args):
    cfg = _load(args.config or DEFAULT_SERVER_CONF, "server")
    if cfg is None:
        return EXIT_CONFIG
    store = _store(cfg, create=True)
    if store is None:
        return EXIT_FAILURE
    try:
        if args.jti:
            revoked = store.revoke_jti(args.jti, reason=args.reason)
            family = revoked["family"]
            also = "" if family == args.jti else " and its family %s" % family
            if revoked["sub"]:
                expires = " (the newest expires %s)" % _utc(revoked["exp"]) if revoked["exp"] \
                    else ""
                print("revoked token %s of %s%s, with every token refreshed from the same "
                      "first token%s" % (args.jti, revoked["sub"], also, expires))
            else:
                print("revoked token %s%s, and every token refreshed from it" % (args.jti, also))
                _err("note: %s is not in the issued-token list; it is refused anyway" % args.jti)
        else:
            before = store.revoke_subject(args.sub, reason=args.reason)
            print("revoked every token of %s issued before %s; tokens issued later work"
                  % (args.sub, _utc(before)))
        store.purge_expired()
    except (OSError, *STORE_ERRORS) as exc:      # a locked or broken database...
        _err("afb token revoke: %s" % exc)
        return EXIT_FAILURE
    finally:
        store.close()
    if cfg["server"]["state"]:
        _err("every running server refuses it at once and closes the live tunnels it reaches "
             "within a second (pushed through the shared store)")
    else:
        _err("a running server refuses it at once and closes the live tunnels it reaches within "
             "%g seconds ([auth] revocation_poll + 1)" % (cfg["auth"]["revocation_poll"] + 1))
    return EXIT_OK


def cmd_token_list(args):
    cfg = _load(args.config or DEFAULT_SERVER_CONF, "server")
    if cfg is None:
        return EXIT_CONFIG
    if not cfg["server"]["state"] and not os.path.isdir(cfg["server"]["state_dir"]):
        print("no tokens recorded (no state directory %s)" % cfg["server"]["state_dir"])
        return EXIT_OK
    store = _store(cfg, create=True)
    if store is None:
        return EXIT_FAILURE
    try:
        tokens, revocations = store.list_tokens(), store.list_revocations()
    except (OSError, *STORE_ERRORS) as exc:      # a locked or broken database...
        _err("afb token list: %s" % exc)
        return EXIT_FAILURE
    finally:
        store.close()
    now = time.time()
    newest = {tok["fam"]: tok["refreshes"] for tok in tokens}    # rows come oldest first
    print("%-41s  %-16s  %-23s  %-23s  %s" % ("JTI", "SUB", "ISSUED", "EXPIRES", "STATUS"))
    for tok in tokens:
        status = tok["revoked"] or ("expired" if tok["exp"] < now else "valid")
        if tok["refreshes"]:
            status += "; refresh %d of family %s, its newest" % (tok["refreshes"], tok["fam"])
        elif newest[tok["fam"]]:
            status += "; refreshed since (newest below)"
        print("%-41s  %-16s  %-23s  %-23s  %s" % (tok["jti"], tok["sub"], _utc(tok["iat"]),
                                                 _utc(tok["exp"]), status))
    if any(newest.values()):
        print()
        print("A refreshed token's JTI starts with its family's: the JTI of the first token. "
              "Revoking any JTI of a family revokes all of it.")
    subjects = [r for r in revocations if r["kind"] == "sub"]
    if subjects:
        print()
        print("revoked subjects (tokens issued before the time are refused):")
        for rev in subjects:
            print("  %s before %s%s" % (rev["value"], _utc(rev["before"]),
                                        " (%s)" % rev["reason"] if rev["reason"] else ""))
    return EXIT_OK
