"""Runs in the Ingress replica: its gRPC and HTTP servers, request building, and the
Ingress's end of the output channels. Importing the package loads nothing heavy."""
