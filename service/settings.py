"""Every setting of the service, from environment variables (prefix HATREC_) or a `.env` file.

The defaults run the whole thing on one machine: an embedded Redis, the shipped small model and the
shipped dataset. Each field's description is the documentation (see service/README.md).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from hatllm.core.search import MAX_BEAM_WIDTH

from .api_keys import ApiKey

IN_FLIGHT_PER_CORE = 3


class Settings(BaseSettings):
    """Each setting: an option, an environment variable HATREC_<SETTING> (REDIS_URL) or `.env`; options win."""

    model_config = SettingsConfigDict(env_prefix="HATREC_", env_file=".env", extra="ignore", protected_namespaces=())

    # Where things are
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "HATREC_REDIS_URL"),
        description="Redis to use; unset: the service starts its own redis-server (see embedded_redis_*)")
    redis_cluster: bool = Field(False, description="REDIS_URL is a node of a Redis Cluster (keys are hash-tagged "
                                                   "for it, service/keys.py)")
    redis_password_file: Path | None = Field(
        None, description="file holding the Redis password (a mounted secret; compose generates one)")
    embedded_redis_port: int = Field(6390, description="port of the embedded redis-server (127.0.0.1 only)")
    embedded_redis_dir: Path = Field(Path("var/redis"), description="data folder (AOF) of the embedded redis-server")
    redis_prefix: str = Field("hatrec", description="prefix of every Redis key")
    model_path: str = Field("models/ml-latest-small-hat", description="checkpoint served (HF format, HatLLM config)")
    dataset: str | None = Field("data/ml-latest-small",
                                description="dataset loaded into Redis at start when Redis holds no catalog")
    host: str = Field("127.0.0.1", description="address the HTTP server binds")
    port: int = Field(8000, description="HTTP port")

    # Recommendation
    max_history: int | None = Field(None, ge=1, description="most recent items put in the prompt "
                                                            "(default: the model's hat_max_history, else 20)")
    history_cap: int = Field(200, ge=1, description="items kept per user in Redis (older ones are trimmed)")
    max_k: int = Field(MAX_BEAM_WIDTH, ge=1, le=MAX_BEAM_WIDTH, description="largest k a request may ask for")
    beam_width: int | None = Field(None, ge=1, le=MAX_BEAM_WIDTH, description="beam width; at least the request's k (default: k)")
    fusion: bool = Field(True, description="fuse the checkpoint's SASRec prior into the search (its fusion.json), "
                                           "if it has one")

    # Protection
    max_in_flight: int | None = Field(
        None, ge=1, description=f"most recommendations under way at once; more get 429 (default: {IN_FLIGHT_PER_CORE} "
                                "per CPU core this process may use, the concurrency 2 cores sustain with the small "
                                "model, docs/operations.md)")
    admission_tolerance: float = Field(
        2.0, ge=0, description="the bound drops below max_in_flight while decodes take longer than this many times "
                               "the 90th percentile of decodes that ran alone (measured at start, then as it runs), "
                               "and rises again when it is reached: the admitted tail holds at 3x overload, "
                               "for some throughput. 0: max_in_flight is a fixed bound (the most "
                               "throughput under overload, a longer tail; service/admission.py, docs/operations.md)")
    admission_slack_ms: float = Field(
        50.0, ge=0, description="queueing shorter than this (a decode's time beyond the 90th percentile of lone "
                                 "decodes) never lowers the bound, however quick lone decodes are: without it the "
                                 "bound refused 1-5% at normal load where lone decodes take 30 ms")
    request_timeout_s: float = Field(10.0, gt=0, description="a recommendation taking longer gets 503")
    redis_timeout_s: float = Field(1.0, gt=0, description="socket timeout of every Redis call")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 429 and 503")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 422")
    max_events_per_call: int = Field(1000, ge=1, description="events accepted in one POST /events")
    api_keys: list[ApiKey] = Field(
        default_factory=list, description='JSON list of {"name", "key", "scopes"} (scopes: read, trusted, write, admin; '
                                          'service/api_keys.py); with no key at all every route is open, allowed only '
                                          'on a loopback host')
    api_keys_file: Path | None = Field(None, description="a JSON file of such keys (e.g. a mounted secret); "
                                                         "python -m service.api_keys generates one")
    api_key: SecretStr | None = Field(None, description="one key with every scope (header X-API-Key)")
    max_title_tokens: int = Field(64, ge=1, description="longest catalog title accepted by PUT /admin/catalog/items, in "
                                                        "tokens: one huge title must not crowd every prompt out of "
                                                        "max_model_len")
    exit_on_engine_failure_s: float | None = Field(
        5.0, description="when the engine dies: unready at once, then exit (code 3) after this many seconds so the "
                         "supervisor restarts the service; unset: stay up, unready, answering 503")
    catalog_poll_s: float = Field(2.0, gt=0, description="how often the catalog version in Redis is checked")

    # Engine (vLLM)
    dtype: str = Field("float32", description="engine dtype (float32, bfloat16, auto)")
    kv_cache_gib: int = Field(2, ge=1, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)")
    kv_block_size: int = Field(16, ge=1,
                               description="KV-cache block in tokens (16: the smallest vLLM's CPU kernels take)")
    kv_tails: int | None = Field(None, ge=0, description="prompts' partial last KV blocks kept so that beam requests "
                                 "extending them skip recomputing it (model_patch.kv_tail); 0: off; unset: 1024, or off "
                                 "for a model with one-token item codes, whose searches are one request")
    max_model_len: int = Field(2048, description="longest prompt + title, in tokens")
    max_num_seqs: int = Field(512, description="engine batch size (beams of all requests share steps)")
    max_num_batched_tokens: int = Field(8192, description="tokens per engine step")
    engine_cpu_bind: str = Field(
        "all", description="CPU engine threads: 'all' = every core this process may use, 'auto' = vLLM's default "
                           "(leaves one core free), or a VLLM_CPU_OMP_THREADS_BIND list such as '0-7'")
    engine_worker_in_process: bool = Field(
        True, description="run the model worker inside vLLM's engine-core process ('uni' executor, as vLLM does for "
                          "one GPU) rather than in a process of its own; false for tensor parallelism")
    enforce_eager: bool = Field(True, description="skip graph capture / torch.compile (fast start)")
    engine_log_stats: bool = Field(True, description="expose vLLM's own metrics on /metrics")

    def redis_connection_url(self) -> str | None:
        """REDIS_URL, with the password from `redis_password_file` if there is one (never logged)."""
        if self.redis_url is None or self.redis_password_file is None:
            return self.redis_url
        password = quote(self.redis_password_file.read_text().strip(), safe="")
        parts = urlsplit(self.redis_url)
        return urlunsplit(parts._replace(netloc=f":{password}@{parts.netloc.rpartition('@')[2]}"))
