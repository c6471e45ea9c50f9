"""The OpenAI-compatible HTTP layer: the FastAPI app, its request models and its response
formatting."""
