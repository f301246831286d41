"""Stand-in upstream servers for msting's remote providers: small HTTP servers that speak the
real wire protocols of an OpenAI-compatible server, Ollama and Anthropic, and can be told to
fail (see faults.py). One process per stand-in: ``python -m upstreams --api openai|ollama|anthropic
--port 0 --port-file PATH`` (``tests/`` on the path); fixtures.py starts and controls them from a
test, plugin.py has the pytest fixtures.

Modules: app.py (state, control API, the logging/fault layer), faults.py, text.py (the replies),
one module per protocol (openai_api.py, ollama_api.py, anthropic_api.py), __main__.py.
"""
