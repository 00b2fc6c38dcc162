"""The gRPC layer: servicers, validation → status codes, health, reflection, process model."""
