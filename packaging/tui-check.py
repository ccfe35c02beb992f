"""deb-test's dashboard check: ``afb tui`` (Debian's python3-textual) on a live client.

Run inside the Debian 13 container as a member of group _afb, while a
download goes through the client: the dashboard, driven headless by
Textual's Pilot (the same app ``afb tui`` runs, nothing mocked), must show
that stream in its connections table.  Exit 0 when it does.

    python3 tui-check.py /run/afb/client.sock 127.0.0.1:PORT
"""

import asyncio
import sys

import textual

from tui.app import Dashboard
from tui.widgets.connections import ConnectionsTable


async def main(socket_path, destination):
    app = Dashboard(connect=socket_path)
    async with app.run_test(size=(160, 40)) as pilot:
        for _ in range(100):
            await pilot.pause(0.1)
            table = app.main.query_one(ConnectionsTable)
            rows = [" ".join(str(cell) for cell in table.get_row_at(i))
                    for i in range(table.row_count)]
            if any(destination in row for row in rows):
                print("textual %s: the dashboard shows %s" % (textual.__version__, rows))
                return 0
    print("the dashboard never showed %s (rows: %s)" % (destination, rows))
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
