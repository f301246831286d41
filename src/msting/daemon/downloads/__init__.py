"""Downloading model files: the transfer engine (`transfer.py`: Range resume from a
`.part` file and a small state file, sha256 checked before the file moves into place,
retries with backoff, stalls restarted, free space checked), the plain HTTP it speaks
(`http.py`), and the sources a model comes from (`sources.py`: Hugging Face, the
Ollama registry, a URL). Everything here blocks: the daemon runs it in a thread per
download (`msting.daemon.model_jobs`)."""
