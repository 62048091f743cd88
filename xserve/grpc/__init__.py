"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), served beside
HTTP in every server process over the same data plane."""
