"""Security for pxgrpc: who may call, and over what.

One module per concept:

- :mod:`~pxgrpc.security.tokens`: client and engine tokens, and the call metadata carrying them;
- :mod:`~pxgrpc.security.connection_file`: the connection file a controller publishes
  (:class:`ConnectionInfo`, :func:`read_connection_file`);
- :mod:`~pxgrpc.security.interceptor`: the server-side token check;
- :mod:`~pxgrpc.security.certs`: X.509 material (a small CA, server and client certificates,
  certificate signing requests);
- :mod:`~pxgrpc.security.certfiles`: certificate PEM files (load and check them, `pxgrpc tls`);
- :mod:`~pxgrpc.security.credentials`: gRPC server and channel credentials and options;
- :mod:`~pxgrpc.security.errors`: :class:`SecurityError`, raised by all of them.
"""

from pxgrpc.security.connection_file import ConnectionInfo, read_connection_file
from pxgrpc.security.errors import SecurityError

__all__ = ["ConnectionInfo", "SecurityError", "read_connection_file"]
