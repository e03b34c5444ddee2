"""Install the submit hook into a Slurm config dir and render the site policy as Lua."""

from __future__ import annotations

import os
import tempfile
import time
from importlib import resources
from pathlib import Path

from slurm_flex.config import Config, SlackPolicy
from slurm_flex.errors import HookInstallError

MODULE = "slurmflex.lua"
STANDALONE = "job_submit.lua"
POLICY = "slurmflex_policy.lua"
CLI_FILTER = "cli_filter.lua"


def lua_source(name: str) -> str:
    return (resources.files("slurm_flex.job_submit") / name).read_text(encoding="utf-8")


def _lua_str(text: str) -> str:
    """A Lua 5.1 string literal: printable ASCII as is, everything else as decimal escapes."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '\\"':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def _lua(value: object) -> str:
    """A Lua literal for JSON-like Python values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _lua_str(value)
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua_str(str(k))}] = {_lua(v)}" for k, v in value.items()) + "}"
    raise HookInstallError(f"cannot render {value!r} as Lua")


def _slack_layers(layers: dict[str, SlackPolicy]) -> dict[str, dict[str, int]]:
    out = {}
    for name, layer in layers.items():
        entry = {}
        if layer.default_slack_hours is not None:
            entry["default_slack_seconds"] = round(layer.default_slack_hours * 3600)
        if layer.max_slack_hours is not None:
            entry["max_slack_seconds"] = round(layer.max_slack_hours * 3600)
        out[name] = entry
    return out


def policy_table(config: Config) -> dict[str, object]:
    """The site policy as the Lua module expects it (see M.defaults in slurmflex.lua)."""
    f = config.flex
    pw = config.power
    return {
        "grace_seconds": f.grace_seconds,
        "safety_margin_seconds": config.policy.safety_margin_seconds,
        "partitions": list(f.partitions),
        "exclude_partitions": list(f.exclude_partitions),
        "exempt_users": list(f.exempt_users),
        "exempt_accounts": list(f.exempt_accounts),
        "invalid_request": f.invalid_request,
        "default_slack_seconds": round(f.default_slack_hours * 3600),
        "max_slack_seconds": round(f.max_slack_hours * 3600),
        "partition_policy": _slack_layers(f.partition),
        "qos_policy": _slack_layers(f.qos),
        "power": {
            "node_idle_watts": pw.node_idle_watts,
            "node_max_watts": pw.node_max_watts,
            "cpus_per_node": pw.cpus_per_node,
            "gpu_watts": pw.gpu_watts,
            "memory_watts_per_gb": pw.memory_watts_per_gb,
            "node_types": {
                name: {k: v for k, v in t.model_dump().items() if v is not None} for name, t in pw.node_types.items()
            },
            "partition_node_types": dict(pw.partition_node_types),
            "gpu_model_watts": dict(pw.gpu_model_watts),
        },
    }


def render_policy(config: Config) -> str:
    return (
        "-- Rendered by `slurmflex hook install` from the slurm-flex config; do not edit.\nreturn "
        + _lua(policy_table(config))
        + "\n"
    )


def _write_atomic(path: Path, text: str) -> None:
    # slurmctld reloads job_submit.lua when it changes: never let it see a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mark_changed(path: Path, previous_mtime: float | None) -> None:
    """slurmctld reloads job_submit.lua only when its mtime, in whole seconds, is later than that
    of the copy it last loaded (seen on 22.05). A rewrite within the same second as the previous
    one would go unnoticed, so stamp the file at least one second past the old one."""
    stamp = max(int(time.time()), int(previous_mtime or 0) + 1)
    os.utime(path, (stamp, stamp))


def _ours_or_placeholder(path: Path) -> bool:
    text = path.read_text(encoding="utf-8", errors="replace")
    return "slurm-flex" in text or "slurmflex" in text or "devcluster" in text


def install_hook(
    config: Config, dest: Path, *, standalone: bool = True, cli_filter: bool = True, force: bool = False
) -> list[Path]:
    """Write the module and the policy into ``dest``; with ``standalone`` also job_submit.lua,
    and with ``cli_filter`` also cli_filter.lua (it passes a command-line --deadline on to the hook).

    A job_submit.lua or cli_filter.lua that is not slurm-flex's is never overwritten without
    ``force``: the error says how to call the module from it instead.
    """
    if not dest.is_dir():
        raise HookInstallError(f"{dest} is not a directory (give the directory holding slurm.conf)")
    scripts = [name for name, wanted in ((STANDALONE, standalone), (CLI_FILTER, cli_filter)) if wanted]
    for name in scripts:
        target = dest / name
        if target.exists() and not force and not _ours_or_placeholder(target):
            raise HookInstallError(
                f"{target} exists and is not slurm-flex's; call slurm-flex from it instead "
                "(see job_submit/README.md), or pass --force to replace it"
            )
    written = []
    previous = (dest / STANDALONE).stat().st_mtime if (dest / STANDALONE).exists() else None
    try:
        for name, text in ((MODULE, lua_source(MODULE)), (POLICY, render_policy(config))):
            _write_atomic(dest / name, text)
            written.append(dest / name)
        for name in scripts:
            _write_atomic(dest / name, lua_source(name))
            written.append(dest / name)
        # Stamped last: slurmctld reloads the hook when job_submit.lua changes.
        if standalone:
            mark_changed(dest / STANDALONE, previous)
    except OSError as exc:
        raise HookInstallError(f"cannot write into {dest}: {exc.strerror or exc}") from exc
    return written


def slurm_conf_warnings(dest: Path) -> list[str]:
    """What slurm.conf in ``dest`` still needs for the installed hook to run."""
    conf = dest / "slurm.conf"
    if not conf.is_file():
        return [f"no slurm.conf in {dest}: make sure it is the directory slurmctld reads"]
    settings = {}
    for line in conf.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if value and not key.lstrip().startswith("#"):
            settings[key.strip().lower()] = value.strip().lower()
    out = []
    if "lua" not in settings.get("jobsubmitplugins", ""):
        out.append(f"{conf}: add JobSubmitPlugins=lua (then `scontrol reconfigure`)")
    if (dest / CLI_FILTER).exists() and "cli_filter/lua" not in settings.get("clifilterplugins", ""):
        out.append(
            f"{conf}: add CliFilterPlugins=cli_filter/lua so a command-line --deadline reaches the hook "
            "(cli_filter runs in sbatch: slurm.conf and cli_filter.lua must be on every submit host)"
        )
    return out
