"""Runs in the LLMServer replica: the deployment around one engine, its outputs, and the
replica's end of the output channels. Importing the package loads nothing heavy."""
