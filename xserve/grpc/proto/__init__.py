"""Generated from ``grpc_predict_v2.proto`` (KServe's ``inference.GRPCInferenceService``):
do not edit the ``*_pb2*`` modules; regenerate them from the repository root with
``grpcio-tools`` (in the ``test`` extra)::

    python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \\
        xserve/grpc/proto/grpc_predict_v2.proto
    sed -i 's/_descriptor_pool.Default()/_descriptor_pool.DescriptorPool()/' \\
        xserve/grpc/proto/grpc_predict_v2_pb2.py

The ``sed`` gives the messages a descriptor pool of their own: the client libraries
(tritonclient.grpc, kserve) register the same ``inference.*`` names in protobuf's default
pool, and a process that loads both would fail with "duplicate symbol".
"""
