"""The main job: everything on this machine with the embedded defaults.

    python -m service [--port 8001 ...]     # --help lists every setting

Starts redis-server unless REDIS_URL is set, loads the default dataset if Redis holds no catalog,
serves the default model on http://127.0.0.1:8000 (OpenAPI docs at /docs). Ctrl-C (or SIGTERM) stops
all of it: in-flight requests finish (up to 30 s), new ones are refused. Exit codes: 1, it did not start
(the port or the embedded Redis taken, bad settings: the log says which); 3, the engine died.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from contextlib import ExitStack

import uvicorn
from pydantic import AliasChoices, ValidationError
from uvicorn.config import STARTUP_FAILURE

from hatllm.data import DataError

from .api_keys import key_ring
from .loader import load
from .redis_server import EmbeddedRedis
from .request_ids import log_handler
from .settings import Settings
from .store import STORE_ERRORS

NOT_STARTED_EXIT_CODE = 1
ENGINE_FAILED_EXIT_CODE = 3


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts: a port in use fails at once, not after the
    engine has started, and before an embedded Redis or the dataset loader has touched anything."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class Server(uvicorn.Server):
    stop_signal: int | None = None

    def handle_exit(self, sig: int, frame) -> None:
        self.stop_signal = sig  # remembered: a Ctrl-C while starting also stops the engine core, failing the start
        super().handle_exit(sig, frame)
        services = getattr(self.config.app.state, "services", None)
        if not self.started and services is not None:
            services.interrupt()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # uvicorn says where it listens only when it binds the socket itself; a stop while starting serves nothing
        if self.started and sockets and not self.should_exit:
            host, port = sockets[0].getsockname()[:2]  # the port the system chose, for HATREC_PORT=0
            logging.info("serving on http://%s:%d (Ctrl-C stops it)", f"[{host}]" if ":" in host else host, port)


def serve(settings: Settings) -> int:
    """Run everything until stopped; the exit code: 0; 1 when it did not start; 3 when the engine died."""
    try:  # the service checks the keys again; here it is before anything starts or binds
        key_ring(settings.api_keys, settings.api_keys_file, settings.api_key, settings.host)
    except OSError as exc:
        logging.error("cannot read HATREC_API_KEYS_FILE: %s", exc)
        return NOT_STARTED_EXIT_CODE
    except ValidationError as exc:  # the keys file's (the variables were validated with the settings)
        log_refused(exc, "HATREC_API_KEYS_FILE")
        return NOT_STARTED_EXIT_CODE
    except ValueError as exc:
        logging.error("%s", exc)
        return NOT_STARTED_EXIT_CODE
    try:
        listener = listening_socket(settings.host, settings.port)
    except OSError as exc:
        logging.error("cannot listen on %s:%d: %s (%s; %s)", settings.host, settings.port, exc.strerror,
                      setting_names("host"), setting_names("port"))
        return NOT_STARTED_EXIT_CODE
    with listener, ExitStack() as stack:
        if settings.redis_url is None:
            try:
                embedded = stack.enter_context(EmbeddedRedis(settings.embedded_redis_port, settings.embedded_redis_dir,
                                                            restart=True))
            except RuntimeError as exc:
                logging.error("%s", exc)
                return NOT_STARTED_EXIT_CODE
            settings = settings.model_copy(update={"redis_url": embedded.url})
            logging.info("started redis-server at %s (data in %s)", embedded.url, settings.embedded_redis_dir)
        if settings.dataset:
            try:
                loaded = asyncio.run(load(settings.dataset, settings, only_if_empty=True))
            except DataError as exc:
                logging.error("cannot load HATREC_DATASET: %s", exc)
                return NOT_STARTED_EXIT_CODE
            except STORE_ERRORS as exc:
                logging.error("cannot load %s into Redis at %s: %s", settings.dataset, settings.redis_url, exc)
                return NOT_STARTED_EXIT_CODE
            if loaded:
                logging.info("loaded %s into Redis: %s", settings.dataset, loaded)
        # Imported only now: the app brings vLLM and torch (about 10 s of imports), and a start that cannot
        # happen (bad settings, a port or folder taken, no dataset) says so before that.
        from .api import create_app

        app = create_app(settings)
        server = Server(uvicorn.Config(app, host=settings.host, port=settings.port, timeout_graceful_shutdown=30))
        app.state.request_exit = lambda: setattr(server, "should_exit", True)
        try:
            server.run(sockets=[listener])
        except SystemExit as exc:  # uvicorn's code for a failed start is 3, which here means a dead engine
            if exc.code != STARTUP_FAILURE:
                raise
            if server.stop_signal is not None:
                logging.info("stopped while starting")
                return 128 + server.stop_signal
            logging.error("the service did not start (the error is above)")
            return NOT_STARTED_EXIT_CODE
    services = getattr(app.state, "services", None)
    return ENGINE_FAILED_EXIT_CODE if services is not None and services.engine_failed else 0


def command_line_settings(args: list[str]) -> Settings:
    """Settings from the command line (`--port 8001`, `--no-fusion`), over HATREC_* variables and `.env`,
    over the defaults: pydantic-settings' own parser, so `--help` lists every setting with its description
    and an unknown option is a usage error (exit 2)."""
    return Settings(_cli_parse_args=args, _cli_prog_name="python -m service", _cli_kebab_case=True,
                    _cli_implicit_flags=True)


def setting_names(field: str) -> str:
    """How a user sets a field: its option and its environment variable."""
    alias = Settings.model_fields[field].validation_alias
    variable = alias.choices[0] if isinstance(alias, AliasChoices) else f"HATREC_{field.upper()}"
    return f"--{field.replace('_', '-')} or {variable}"


def log_refused(error: ValidationError, source: str | None = None) -> None:
    """One line per refused value, naming where it came from: `source` (a file of values), else the setting as
    the user wrote it. Values are not echoed (pydantic's own message does): some are secrets."""
    for problem in error.errors():
        loc = problem["loc"]
        if source is not None:
            name, inside = source, loc
        elif loc and loc[0] in Settings.model_fields:
            name, inside = f"setting {setting_names(loc[0])}", loc[1:]
        else:
            name, inside = "settings", loc[1:]
        where = f" at {'.'.join(map(str, inside))}" if inside else ""
        logging.error("bad %s%s: %s", name, where, problem["msg"])


def main() -> None:
    logging.basicConfig(level=logging.INFO, handlers=[log_handler()])
    try:
        settings = command_line_settings(sys.argv[1:])
    except ValidationError as exc:
        log_refused(exc)
        sys.exit(NOT_STARTED_EXIT_CODE)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: turn it into an
    # exception so that the embedded Redis is stopped too, and exit with the conventional 128 + signal.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        code = serve(settings)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    sys.exit(code)


if __name__ == "__main__":
    main()
