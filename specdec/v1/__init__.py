"""Generated gRPC code for the specdec.v1 protos."""
