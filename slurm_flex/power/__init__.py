"""Power: what jobs are estimated to draw, and what nodes really draw.

One package, one room per concern:

* :mod:`~slurm_flex.power.model`: a job's estimated watts from what it requested (the Python
  twin of the submit hook's estimate);
* :mod:`~slurm_flex.power.readers`: readers of measured power (RAPL, IPMI DCMI, NVIDIA GPUs,
  Slurm's own energy accounting, a site meter) behind one interface, and ``collect`` to read
  them all without ever raising;
* :mod:`~slurm_flex.power.sample`: the sample every reader returns, and per-node watts from
  samples;
* :mod:`~slurm_flex.power.agent`: ``slurmflex node-agent``, which pushes a node's samples to the
  daemon; :mod:`~slurm_flex.power.wire`: the push format and the shared token (the daemon's
  endpoint that takes pushes is ``slurm_flex.daemon.ingest``);
* :mod:`~slurm_flex.power.store`: samples, half-hour means, per-job energy and calibration in
  ``<state_dir>/power.sqlite3``;
* :mod:`~slurm_flex.power.attribution`: node power to jobs, and measured against estimated
  power to calibration factors (pure);
* :mod:`~slurm_flex.power.ledger`: what the daemon's cycle does with all that, once per cycle;
* :mod:`~slurm_flex.power.report`: ``slurmflex power``.
"""
