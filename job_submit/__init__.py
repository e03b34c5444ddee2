"""The Slurm submit hook (Lua, runs inside slurmctld) and its installer.

``slurmflex.lua`` is the module, ``job_submit.lua`` a ready standalone script that loads it, and
``slurmflex_policy.lua`` (rendered from the slurm-flex config by ``slurmflex hook install``)
carries the site policy so the hook never reads anything else at run time.
"""

from __future__ import annotations

from slurm_flex.job_submit.install import install_hook, lua_source, render_policy

__all__ = ["install_hook", "lua_source", "render_policy"]
