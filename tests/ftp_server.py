"""A throwaway FTP server for the media tests (Twisted's own), on a free
loopback port: ``python tests/ftp_server.py ROOT USER PASSWORD`` prints the
port, then serves ROOT, writable by USER."""

from __future__ import annotations

import sys
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.protocols.ftp import FTPFactory, FTPRealm
from twisted.python import filepath


class Realm(FTPRealm):
    """Every user's home is the root (Twisted's realm gives /home/USER)."""

    def getHomeDirectory(self, avatarId: Any) -> Any:
        return filepath.FilePath(self.anonymousRoot.path)


def main() -> None:
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    root, user, password = sys.argv[1:4]
    # Twisted's checker takes the user as str over FTP (its stubs say bytes);
    # zope interfaces are beyond mypy.
    checker: Any = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(user, password)
    realm: Any = Realm(root)
    factory = FTPFactory(Portal(realm, [checker]))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
