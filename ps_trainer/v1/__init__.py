"""The gRPC contract, version 1: code generated from protos/ps_trainer/v1/*.proto by
scripts/gen_protos.sh (grpcio-tools). Do not edit the *_pb2*.py files by hand."""
