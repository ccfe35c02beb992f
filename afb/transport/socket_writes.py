"""Writing a list of buffers to a (gevent) socket with few system calls.

Used by :class:`~afb.transport.wsconn.WsConnection` for one WebSocket
message made of a header and many frame payloads: on a plain socket one
``sendmsg`` takes them all without joining; a TLS socket has no
``sendmsg``, so small pieces are joined (one TLS record train) and large
ones written as they are.
"""

#: Payloads up to this size count as small: joined before a TLS write (and,
#: on the receiving side, gathered in the connection's receive buffer).
SMALL_PAYLOAD = 16 * 1024
#: On sockets without ``sendmsg`` (TLS), messages up to this size are joined
#: into one write so that they leave as one TLS record train.
JOIN_LIMIT = 64 * 1024
#: Most buffers handed to one sendmsg call (Linux IOV_MAX is 1024).
IOV_MAX = 512


def send_whole(sock, data):
    """``sendall`` that tries one ``send`` first: gevent's ``sendall`` asks the
    kernel for ``SO_SNDBUF`` on every call, and a short write or one that fits
    the socket buffer (most of them) is done in one system call."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def sendmsg_all(sock, buffers):
    """Send every buffer, in order, with as few ``sendmsg`` calls as the kernel allows."""
    sendmsg = sock.sendmsg
    while buffers:
        batch = buffers[:IOV_MAX]
        sent = sendmsg(batch)
        i = 0
        count = len(batch)
        while i < count and sent >= len(batch[i]):
            sent -= len(batch[i])
            i += 1
        if i == count:
            buffers = buffers[count:]
            continue
        rest = memoryview(batch[i])[sent:]
        buffers = [rest] + buffers[i + 1:]


def sendall_coalesced(sock, buffers):
    """``sendall`` of every buffer on a TLS socket: small pieces joined, big ones as they are."""
    sendall = sock.sendall
    pending = []
    pending_len = 0
    for buf in buffers:
        n = len(buf)
        if n >= SMALL_PAYLOAD:
            if pending:
                if pending_len + n <= JOIN_LIMIT:
                    pending.append(buf)
                    sendall(b"".join(pending))
                    pending, pending_len = [], 0
                    continue
                sendall(b"".join(pending))
                pending, pending_len = [], 0
            sendall(buf)
        else:
            pending.append(buf)
            pending_len += n
            if pending_len >= JOIN_LIMIT:
                sendall(b"".join(pending))
                pending, pending_len = [], 0
    if pending:
        sendall(b"".join(pending))
