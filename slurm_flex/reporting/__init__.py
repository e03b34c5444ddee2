"""``slurmflex report``: savings by user and account, flexibility delivered per settlement
period and revenue, as a table, JSON, CSV or an HTML page with plots."""
