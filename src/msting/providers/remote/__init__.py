"""Remote engines as providers: the wire formats (openai, ollama, anthropic), the URL
pool with its circuit breakers, the one retry loop, and health checks with discovery."""
