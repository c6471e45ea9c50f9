"""Where a request goes: the routing policy (pure, no Ray) and the Serve request router
that runs it in every caller of the LLMServer (the Ingress replicas)."""
