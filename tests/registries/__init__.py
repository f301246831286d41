"""Local stand-ins for the model registries (Hugging Face's hub, the Ollama registry, a
plain file server) that the download tests and bench/downloads.py fetch from; see
server.py. A test module imports the fixture:

    from registries import plugin
    registries = plugin.registries  # the fixture, by name
"""
