"""Install the submit hook into a Slurm config dir and render the site policy as Lua."""

from __future__ import annotations

import json
import os
import tempfile
import time
from importlib import resources
from pathlib import Path

from slurm_flex.config import Config
from slurm_flex.errors import HookInstallError

MODULE = "slurmflex.lua"
STANDALONE = "job_submit.lua"
POLICY = "slurmflex_policy.lua"


def lua_source(name: str) -> str:
    return (resources.files("slurm_flex.job_submit") / name).read_text(encoding="utf-8")


def _lua(value: object) -> str:
    """A Lua literal for JSON-like Python values (strings via JSON escaping, which Lua reads)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_lua(v)}" for k, v in value.items()) + "}"
    raise HookInstallError(f"cannot render {value!r} as Lua")


def render_policy(config: Config) -> str:
    p = config.policy
    pw = config.power
    policy = {
        "grace_seconds": p.grace_seconds,
        "safety_margin_seconds": p.safety_margin_seconds,
        "partitions": list(p.partitions),
        "power": {
            "node_idle_watts": pw.node_idle_watts,
            "node_max_watts": pw.node_max_watts,
            "cpus_per_node": pw.cpus_per_node,
            "gpu_watts": pw.gpu_watts,
        },
    }
    return (
        "-- Rendered by `slurmflex hook install` from the slurm-flex config; do not edit.\nreturn "
        + _lua(policy)
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


def _bump_mtime(path: Path) -> None:
    """slurmctld reloads job_submit.lua only when its mtime (whole seconds) is newer than when it
    last loaded it, which may have been earlier in this same second: stamp it one second ahead."""
    stamp = int(time.time()) + 1
    os.utime(path, (stamp, stamp))


def install_hook(config: Config, dest: Path, *, standalone: bool = True, force: bool = False) -> list[Path]:
    """Write the module, the policy and (unless ``standalone`` is false) job_submit.lua into ``dest``.

    An existing job_submit.lua that is not ours is never overwritten without ``force``.
    """
    if not dest.is_dir():
        raise HookInstallError(f"{dest} is not a directory (give the directory holding slurm.conf)")
    written = []
    try:
        if standalone:
            target = dest / STANDALONE
            if target.exists() and not force:
                current = target.read_text(encoding="utf-8", errors="replace")
                if "slurmflex" not in current and "devcluster" not in current:
                    raise HookInstallError(
                        f"{target} exists and is not slurm-flex's; call the module from it instead "
                        "(see job_submit/README.md) or pass --force to replace it"
                    )
            _write_atomic(dest / MODULE, lua_source(MODULE))
            _write_atomic(dest / POLICY, render_policy(config))
            _write_atomic(target, lua_source(STANDALONE))
            _bump_mtime(target)
            written = [dest / MODULE, dest / POLICY, target]
        else:
            _write_atomic(dest / MODULE, lua_source(MODULE))
            _write_atomic(dest / POLICY, render_policy(config))
            written = [dest / MODULE, dest / POLICY]
    except OSError as exc:
        raise HookInstallError(f"cannot write into {dest}: {exc.strerror or exc}") from exc
    return written
