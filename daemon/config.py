"""The daemon's configuration: one frozen dataclass per component, from a TOML file, then environment, then flags.

    [engine]     store, cache_budget, read_mode, read_threads, cache_policy, prefetch_depth
    [scheduler]  max_batch, queue_limit, context_limit, prefill_step, progress_interval_s, keep_alive_s,
                 idle_cache_budget, drain_timeout_s, speculate, draft_model
    [server]     endpoint, state_dir, send_hwm, heartbeat_s, slow_client_bytes, slow_client_s, http,
                 http_api_key_file, curve_server_key, curve_allowed_clients
    [log]        log_level, log_file, log_max_bytes, log_backups
    [governor]   governor, governor_profile, sensor_trace; and the governor's own thresholds and laws (file only:
                 every key of moed.governor.GovernorConfig but `profile`, validated there; docs/governor.md)

Key names are unique across sections, so a key may also be written at the top level of the file, and each has
one environment variable, MOED_<KEY> (e.g. MOED_MAX_BATCH=4, MOED_ENDPOINT=tcp://127.0.0.1:7878). Later layers
override earlier ones: defaults < file < environment < command-line flags. Everything is validated before the
daemon starts; an unknown key, a wrong type or a value out of range raises ConfigError naming the key and where it
came from. docs/daemon.md has the table of keys (generated from the `doc` metadata below). Budgets are checked
against the store by `check_with_store` (reads the manifest, no MLX), which `moed serve` runs before it binds.

`engine_config(store, **keys)` builds a validated EngineConfig from defaults and keys alone (no file, no
environment), for `moed generate`, benchmarks and tests.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

ENV_PREFIX = "MOED_"
ENV_CONFIG = "MOED_CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_FILE_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse anything absurd before parsing it
MAX_NESTING = 8  # brackets and braces deep: no key takes a nested value; refused before parsing (tomllib recurses)
SPECIAL_ROOTS = ("/proc", "/sys", "/dev")  # kernel interfaces and devices, never a log or state location
DAY = 86400.0


class ConfigError(ValueError):
    """A configuration problem; the message names the key and its source."""


def _key(default: Any, doc: str, check: Callable[[Any], str | None] | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "check": check})


def _at_least(lo: float) -> _Check:  # kept for keys with no natural ceiling (none at present)
    return _Check(f">= {lo}", lambda v: v >= lo)


class _Check:
    """A value check with the range it allows, for the docs (`describe()`'s `range`)."""

    def __init__(self, text: str, test: Callable[[Any], bool]):
        self.text, self._test = text, test

    def __call__(self, v: Any) -> str | None:
        return None if self._test(v) else f"must be {self.text}"


def _between(lo: float, hi: float, *, open_lo: bool = False) -> _Check:
    left = f"> {lo}" if open_lo else f">= {lo}"
    return _Check(f"{left} and <= {hi:g}" if isinstance(hi, float) else f"{left} and <= {hi}",
                  lambda v: (v > lo if open_lo else v >= lo) and v <= hi)


def _one_of(*choices: str) -> _Check:
    return _Check(f"one of {', '.join(choices)}", lambda v: v in choices)


class _PlainPath(_Check):
    """A path that is empty, or not a special file: no FIFO, socket or device, nothing under /proc, /sys or /dev,
    and for kind "dir" a folder (or nothing yet), for "file" a regular file (or nothing yet)."""

    def __init__(self, kind: str):
        super().__init__(f"empty or a {'folder' if kind == 'dir' else 'regular file'} outside "
                         f"{', '.join(SPECIAL_ROOTS)}", lambda v: True)
        self._kind = kind

    def __call__(self, v: Any) -> str | None:
        problem = _path_problem(v, self._kind)
        return None if problem is None else f"must be {self.text}: {problem}"


def _path_problem(value: str, kind: str) -> str | None:
    if not value:
        return None
    real = os.path.realpath(os.path.expanduser(value))
    if any(real == root or real.startswith(root + "/") for root in SPECIAL_ROOTS):
        return f"{real} is a kernel interface or device"
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return None  # created later; its parent is checked when it is
    if kind == "dir" and not stat.S_ISDIR(mode):
        return f"{real} is not a folder"
    if kind == "file" and not stat.S_ISREG(mode):
        return f"{real} is not a regular file"
    return None


def _budget(v: str) -> str | None:  # range text: _budget.text below
    from .budget import BudgetError, parse

    try:
        parse(v)
    except BudgetError as e:
        return str(e)
    return None


_budget.text = "a percent, a fraction or a size"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class EngineConfig:
    store: str = _key("", "the expert store to serve (a folder made by `moed convert`); required")
    cache_budget: str = _key("100%", "expert cache budget: a percent of the store's expert bytes (`25%`), a fraction "
                             "(`0.25`) or a size (`2GB`, `512MiB`)", _budget)
    read_mode: str = _key("direct", "`direct` (O_DIRECT / F_NOCACHE) or `buffered` (page cache)",
                          _one_of("direct", "buffered"))
    read_threads: int = _key(4, "expert reader threads", _between(1, 256))
    cache_policy: str = _key("lfu", "cache eviction policy: `lfu` or `lru`", _one_of("lfu", "lru"))
    prefetch_depth: int = _key(1, "MoE layers ahead to predict and prefetch (0 = off)",
                                _between(0, 64))


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = _key(8, "batch ceiling: requests decoded together (the governor may lower it at run time)",
                          _between(1, 4096))
    queue_limit: int = _key(64, "requests waiting for a batch slot beyond which new ones get `busy`",
                             _between(0, 1 << 16))
    context_limit: int = _key(0, "prompt plus max_tokens limit in tokens; 0 = the model's max_position_embeddings",
                              _between(0, 1 << 24))
    prefill_step: int = _key(2048, "prompt tokens per prefill chunk (a decode step runs between chunks)",
                             _between(1, 1 << 16))
    progress_interval_s: float = _key(1.0, "seconds between progress messages to queued and prefilling requests "
                                      "(they double as liveness probes; the protocol promises at most 2)",
                                      _between(0, 2.0, open_lo=True))
    keep_alive_s: float = _key(300.0, "idle seconds before the cache shrinks to idle_cache_budget; < 0 = never",
                               _Check("<= 2592000 (30 days); < 0 = never", lambda v: v <= 30 * DAY))
    idle_cache_budget: str = _key("10%", "the cache budget while idle (same forms as cache_budget)", _budget)
    drain_timeout_s: float = _key(10.0, "on shutdown, seconds running requests may continue before they end "
                                  "with done reason `shutdown`", _between(0, 3600.0))
    speculate: str = _key("lookup", "speculative decoding of a request that decodes alone: `lookup` (drafts from "
                          "n-gram matches in its context), `draft` (drafts from draft_model) or `off`; the tokens are "
                          "the same either way, a request's `speculate` param may turn it off (docs/daemon.md)",
                          _one_of("off", "lookup", "draft"))
    draft_model: str = _key("", "the draft model for speculate = `draft`: an mlx-lm checkpoint folder sharing the "
                            "served model's tokenizer", _PlainPath("dir"))


@dataclass(frozen=True)
class ServerConfig:
    endpoint: str = _key("", "where to listen: `ipc://PATH` or `tcp://127.0.0.1:PORT` (loopback only); empty = "
                         "ipc://$XDG_RUNTIME_DIR/moed/moed.sock, else ipc:///tmp/moed-<uid>/moed.sock")
    state_dir: str = _key("", "where cache statistics are saved (periodically and at shutdown); empty = the "
                          "platform's state folder", _PlainPath("dir"))
    save_interval_s: float = _key(300.0, "seconds between saves of the expert usage statistics while serving; "
                                  "0 = only at shutdown", _between(0, DAY))
    send_hwm: int = _key(1000, "messages queued per client before its stream counts as slow (ZeroMQ SNDHWM)",
                         _between(1, 1_000_000))
    heartbeat_s: float = _key(2.0, "ZMTP heartbeat interval; a peer silent for 3 intervals is dropped",
                              _between(0.1, 3600.0))
    slow_client_bytes: int = _key(1 << 20, "undelivered bytes merged for one request before it fails with "
                                  "`slow_client`", _between(1, 1 << 32))
    slow_client_s: float = _key(30.0, "seconds a request's stream may stay blocked before it fails with "
                                "`slow_client`", _between(0.01, 3600.0))
    http: str = _key("", "also serve the OpenAI / Ollama HTTP gateway at `[HOST:]PORT` (e.g. `11435`, "
                     "`127.0.0.1:8080`, `[::1]:8080`); empty = no HTTP. Off loopback it needs http_api_key_file",
                     lambda v: _check_http(v))
    http_api_key_file: str = _key("", "a file holding the API key HTTP clients must send (`Authorization: Bearer "
                                  "KEY`); required when `http` is not a loopback address")
    curve_server_key: str = _key("", "the daemon's CURVE keypair file (`moed keys server`), required by a tcp "
                                 "endpoint; empty = server.key in the keys folder (docs/daemon.md, Access)",
                                 _PlainPath("file"))
    curve_allowed_clients: str = _key("", "the CURVE clients a tcp endpoint accepts, with their roles (`moed keys "
                                      "client NAME [--admin]`); empty = allowed_clients in the keys folder",
                                      _PlainPath("file"))


@dataclass(frozen=True)
class LogConfig:
    log_level: str = _key("info", "`debug`, `info`, `warning` or `error`", _one_of(*LOG_LEVELS))
    log_file: str = _key("", "also log to this file, rotated by size; empty = stderr only",
                        _PlainPath("file"))
    log_max_bytes: int = _key(10 << 20, "rotate the log file at this size",
                              _between(1024, 1 << 40))
    log_backups: int = _key(3, "rotated log files kept", _between(0, 1000))


@dataclass(frozen=True)
class GovernorSettings:
    governor: str = _key("on", "the governor (battery, heat, memory pressure -> batch ceiling, prefetch depth, cache "
                         "budget, pace; docs/governor.md): `on` or `off` (then only idle keep-alive changes the "
                         "cache)", _one_of("on", "off"))
    governor_profile: str = _key("auto", "the governor's profile: `auto` (from the readings), `performance`, "
                                 "`balanced` or `saver`", _one_of("auto", "performance", "balanced", "saver"))
    sensor_trace: str = _key("", "replay sensor readings from this JSONL file instead of reading the machine's "
                             "sensors (docs/governor.md, trace format); empty = the machine's sensors")


@dataclass(frozen=True)
class DaemonConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    governor: GovernorSettings = field(default_factory=GovernorSettings)
    # the [governor] section's other keys (GovernorConfig's thresholds and laws), as the file gave them
    governor_policy: Mapping[str, Any] = field(default_factory=dict)

    def governor_config(self) -> Any:
        """The governor's validated GovernorConfig: the file's policy keys and the profile key."""
        from moed.governor import GovernorConfig

        return GovernorConfig.from_dict({**self.governor_policy, "profile": self.governor.governor_profile})

    def replace(self, **values: Any) -> DaemonConfig:
        """A copy with keys changed by name (e.g. `replace(max_batch=2)`), validated."""
        return _build(self, {k: (v, "replace()") for k, v in values.items()})


def engine_config(store: str | os.PathLike[str], **keys: Any) -> EngineConfig:
    """A validated EngineConfig: the defaults, `store`, and [engine] keys by name (e.g. `cache_budget="25%"`).

    Raises:
        ConfigError: an unknown or non-engine key, a wrong type, a bad value.
    """
    wrong = [k for k in keys if KEYS.get(k, ("",))[0] != "engine"]
    if wrong:
        raise ConfigError(f"not [engine] keys: {', '.join(wrong)}; [engine] has "
                          f"{', '.join(f.name for f in dataclasses.fields(EngineConfig))}")
    return DaemonConfig().replace(store=str(store), **keys).engine


def check_with_store(config: DaemonConfig) -> list[str]:
    """Check what needs the store: that it is there and readable, and both cache budgets against its experts.
    Reads the manifest only (no MLX). Returns warnings (a budget clamped to 100 % or raised to one expert).

    Raises:
        ConfigError: no store, an unreadable store, or a budget that cannot be used (e.g. "did you mean 25%?").
    """
    from .budget import BudgetError, resolve
    from .store.format import StoreError, read_manifest

    store = config.engine.store
    if not store:
        raise ConfigError("no store to serve: give one (`moed serve STORE`, --store, MOED_STORE, or `store` in the "
                          "config file)")
    try:
        manifest = read_manifest(store)
    except StoreError as e:
        raise ConfigError(f"store {store}: {e}") from None
    warnings = []
    for key, spec in (("cache_budget", config.engine.cache_budget),
                      ("idle_cache_budget", config.scheduler.idle_cache_budget)):
        try:
            b = resolve(spec, manifest.total_expert_bytes, manifest.expert_bytes)
        except BudgetError as e:
            raise ConfigError(f"`{KEYS[key][0]}.{key}`: {e}") from None
        if b.warning:
            warnings.append(f"`{KEYS[key][0]}.{key}`: {b.warning}")
    _check_trace(config.governor.sensor_trace)
    draft = config.scheduler.draft_model
    if config.scheduler.speculate == "draft" and not (Path(draft).expanduser() / "config.json").is_file():
        raise ConfigError(f"`scheduler.draft_model` {draft}: no config.json there (give an mlx-lm checkpoint folder "
                          f"whose tokenizer is the served model's)")
    return warnings


def _check_trace(path: str) -> None:
    if not path:
        return
    from moed.governor.sensors.trace import load_trace

    try:
        load_trace(path)
    except OSError as e:
        raise ConfigError(f"`governor.sensor_trace` {path}: {e.strerror or e} (give a JSONL trace file; "
                          f"docs/governor.md, trace format)") from None
    except ValueError as e:
        raise ConfigError(f"`governor.sensor_trace` {path}: {e}") from None


SECTIONS: dict[str, type] = {"engine": EngineConfig, "scheduler": SchedulerConfig, "server": ServerConfig,
                             "log": LogConfig, "governor": GovernorSettings}
# key -> (section, dataclass field); key names are unique across sections (asserted below)
KEYS: dict[str, tuple[str, dataclasses.Field]] = {
    f.name: (sec, f) for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
assert len(KEYS) == sum(len(dataclasses.fields(c)) for c in SECTIONS.values()), "config keys must be unique"


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None, default_path: Path | None = None) -> DaemonConfig:
    """Build the config: defaults, then the TOML file, then MOED_<KEY> variables, then `flags` (None = not given).

    `path` is the file to read (an error if missing); without it $MOED_CONFIG, else `default_path` (read only if
    it exists; defaults to paths.config_path()).

    Raises:
        ConfigError: unreadable or invalid TOML, an unknown section or key, a wrong type, a bad value.
    """
    env = os.environ if env is None else env
    values: dict[str, tuple[Any, str]] = {}
    policy: dict[str, Any] = {}
    file = _config_file(path, env, default_path)
    if file is not None:
        values.update(_read_file(file, policy))
    values.update(_read_env(env))
    values.update({k: (v, "flag --" + k.replace("_", "-")) for k, v in (flags or {}).items() if v is not None})
    config = dataclasses.replace(_build(DaemonConfig(), values), governor_policy=policy)
    _check_governor(config, file)
    return config


def _check_governor(config: DaemonConfig, file: Path | None) -> None:
    try:
        config.governor_config()
    except ValueError as e:  # GovernorConfigError names `governor.<key>`
        raise ConfigError(f"{file or 'config'}: {e}") from None


def _config_file(path: str | os.PathLike[str] | None, env: Mapping[str, str],
                 default_path: Path | None) -> Path | None:
    explicit = path if path is not None else env.get(ENV_CONFIG)
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    if default_path is None:
        from .paths import config_path

        default_path = config_path()
    return default_path if default_path.is_file() else None


def _read_file(path: Path, policy: dict[str, Any] | None = None) -> dict[str, tuple[Any, str]]:
    """The file's keys with their source; [governor] keys that are the governor's own go to `policy`."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES} bytes; not a moed config file")
        text = path.read_text()
        _check_nesting(text, path)
        doc = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    except RecursionError:  # the pre-scan missed a form of nesting: still a one-line error, not a traceback
        raise ConfigError(f"{path}: nested too deeply to be a moed config file") from None
    out: dict[str, tuple[Any, str]] = {}
    for name, value in doc.items():
        if isinstance(value, dict):
            if name not in SECTIONS:
                raise ConfigError(f"{path}: unknown section [{name}]; sections are {', '.join(SECTIONS)}")
            for key, v in value.items():
                if name == "governor" and key not in KEYS and policy is not None:
                    if key == "profile":
                        raise ConfigError(f"{path}: `governor.profile`: write `governor_profile` (one name for the "
                                          f"file, MOED_GOVERNOR_PROFILE and --governor-profile)")
                    policy[key] = v
                    continue
                if key not in KEYS or KEYS[key][0] != name:
                    raise ConfigError(f"{path}: unknown key `{name}.{key}`; [{name}] has "
                                      f"{', '.join(f.name for f in dataclasses.fields(SECTIONS[name]))}")
                out[key] = (v, f"{path} [{name}]")
        elif name in KEYS:
            out[name] = (value, str(path))
        else:
            raise ConfigError(f"{path}: unknown key `{name}`; see `moed serve --help` or docs/daemon.md")
    return out


def _check_nesting(text: str, path: Path) -> None:
    """Refuse arrays and inline tables nested deeper than MAX_NESTING before tomllib recurses into them. Brackets
    inside strings and comments may count too: no moed value needs more than one level, so that is harmless."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "\n" and depth <= 2:  # table headers ([x], [[x]]) end with their line
            depth = 0
    if deepest > MAX_NESTING:
        raise ConfigError(f"{path}: values nested more than {MAX_NESTING} deep; moed's config keys take "
                          f"plain values")


def _read_env(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    for key, (_, f) in KEYS.items():
        name = ENV_PREFIX + key.upper()
        if name in env:
            out[key] = (_from_text(env[name], f, name), f"${name}")
    return out


def _from_text(text: str, f: dataclasses.Field, source: str) -> Any:
    kind = _kind(f)
    try:
        return int(text) if kind is int else float(text) if kind is float else text
    except ValueError:
        raise ConfigError(f"{source}={text!r}: `{f.name}` must be {_type_name(kind)}") from None


def key_type(key: str) -> type:
    """int, float or str: the type of a config key's value."""
    return _kind(KEYS[key][1])


def _kind(f: dataclasses.Field) -> type:
    return {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string"}[kind]


def _build(base: DaemonConfig, values: Mapping[str, tuple[Any, str]]) -> DaemonConfig:
    changes: dict[str, dict[str, Any]] = {sec: {} for sec in SECTIONS}
    for key, (value, source) in values.items():
        if key not in KEYS:
            raise ConfigError(f"{source}: unknown key `{key}`")
        sec, f = KEYS[key]
        changes[sec][key] = _checked(value, f, f"`{sec}.{key}` (from {source})")
    config = DaemonConfig(**{sec: dataclasses.replace(getattr(base, sec), **ch) for sec, ch in changes.items()},
                          governor_policy=base.governor_policy)
    _check_endpoint(config.server.endpoint)
    _check_http_key(config.server)
    _check_draft(config.scheduler)
    return config


def _check_draft(sc: SchedulerConfig) -> None:
    """speculate = draft needs a draft model, and a draft model is used by nothing else."""
    if sc.speculate == "draft" and not sc.draft_model:
        raise ConfigError("`scheduler.speculate` is `draft` but no `draft_model` is set: give an mlx-lm checkpoint "
                          "folder sharing the served model's tokenizer (--draft-model PATH), or speculate = lookup")
    if sc.draft_model and sc.speculate != "draft":
        raise ConfigError(f"`scheduler.draft_model` is set but `speculate` is `{sc.speculate}`: the draft model is "
                          f"used only with speculate = draft")


def _check_http(value: str) -> str | None:
    """`[HOST:]PORT` as the gateway parses it (empty = off)."""
    if not value:
        return None
    from moed.clients.gateway.config import GatewayConfigError, parse_bind

    try:
        parse_bind(value)
    except GatewayConfigError as e:
        return str(e).replace("--http ", "")
    return None


def _check_http_key(sc: ServerConfig) -> None:
    """HTTP off loopback needs an API key (the key file itself is read when the gateway starts)."""
    if not sc.http:
        return
    from moed.clients.gateway.config import is_loopback, parse_bind

    host, _ = parse_bind(sc.http)
    if not is_loopback(host) and not sc.http_api_key_file:
        raise ConfigError(f"`server.http` {sc.http!r}: refusing to serve HTTP on {host}, which is not a loopback "
                          f"address, without an API key: set `http_api_key_file` (--http-api-key-file FILE) or "
                          f"bind 127.0.0.1")


def _checked(value: Any, f: dataclasses.Field, where: str) -> Any:
    kind = _kind(f)
    ok = (isinstance(value, kind) and not isinstance(value, bool)) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(kind)}, got {type(value).__name__} {value!r}")
    value = kind(value)
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    check = f.metadata.get("check")
    problem = check(value) if check else None
    if problem:
        raise ConfigError(f"{where} {problem}, got {value!r}")
    return value


def _check_endpoint(endpoint: str) -> None:
    """ipc:// with a short enough path, or tcp:// on a loopback address."""
    if not endpoint:
        return
    where = f"`server.endpoint` {endpoint!r}"
    if endpoint.startswith("ipc://"):
        from moed.clients.endpoints import check_ipc_endpoint

        if not endpoint[len("ipc://"):]:
            raise ConfigError(f"{where} needs a socket path")
        try:
            check_ipc_endpoint(endpoint)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        return
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        host = host.strip("[]")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where} needs a port in 1..65535 (tcp://127.0.0.1:PORT)")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(f"{where}: TCP is served on loopback only (127.0.0.1, ::1 or localhost), "
                              f"never on {host or 'all interfaces'}")
        return
    raise ConfigError(f"{where} must start with ipc:// or tcp://")


def describe() -> list[dict[str, str]]:
    """One row per key (section, key, type, default, env, meaning), for docs and `moed serve --help-config`."""
    rows = []
    for key, (sec, f) in KEYS.items():
        default = f.default
        check = f.metadata.get("check")
        rows.append({"section": sec, "key": key, "type": _kind(f).__name__, "default": repr(default),
                     "env": ENV_PREFIX + key.upper(), "meaning": f.metadata["doc"],
                     "range": getattr(check, "text", "any")})
    return rows


def as_toml(config: DaemonConfig) -> str:
    """The effective config as TOML (what `moed serve --check` prints)."""
    lines = []
    for sec in SECTIONS:
        lines.append(f"[{sec}]")
        for f in dataclasses.fields(SECTIONS[sec]):
            v = getattr(getattr(config, sec), f.name)
            lines.append(f"{f.name} = {_toml_value(v)}")
        if sec == "governor":
            lines += [f"{k} = {_toml_value(v)}" for k, v in config.governor_policy.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)
