"""An explicit-FTPS server for tests/service.rs: pyftpdlib's TLS handler, TLS required on the
control and data connections, so a plain client is refused.

Usage: python3 tests/ftps_server.py PORT ROOT CERTFILE KEYFILE USER PASSWORD
"""
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer

port, root, certfile, keyfile, user, password = sys.argv[1:7]
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, root, perm="elradfmwMT")
handler = TLS_FTPHandler
handler.certfile = certfile
handler.keyfile = keyfile
handler.authorizer = authorizer
handler.tls_control_required = True
handler.tls_data_required = True
server = FTPServer(("127.0.0.1", int(port)), handler)
server.serve_forever()
