"""``python -m upstreams --api openai|ollama|anthropic --port 0 --port-file PATH [--models a,b]
[--token-delay SEC] [--api-key KEY] [--reply-words N]``

Serves one stand-in on 127.0.0.1 (uvicorn); once it listens, the bound port is written to
--port-file (atomically: a reader sees the whole number or no file). SIGTERM / SIGINT stop it
(requests still hanging are cancelled after a second).
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys
from pathlib import Path

import uvicorn

from .app import API_KEY_ENV, StandInApp, State
from .text import DEFAULT_REPLY_WORDS

APIS = {"openai": "openai_api", "ollama": "ollama_api", "anthropic": "anthropic_api"}
DEFAULT_MODELS = "standin"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m upstreams", description="a stand-in upstream server that can be told to fail")
    p.add_argument("--api", required=True, choices=sorted(APIS))
    p.add_argument("--port", type=int, default=0, help="the TCP port on 127.0.0.1 (0: any free port)")
    p.add_argument("--port-file", type=Path, help="where to write the bound port once listening")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated model names (default {DEFAULT_MODELS!r})")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds before each streamed word (a reply that "
                   "is not streamed waits words x delay)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"the credential the protocol routes require (default: ${API_KEY_ENV})")
    p.add_argument("--reply-words", type=int, default=DEFAULT_REPLY_WORDS, help="the natural length of a reply, in words")
    return p.parse_args(argv)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, port_file: Path | None, port: int):
        super().__init__(config)
        self.port_file = port_file
        self.port = port

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets=sockets)
        if self.port_file is not None and not self.should_exit:
            tmp = self.port_file.with_name(self.port_file.name + ".tmp")
            tmp.write_text(f"{self.port}\n")
            os.replace(tmp, self.port_file)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    protocol = importlib.import_module(f"{__package__}.{APIS[args.api]}")
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets created with it,
    # and without it every keep-alive reply's body waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart on the same port past TIME_WAIT
    sock.bind(("127.0.0.1", args.port))
    sock.set_inheritable(False)
    port = sock.getsockname()[1]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    state = State(api=args.api, models=models, token_delay=args.token_delay, api_key=args.api_key,
                  reply_words=args.reply_words, port=port)
    config = uvicorn.Config(StandInApp(state, protocol), log_level="warning", access_log=False, lifespan="off",
                            proxy_headers=False, timeout_graceful_shutdown=1, timeout_keep_alive=5)
    server = _Server(config, args.port_file, port)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
