"""Settings gRPC's C core reads once, when it loads: imported by `pxgrpc/__init__.py` first.

gRPC logs every failed TLS handshake on stderr at INFO level (``ssl_transport_security.cc:
Handshake failed ...``); pxgrpc explains such failures itself, in one line, so only gRPC's
errors are shown. Set ``GRPC_VERBOSITY`` yourself to see more.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
