"""Generated protobuf and gRPC code (make protos). Import it only from pxgrpc.wire."""
