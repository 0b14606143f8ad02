"""Helpers the tests import (`from tests.helpers import ...`): the tiny catalog, the tiny model, `require`."""

import os

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from hatllm.core.item_codes import ItemCodes
from hatllm.core.layers import parse_schedule
from hatllm.core.prompt import DEFAULT_INSTRUCTION
from hatllm.reference.modeling import HAT_ATTENTION, make_config

# CI sets this: a dependency a test needs (vLLM) missing is then a failure, not a silent skip.
REQUIRE_ALL = os.environ.get("HATREC_TESTS_REQUIRE_ALL") == "1"


def require(module: str):
    """Import `module` for a test module; skip it when missing, unless HATREC_TESTS_REQUIRE_ALL=1."""
    if REQUIRE_ALL:
        return __import__(module)
    return pytest.importorskip(module)


TITLES = {
    "1": "Toy Story (1995)",
    "2": "Jumanji (1995)",
    "3": "Heat (1995)",
    "4": "Emma (1996)",
    "5": "Emma (1996)",  # duplicate title, another item
    "6": "Toy Story 2 (1999)",
    "7": "Casino (1995)",
    "8": "Sabrina (1995)",
}

CODE_TOKENS = ItemCodes.code_tokens(len(TITLES))


def tiny_model(tokenizer, builder, schedule: str, layers: int = 3, seed: int = 0, model_type: str = "llama") -> PreTrainedModel:
    """A randomly initialised HatLLM model; `model_type` another base architecture with the same sizes and
    HatLLM fields, as a fine-tuned Qwen or Mistral checkpoint would carry them."""
    config = make_config(
        len(tokenizer), "tiny", parse_schedule(schedule, layers), builder.item_open_id, builder.item_close_id,
        DEFAULT_INSTRUCTION, tokenizer.bos_token_id, tokenizer.pad_token_id, layers,
    )
    if model_type != config.model_type:
        fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures", "transformers_version")}
        config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=HAT_ATTENTION).eval()


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    import random
    import socket

    while True:
        port = random.randint(20000, 40000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


class LocalRedisCluster:
    """A real 3-master Redis Cluster on 127.0.0.1 from the project's redis-server binary: the slots are
    assigned and the nodes introduced with redis-py. `stop`/`start` keep each node's data and config."""

    def __init__(self, data_dir, masters: int = 3):
        from pathlib import Path

        self.data_dir, self.ports = Path(data_dir), [cluster_port() for _ in range(masters)]
        self.processes = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout_s: float = 30.0) -> "LocalRedisCluster":
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()  # no node left running after a failed start
            raise

    def _start(self, timeout_s: float) -> "LocalRedisCluster":
        import subprocess
        import time

        import redis

        from service.redis_server import redis_server_binary

        for port in self.ports:
            folder = self.data_dir / str(port)
            folder.mkdir(parents=True, exist_ok=True)
            self.processes.append(subprocess.Popen(
                [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--appendonly", "yes",
                 "--appendfsync", "always", "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        nodes = [redis.Redis(port=port, decode_responses=True, socket_connect_timeout=0.2) for port in self.ports]
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            while True:
                try:
                    node.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "a cluster node did not start"
                    time.sleep(0.05)
        if not int(nodes[0].execute_command("CLUSTER INFO")["cluster_slots_assigned"]):  # a new cluster
            slots = 16384
            for i, node in enumerate(nodes):
                node.execute_command("CLUSTER ADDSLOTS", *range(i * slots // len(nodes), (i + 1) * slots // len(nodes)))
            for port in self.ports[1:]:
                nodes[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        while not all(node.execute_command("CLUSTER INFO")["cluster_state"] == "ok" for node in nodes):
            assert time.monotonic() < deadline, "the cluster did not become ready"
            time.sleep(0.1)
        for node in nodes:
            node.close()
        return self

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)
        self.processes = []
